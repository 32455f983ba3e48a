"""merge: single-task teachers distilled into one multi-task student, compared with their sum.

Tiny models on modelzip.testing.multitask's two-task dataset: each teacher (one_head) is trained
on one task for an epoch, the student (two_head) learns both from them; seconds end to end.
"""
from __future__ import annotations

import json

import pytest
import torch

from modelzip import load_recipe, run_recipe
from modelzip.errors import InputError, PassError, RecipeError
from modelzip.merging import TeacherEnsemble
from modelzip.recipe import DataSpec
from modelzip.sources.data import load_data
from modelzip.testing.multitask import one_head, two_head
from modelzip.training import train_classifier

DATASET = "modelzip.testing.multitask:two_task_dataset"


def recipe(teachers: str = "{band: {source: modelzip.testing.multitask:one_head, args: {task: band}, "
                           "checkpoint: band.pt}, column: {source: modelzip.testing.multitask:one_head, "
                           "args: {task: column}, checkpoint: column.pt}}",
           extra: str = "", latency: str = "true", gates: str = "{}") -> str:
    return f"""
version: 1
name: merged
seed: 0
model:
  source: modelzip.testing.multitask:two_head
  input_shape: [1, 1, 16, 16]
  tasks: [band, column]
data:
  dataset: {DATASET}
  args: {{train: 256, eval: 128}}
  batch_size: 64
  val_samples: 32
passes:
  - merge:
      teachers: {teachers}
      epochs: 2
      optimizer: adamw
      lr: 0.01{extra}
gates: {gates}
evaluation: {{warmup: 1, repeats: 5, latency: {latency}}}
output: out
"""


def train_teacher(task: str, path, epochs: int = 2) -> torch.nn.Module:
    """one_head trained on ``task`` alone, saved as a state_dict at ``path``."""
    spec = DataSpec(dataset=DATASET, args={"train": 256, "eval": 128}, val_samples=0)
    bundle = load_data(spec, base_dir=path.parent, seed=0, tasks=(task,))
    torch.manual_seed(0)
    model = one_head(task)
    train_classifier(model, bundle, epochs=epochs, lr=0.05, batch_size=32)
    torch.save(model.state_dict(), path)
    return model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Checkpoints of the two teachers, each trained on its task (once for this file)."""
    folder = tmp_path_factory.mktemp("teachers")
    for task in ("band", "column"):
        train_teacher(task, folder / f"{task}.pt")
    return folder


@pytest.fixture
def teachers(trained, tmp_path):
    """The trained teachers' checkpoints beside the test's recipe."""
    for task in ("band", "column"):
        (tmp_path / f"{task}.pt").write_bytes((trained / f"{task}.pt").read_bytes())


@pytest.fixture
def untrained(tmp_path):
    """Seeded, untrained teachers, for the tests that fail before training."""
    torch.manual_seed(0)
    for task in ("band", "column"):
        torch.save(one_head(task).state_dict(), tmp_path / f"{task}.pt")


def test_the_student_learns_both_tasks_and_is_compared_with_the_teachers_sum(recipe_file, teachers):
    gates = "{max_drop_vs_teacher: 0.1, max_accuracy_drop: 0.0}"  # from an untrained student: a gain
    result = run_recipe(load_recipe(recipe_file(recipe(gates=gates))))
    report = json.loads((result.output_dir / "report.json").read_text())
    merge_step = report["steps"][0]
    merge = merge_step["details"]["merge"]
    assert merge["teachers_total"]["params"] == sum(merge["teachers"][t]["params"] for t in ("band", "column"))
    assert merge["student"]["params"] == sum(p.numel() for p in two_head().parameters())
    assert merge["ratio_to_teachers"]["params"] < 0.6  # a shared backbone: about half of two teachers
    for task, accuracy in merge["accuracy"].items():
        assert accuracy["teacher"] > 0.8, task  # the teachers learned their task...
        assert accuracy["student"] > 0.8, task  # ...and the student both of them
        assert accuracy["drop"] == pytest.approx(accuracy["teacher"] - accuracy["student"], abs=1e-5)
    assert [t["batch"] for t in merge["latency"]] == [1, 64]
    assert all(t["student_ms"] > 0 and t["teachers_ms"] > 0 for t in merge["latency"])
    markdown = (result.output_dir / "report.md").read_text()
    assert "Student vs teachers" in markdown and "Accuracy per task vs its teacher" in markdown
    assert "of their parameters" in merge_step["details"]["summary"]
    checked = {gate["name"]: gate for gate in report["gates"]}
    assert {"max_drop_vs_teacher[band]", "max_drop_vs_teacher[column]"} <= set(checked)
    final = report["final"]["task_accuracy"]
    assert checked["max_drop_vs_teacher[band]"]["got"] == pytest.approx(
        merge["accuracy"]["band"]["teacher"] - final["band"], abs=1e-4)
    assert all(gate["passed"] for gate in report["gates"]) and not report["warnings"]


def test_the_cache_key_covers_the_teacher_checkpoints(recipe_file, teachers, tmp_path):
    path = recipe_file(recipe(latency="false"))
    run_recipe(load_recipe(path))
    torch.manual_seed(3)
    torch.save(one_head("column").state_dict(), tmp_path / "column.pt")  # another teacher, same name
    result = run_recipe(load_recipe(path))
    report = json.loads((result.output_dir / "report.json").read_text())
    assert report["steps"][0]["cached"] is False
    assert report["steps"][0]["details"]["merge"]["latency"] is None  # evaluation.latency: false


def test_a_teacher_of_other_classes_is_named(recipe_file, tmp_path, untrained):
    torch.save(one_head("band").state_dict(), tmp_path / "wrong.pt")  # 4 classes, where column has 3
    body = recipe().replace("args: {task: column}, checkpoint: column.pt", "args: {task: band}, checkpoint: wrong.pt")
    with pytest.raises(PassError) as caught:
        run_recipe(load_recipe(recipe_file(body)))
    assert "task 'column'" in caught.value.what
    assert "(2, 4)" in caught.value.got and "(2, 3)" in caught.value.expected
    assert caught.value.exit_code == 3


def test_a_missing_teacher_checkpoint_names_the_teacher(recipe_file, untrained):
    body = recipe().replace("checkpoint: column.pt", "checkpoint: colum.pt")
    with pytest.raises(InputError) as caught:
        run_recipe(load_recipe(recipe_file(body)))
    assert caught.value.exit_code == 2
    assert "passes[0].merge.teachers.column" in caught.value.where


def test_validate_names_teachers_by_the_tasks_of_the_model(recipe_file):
    body = recipe(teachers="{band: {source: a:b, checkpoint: a.pt}, colum: {source: a:b, checkpoint: b.pt}}")
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe_file(body))
    problems = {p.path: p.message for p in caught.value.problems}
    assert "did you mean 'column'" in problems["passes[0].merge.teachers.colum"]
    assert "no entry for 'column'" in problems["passes[0].merge.teachers"]
    single = recipe().replace("  tasks: [band, column]\n", "")
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe_file(single))
    assert "need `model.tasks`" in caught.value.problems[0].message


def test_the_teacher_gate_needs_a_merge_pass(recipe_file):
    body = recipe(gates="{max_drop_vs_teacher: 0.01}")
    body = body[:body.index("passes:")] + "passes:\n  - export\n" + body[body.index("gates:"):]
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe_file(body))
    (problem,) = caught.value.problems
    assert problem.path == "gates.max_drop_vs_teacher" and "no pass here has teachers" in problem.message


def test_the_teacher_ensemble_stays_frozen_in_eval_mode():
    ensemble = TeacherEnsemble({"band": one_head("band"), "column": one_head("column")})
    ensemble.train()
    assert not any(m.training for m in ensemble.modules())
    assert not any(p.requires_grad for p in ensemble.parameters())
    out = ensemble(torch.zeros(2, 1, 16, 16))
    assert list(out) == ["band", "column"] and out["column"].shape == (2, 3)
