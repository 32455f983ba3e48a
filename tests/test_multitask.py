"""Multi-task models: named outputs and targets through validation, preflight, every pass and the report.

The model is modelzip.testing.multitask's two-head CNN (dict or tuple outputs) on its two-task
synthetic dataset ({task: int} targets), a few seconds end to end.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from modelzip import load_recipe, run_recipe
from modelzip.cli import app
from modelzip.errors import InputError, RecipeError
from modelzip.evaluation.accuracy import onnx_task_accuracies, torch_task_accuracies
from modelzip.preflight import preflight
from modelzip.sources.data import load_data
from modelzip.tasks import TargetMismatch, TaskMismatch, by_name, named_targets, weighted_loss
from modelzip.testing.multitask import two_head
from tests.conftest import FASHION, REPO

needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST absent: apt-get install "
                                                                "dataset-fashion-mnist")


def recipe(passes: str = "  - export", *, tasks: str = "[band, column]", model_args: str = "{}",
           data_args: str = "{train: 256, eval: 128}", gates: str = "{}", extra: str = "") -> str:
    return f"""
version: 1
name: mt
seed: 0
model:
  source: modelzip.testing.multitask:two_head
  args: {model_args}
  input_shape: [1, 1, 16, 16]
  tasks: {tasks}
{extra}data:
  dataset: modelzip.testing.multitask:two_task_dataset
  args: {data_args}
  batch_size: 64
  val_samples: 32
passes:
{passes}
gates: {gates}
evaluation: {{warmup: 1, repeats: 5, steps: all}}
output: out
"""


# --------------------------------------------------------------------------- naming


def test_outputs_by_task_from_dict_tuple_and_tensor():
    a, b = torch.zeros(2, 4), torch.ones(2, 3)
    assert by_name({"column": b, "band": a}, ("band", "column")) == {"band": a, "column": b}
    assert by_name((a, b), ("band", "column"))["column"] is b
    assert by_name(a, ("band",))["band"] is a
    with pytest.raises(TaskMismatch) as missing:
        by_name({"band": a}, ("band", "colum"))
    assert missing.value.task == "colum" and "band" in missing.value.got
    with pytest.raises(TaskMismatch) as short:
        by_name((a,), ("band", "column"))
    assert short.value.task == "column"


def test_targets_are_named_in_recipe_order_and_checked():
    labels = {"column": torch.tensor([1]), "band": torch.tensor([2]), "extra": torch.tensor([0])}
    assert list(named_targets(labels, ("band", "column"))) == ["band", "column"]
    assert named_targets(torch.tensor([3]), ("band",))["band"].tolist() == [3]
    with pytest.raises(TargetMismatch) as missing:
        named_targets(labels, ("band", "rot"))
    assert missing.value.task == "rot"


def test_loss_is_the_weighted_sum_of_the_tasks():
    output = {"band": torch.tensor([[0.0, 1.0]]), "column": torch.tensor([[2.0, 0.0]])}
    targets = {"band": torch.tensor([1]), "column": torch.tensor([0])}
    each = lambda task, logits, labels: logits[0, labels[0]]  # noqa: E731 - the picked logit
    assert float(weighted_loss(output, targets, each)) == pytest.approx(3.0)
    assert float(weighted_loss(output, targets, each, {"column": 0.5})) == pytest.approx(2.0)


# --------------------------------------------------------------------------- validate


def test_validate_suggests_task_names_for_per_task_keys(recipe_file):
    path = recipe_file(recipe(gates="{max_accuracy_drop: {band: 0.01, colum: 0.02}}",
                              extra="  task_weights: {bnd: 2}\n"))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    problems = {p.path: p for p in caught.value.problems}
    assert set(problems) == {"model.task_weights.bnd", "gates.max_accuracy_drop.colum"}
    assert "did you mean 'column'" in problems["gates.max_accuracy_drop.colum"].message
    assert problems["model.task_weights.bnd"].line == 9  # the text starts with an empty line


def test_per_task_gates_need_tasks(recipe_file):
    body = recipe(gates="{min_accuracy: {band: 0.5}}").replace("  tasks: [band, column]\n", "")
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe_file(body))
    assert [p.path for p in caught.value.problems] == ["gates.min_accuracy"]


def test_task_names_are_identifiers_named_once(recipe_file):
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe_file(recipe(tasks="[band, band]")))
    assert "repeat" in caught.value.problems[0].message


# --------------------------------------------------------------------------- preflight


def _preflight(recipe_path):
    recipe_obj = load_recipe(recipe_path)
    spec = recipe_obj.model
    data = load_data(recipe_obj.data, base_dir=recipe_obj.base_dir, seed=0, tasks=spec.tasks)
    return preflight(two_head(**spec.args), data, spec)


def test_preflight_names_a_task_the_model_does_not_return(recipe_file):
    with pytest.raises(InputError) as caught:
        _preflight(recipe_file(recipe(tasks="[band, colour]", data_args="{train: 64, eval: 16}")))
    # The dataset lacks "colour" too; the targets are read first.
    assert caught.value.where == "data.dataset" and "'colour'" in caught.value.what


def test_preflight_names_missing_targets_and_missing_outputs(recipe_file):
    with pytest.raises(InputError) as targets:
        _preflight(recipe_file(recipe(data_args="{train: 64, eval: 16, drop_task: column}")))
    assert targets.value.where == "data.dataset" and "'column'" in targets.value.what
    with pytest.raises(InputError) as outputs:  # a tuple of two outputs for three tasks
        _preflight(recipe_file(recipe(tasks="[band, column, third]", model_args="{dict_output: false}",
                                      data_args="{train: 64, eval: 16}")))
    assert outputs.value.where in {"model.tasks", "data.dataset"} and "'third'" in outputs.value.what


def test_preflight_wants_tasks_for_dict_targets(recipe_file):
    body = recipe(data_args="{train: 64, eval: 16}").replace("  tasks: [band, column]\n", "")
    with pytest.raises(InputError) as caught:
        _preflight(recipe_file(body))
    assert caught.value.where == "model.tasks" and "model.tasks: ['band', 'column']" in caught.value.fix


def test_preflight_passes_and_run_exits_2_on_a_mismatch(recipe_file):
    seen = _preflight(recipe_file(recipe(data_args="{train: 64, eval: 16}")))
    assert seen.output_classes == 3 and seen.label_classes <= 3
    bad = recipe_file(recipe(data_args="{train: 64, eval: 16, drop_task: band}"), "bad.yaml")
    result = CliRunner().invoke(app, ["run", str(bad)])
    assert result.exit_code == 2 and "'band'" in result.output


# --------------------------------------------------------------------------- every pass


PASSES = """\
  - finetune: {epochs: 3, lr: 0.05}
  - prune: {method: channel, ratio: 0.5}
  - finetune: {epochs: 1, distill: {teacher: input}}
  - quantize: {mode: static}
  - export"""


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """The two-head model with dict outputs and dict targets through every pass (run once)."""
    from tests.conftest import write_recipe

    directory = tmp_path_factory.mktemp("multitask")
    path = write_recipe(directory, recipe(PASSES, gates="{max_accuracy_drop: {band: 0.05}, min_accuracy: 0.5}",
                                          data_args="{train: 512, eval: 128}",
                                          extra="  task_weights: {band: 1.0, column: 0.5}\n"))
    result = run_recipe(load_recipe(path, ["evaluation.latency=false"]))  # latency is per model, tested elsewhere
    return result, json.loads((result.output_dir / "report.json").read_text())


def test_every_step_reports_each_task(pipeline_run):
    _, report = pipeline_run
    assert list(report["baseline"]["onnx"]["task_accuracy"]) == ["band", "column"]
    for step in report["steps"]:
        accuracies = step["metrics"]["task_accuracy"]
        assert list(accuracies) == ["band", "column"]
        assert step["metrics"]["accuracy"] == pytest.approx(sum(accuracies.values()) / 2)
    assert min(report["final"]["task_accuracy"].values()) >= 0.7  # both learned (chance: 25% and 33%)
    assert set(report["final"]["ratios"]["task_accuracy_delta"]) == {"band", "column"}


def test_prune_keeps_every_head_whole(pipeline_run):
    _, report = pipeline_run
    prune = report["steps"][1]["details"]
    assert {"heads.band", "heads.column"} <= set(prune["always_kept"])
    assert report["steps"][1]["metrics"]["macs"] < report["steps"][0]["metrics"]["macs"]


def test_onnx_has_a_named_dynamic_output_per_task(pipeline_run):
    from modelzip.evaluation.runtime import ort_session

    result, report = pipeline_run
    session = ort_session(result.output_dir / "model.onnx")
    assert [(o.name, o.shape[0]) for o in session.get_outputs()] == [("band", "batch"), ("column", "batch")]
    baseline_parity = report["baseline"]["export"]["parity"]
    assert baseline_parity["outputs"] == ["band", "column"] and baseline_parity["top1_agreement"] == 1.0


def test_gates_are_checked_per_task(pipeline_run):
    _, report = pipeline_run
    assert [g["name"] for g in report["gates"]] == [
        "max_accuracy_drop[band]", "min_accuracy[band]", "min_accuracy[column]"]
    assert report["status"] == "passed"
    markdown = (pipeline_run[0].output_dir / "report.md").read_text()
    assert "| band accuracy | column accuracy |" in markdown and "· band " in markdown


def test_a_failed_task_gate_names_the_task(recipe_file):
    path = recipe_file(recipe(gates="{min_accuracy: {column: 0.99}}"))
    result = run_recipe(load_recipe(path, ["optimize=false", "evaluation.latency=false"]))
    assert [g.name for g in result.failed_gates] == ["min_accuracy[column]"]


def test_tuple_outputs_are_named_by_position(recipe_file, tmp_path):
    recipe_obj = load_recipe(recipe_file(recipe(model_args="{dict_output: false}")))
    data = load_data(recipe_obj.data, base_dir=recipe_obj.base_dir, seed=0, tasks=recipe_obj.model.tasks)
    model = two_head(dict_output=False)
    in_torch = torch_task_accuracies(model, data.batches("eval"))
    assert list(in_torch.by_task) == ["band", "column"] and in_torch.samples == 128
    from modelzip.onnx_export import export_onnx

    path = tmp_path / "tuple.onnx"
    export_onnx(model, (1, 1, 16, 16), path, opset=18, exporter="torchscript", dynamic_batch=True,
                pass_name="export", step=0, tasks=("band", "column"))
    in_onnx = onnx_task_accuracies(path, data.batches("eval"))
    assert in_onnx.by_task == pytest.approx(in_torch.by_task)


# --------------------------------------------------------------------------- multi-fashion


def test_multi_fashion_overlays_two_items_by_pixelwise_max():
    from modelzip.sources.multi_fashion import CANVAS, OFFSET, compose

    items = np.zeros((3, 28, 28), dtype=np.uint8)
    for i in range(3):
        items[i, :, :] = 10 * (i + 1)  # item i is a flat image of brightness 10(i+1)
    canvases, labels = compose(items, np.array([0, 1, 2]), seed=0, split=0)
    assert canvases.shape == (3, CANVAS, CANVAS) and labels.shape == (3, 2)
    again, _ = compose(items, np.array([0, 1, 2]), seed=0, split=0)
    assert np.array_equal(canvases, again)  # a function of the items and the seed
    for i in range(3):
        left, right = labels[i]
        assert left == i and canvases[i, 0, 0] == 10 * (left + 1)  # only item A there
        assert canvases[i, -1, -1] == 10 * (right + 1)  # only item B there
        assert canvases[i, OFFSET, OFFSET] == 10 * (max(left, right) + 1)  # the overlap: the brighter
        assert canvases[i, 0, -1] == 0  # the corners no item covers stay black
    assert sorted(labels[:, 1]) == [0, 1, 2]  # B is a permutation of the split


@needs_fashion
def test_multi_fashion_from_the_fashion_mnist_files():
    from modelzip.recipe import DataSpec

    spec = DataSpec(dataset="multi-fashion", val_samples=0, limit_train=64, limit_eval=64)
    data = load_data(spec, base_dir=REPO, seed=0, tasks=("left", "right"))
    assert data.sample_shape == (1, 36, 36) and len(data.eval) == 64
    images, targets = next(iter(data.batches("eval", 8)))
    assert images.shape == (8, 1, 36, 36) and list(targets) == ["left", "right"]
    other = load_data(spec, base_dir=REPO, seed=1, tasks=("left", "right"))
    assert torch.equal(other.eval.labels[:, 0], data.eval.labels[:, 0])  # A: the file order
    assert not torch.equal(other.eval.labels[:, 1], data.eval.labels[:, 1])  # B: drawn from the seed


@needs_fashion
def test_train_baseline_trains_multitask_cnn(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_baseline", REPO / "scripts" / "train_baseline.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "multitask_cnn.pt"
    assert script.main(["--model", "multitask_cnn", "--dataset", "multi-fashion", "--epochs", "1",
                 "--limit-train", "256", "--val-samples", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "left " in printed and "right " in printed and out.is_file()
    state = torch.load(out, weights_only=True)
    assert {"heads.left.weight", "heads.right.weight"} <= set(state)


@needs_fashion
def test_train_baseline_trains_one_task_of_multi_fashion(tmp_path, capsys):
    """--task: a single-output zoo model on one task (a teacher of the merge pass), sized to 36x36."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_baseline", REPO / "scripts" / "train_baseline.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "left_cnn.pt"
    assert script.main(["--model", "fashion_cnn", "--dataset", "multi-fashion", "--task", "left", "--epochs", "1",
                        "--limit-train", "256", "--val-samples", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fashion_cnn (left)" in printed and ", left " in printed and "right" not in printed
    state = torch.load(out, weights_only=True)
    assert state["classifier.1.weight"].shape == (256, 64 * 9 * 9)  # 36x36 inputs, two 2x poolings
    with pytest.raises(SystemExit, match="--task 'middle'"):
        script.main(["--model", "fashion_cnn", "--dataset", "multi-fashion", "--task", "middle"])
