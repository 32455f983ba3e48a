"""A cached result is never silently stale or broken (issue: results people can trust).

Every input a step reads is in its key: change it and the step reruns. A damaged
cache entry or measurement is detected, reported, removed and recomputed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from modelzip import load_recipe, run_recipe
from modelzip.console import SilentUI
from modelzip.pipeline import RunOptions
from modelzip.run_folder import check_consistent
from modelzip.zoo import tiny_cnn
from tests.conftest import synthetic_recipe, write_recipe
from tests.test_data import write_fake_mnist, write_idx

DISTILL = "  - finetune: {epochs: 1, augment: none, distill: {teacher: teacher.pt}}\n  - export: {}\n"


def _idx_recipe(directory: Path) -> Path:
    """A finetune distilled from a teacher file, on a small fashion-mnist-format dataset."""
    write_fake_mnist(directory / "data", train=160, test=60, side=28)
    torch.manual_seed(1)
    torch.save(tiny_cnn(num_classes=10).state_dict(), directory / "teacher.pt")
    torch.manual_seed(0)
    torch.save(tiny_cnn(num_classes=10).state_dict(), directory / "tiny.pt")
    body = synthetic_recipe(DISTILL, checkpoint="tiny.pt", model_args="{num_classes: 10}",
                            evaluation="{latency: false}")
    body = body.replace("  dataset: modelzip.testing:synthetic_dataset\n  args: {train: 256, eval: 128}\n",
                        "  dataset: fashion-mnist\n  root: data\n")
    return write_recipe(directory, body)


def _run(recipe: Path, *overrides: str, ui=None) -> dict:
    options = RunOptions(ui=ui or SilentUI())
    return run_recipe(load_recipe(recipe, list(overrides)), options).report


def _finetune(report: dict) -> dict:
    return report["steps"][0]


def test_every_input_a_step_reads_reruns_it(tmp_path):
    recipe = _idx_recipe(tmp_path)
    first = _run(recipe)
    assert not _finetune(first)["cached"]
    assert _finetune(_run(recipe))["cached"]  # nothing changed: reused

    changes = [("data.limit_train", ["data.limit_train=120"]),
               ("data.val_samples", ["data.val_samples=20"]),
               ("data.batch_size", ["data.batch_size=32"]),
               ("data.normalize", ["data.normalize={mean: [0.5], std: [0.5]}"])]
    keys = {_finetune(first)["key"]}
    for what, overrides in changes:
        report = _run(recipe, *overrides)
        assert not _finetune(report)["cached"], what
        keys.add(_finetune(report)["key"])
    assert len(keys) == len(changes) + 1

    torch.manual_seed(2)  # the teacher file's contents change, its name does not
    torch.save(tiny_cnn(num_classes=10).state_dict(), tmp_path / "teacher.pt")
    assert not _finetune(_run(recipe))["cached"], "teacher checkpoint"

    images = np.random.default_rng(0).integers(0, 255, (160, 28, 28))  # dataset rewritten in place
    write_idx(tmp_path / "data" / "train-images-idx3-ubyte.gz", images, compress=True)
    changed = _run(recipe)
    assert not _finetune(changed)["cached"], "dataset files"


def test_eval_only_settings_remeasure_without_retraining(tmp_path):
    recipe = _idx_recipe(tmp_path)
    first = _run(recipe)
    fewer = _run(recipe, "data.limit_eval=30")
    assert _finetune(fewer)["cached"]  # training never saw the eval split
    assert fewer["baseline"]["onnx"]["eval_samples"] == 30 != first["baseline"]["onnx"]["eval_samples"]
    assert fewer["final"]["eval_samples"] == 30
    labels = np.arange(60) % 10
    write_idx(tmp_path / "data" / "t10k-labels-idx1-ubyte", (labels + 1) % 10)  # eval labels change
    relabelled = _run(recipe)
    assert relabelled["baseline"]["onnx"]["accuracy"] != first["baseline"]["onnx"]["accuracy"]


TINY = synthetic_recipe("  - finetune: {epochs: 1, augment: none}\n  - export: {}\n", checkpoint="tiny.pt",
                        evaluation="{warmup: 1, repeats: 5}")


@pytest.fixture
def tiny(tiny_checkpoint, recipe_file):
    return recipe_file(TINY)


def _entry(recipe: Path, report: dict, index: int) -> Path:
    return recipe.parent / "out" / ".cache" / "steps" / report["steps"][index]["key"]


def test_truncated_onnx_in_cache_is_recomputed(tiny):
    first = _run(tiny)
    model = _entry(tiny, first, 1) / "model.onnx"
    model.write_bytes(model.read_bytes()[:100])
    ui = SilentUI()
    second = _run(tiny, ui=ui)
    assert [s["cached"] for s in second["steps"]] == [True, False, True]  # optimize: same input key
    assert any("damaged" in m and "model.onnx" in m for m in ui.messages)
    onnx.checker.check_model(str(tiny.parent / "out" / "model.onnx"), full_check=True)
    assert second["final"]["accuracy"] == first["final"]["accuracy"]
    assert check_consistent(tiny.parent / "out") is None


def test_truncated_weights_and_garbage_manifest_are_recomputed(tiny):
    first = _run(tiny)
    weights = _entry(tiny, first, 0) / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:50])
    second = _run(tiny)
    # The export's key names its input by key, not by bytes: the intact export entry is reused.
    assert [s["cached"] for s in second["steps"]] == [False, True, True]
    (_entry(tiny, second, 0) / "complete.json").write_text("{not json")
    third = _run(tiny)
    assert not third["steps"][0]["cached"]
    assert third["final"]["accuracy"] == first["final"]["accuracy"]  # same seed, same result


def test_garbage_metrics_are_measured_again(tiny):
    first = _run(tiny)
    metrics = sorted((tiny.parent / "out" / ".cache" / "metrics").glob("*.json"))
    assert metrics
    for path in metrics:
        path.write_text('{"key": "x", "value": {"accuracy": 7}}' if path == metrics[0] else "garbage")
    ui = SilentUI()
    second = _run(tiny, ui=ui)
    assert second["final"]["accuracy"] == first["final"]["accuracy"]
    assert second["baseline"]["torch"] == first["baseline"]["torch"]
    assert sum("damaged" in m for m in ui.messages) == len(metrics)


def test_interrupted_leftovers_are_cleaned(tiny):
    _run(tiny)
    steps = tiny.parent / "out" / ".cache" / "steps"
    (steps / ".abc.xyz.tmp").mkdir()
    (steps / ".abc.xyz.tmp" / "weights.pt").write_bytes(b"half")
    (tiny.parent / "out" / ".model.onnx.123.tmp").write_bytes(b"half")
    (tiny.parent / "out" / ".staging").mkdir()
    _run(tiny)
    assert not list(steps.glob(".*")) and not list((tiny.parent / "out").glob(".*.tmp"))
    assert not (tiny.parent / "out" / ".staging").exists()


def test_report_lists_the_digests_of_the_files_beside_it(tiny):
    report = _run(tiny)
    assert set(report["files"]) == {"model.onnx", "recipe.resolved.yaml", "model.names.json"}
    out = tiny.parent / "out"
    assert check_consistent(out) is None
    (out / "model.onnx").write_bytes(b"another model")
    assert check_consistent(out) == "model.onnx does not match report.json"
    saved = json.loads((out / "report.json").read_text())
    assert saved["files"] == report["files"]


def test_replacing_an_entry_swaps_it_whole(tmp_path):
    from modelzip.atomic import atomic_dir

    target = tmp_path / "entry"
    for content in ("old", "new"):
        with atomic_dir(target) as scratch:
            (scratch / "model.onnx").write_text(content)
    assert (target / "model.onnx").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]  # no scratch or old tree left


@pytest.mark.parametrize("files", ['[["model.onnx", 1]]', '{"model.onnx": 1}', '{"model.onnx": {}}'])
def test_a_manifest_of_another_shape_is_a_miss_not_a_crash(tmp_path, files):
    from modelzip.cache import CACHE_FORMAT, StepCache

    cache = StepCache(tmp_path, on_damage=lambda message: None)
    with cache.store("k") as entry:
        (entry / "model.onnx").write_bytes(b"x")
    (cache.entry("k") / "complete.json").write_text(
        f'{{"key": "k", "format": {CACHE_FORMAT}, "files": {files}}}')
    assert cache.lookup("k") is None and not cache.entry("k").exists()


def test_download_is_not_in_any_key(tmp_path):
    from modelzip.inputs import data_fingerprint
    from modelzip.recipe import DataSpec

    write_fake_mnist(tmp_path / "data", side=28)
    for for_eval in (True, False):
        keys = [data_fingerprint(DataSpec(dataset="fashion-mnist", root=str(tmp_path / "data"), download=d),
                                 tmp_path, for_eval=for_eval) for d in (False, True)]
        assert keys[0] == keys[1] and keys[0]["files"]


def test_a_finished_step_clears_its_resume_state(tmp_path):
    from modelzip.cache import StepCache

    cache = StepCache(tmp_path)
    with cache.store("k") as entry:
        (entry / "weights.pt").write_bytes(b"w")
    cache.resume_dir("k")  # as if a run died between committing the entry and removing this
    (tmp_path / "partial" / ".k.old.1.tmp").mkdir()
    assert cache.lookup("k") is not None and not (tmp_path / "partial" / "k").exists()
    cache.clean_interrupted()
    assert list((tmp_path / "partial").iterdir()) == []
