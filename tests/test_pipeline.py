"""The pipeline end to end on a tiny model and synthetic data (seconds)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from modelzip import Pass, PassConfig, PassError, load_recipe, run_recipe
from modelzip.console import SilentUI
from modelzip.errors import InputError
from modelzip.pipeline import RunOptions
from modelzip.registry import PassRegistry
from modelzip.zoo import tiny_cnn
from tests.conftest import synthetic_recipe

TINY = synthetic_recipe("  - export: {}", checkpoint="tiny.pt")


@pytest.fixture
def tiny_recipe(tiny_checkpoint, recipe_file):
    return recipe_file(TINY)


@pytest.mark.parametrize("steps", ["final", "all"])
def test_export_recipe_writes_artifacts_and_report(tiny_recipe, steps):
    # optimize=false: the export is the final step (the optimize step has its own tests below)
    result = run_recipe(load_recipe(tiny_recipe, [f"evaluation.steps={steps}", "optimize=false"]))
    out = result.output_dir
    for name in ("model.onnx", "report.json", "report.md", "recipe.resolved.yaml"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "modelzip.report/1" and report["status"] == "passed"
    final = report["final"]
    step = report["steps"][0]
    assert step["pass"] == "export" and step["kind"] == "onnx" and not step["cached"]
    parity = step["details"]["parity"]
    assert parity["max_abs_diff"] <= parity["atol"] + 1e-3 and parity["top1_agreement"] == 1.0
    # Export changes nothing: same accuracy in ORT as in torch, same MACs.
    torch_accuracy = report["baseline"]["torch"]["accuracy"]
    if steps == "all":
        assert step["metrics"]["accuracy"] == pytest.approx(torch_accuracy, abs=1e-9)
        assert report["baseline"]["accuracy_reference"] == "torch"
    else:  # the torch model is not evaluated: its parity-checked fp32 ONNX export is the reference
        assert torch_accuracy is None and report["baseline"]["torch"]["eval_samples"] is None
        assert report["baseline"]["accuracy_reference"] == "onnx"
        assert step["metrics"]["accuracy"] == report["baseline"]["onnx"]["accuracy"]
        assert final["ratios"]["accuracy_delta"] == 0.0
    assert step["metrics"]["macs"] == report["baseline"]["torch"]["macs"]
    assert report["evaluation"]["steps"] == steps
    assert final["ratios"]["size"] == pytest.approx(1.0)  # the baseline export is this very step
    assert set(final["latency"]) == {"batch_1", "batch_64", "cached"} and not final["latency"]["cached"]
    assert final["latency"]["batch_1"]["final"]["median_ms"] > 0
    assert report["environment"]["threads"] == final["threads"]


def test_second_run_reuses_every_step(tiny_recipe):
    recipe = load_recipe(tiny_recipe)
    first = run_recipe(recipe)
    second = run_recipe(recipe)
    assert [s["cached"] for s in second.report["steps"]] == [True, True]  # export, the implicit optimize
    assert second.report["final"]["latency"]["cached"] is True
    assert second.report["steps"][0]["key"] == first.report["steps"][0]["key"]
    forced = run_recipe(recipe, RunOptions(use_cache=False))
    assert [s["cached"] for s in forced.report["steps"]] == [False, False]
    assert forced.report["final"]["latency"]["cached"] is False


class TagConfig(PassConfig):
    tag: str = "x"
    fail: bool = False


class TagPass(Pass):
    """Throwaway plugin: records its tag, optionally fails, returns the model unchanged."""

    name = "tag"
    summary = "test pass"
    Config = TagConfig
    runs: list[str] = []

    def run(self, artifact, config, ctx):
        TagPass.runs.append(config.tag)
        if config.fail:
            raise RuntimeError("boom")
        ctx.record(tag=config.tag)
        return artifact.evolve(module=artifact.module)


@pytest.fixture
def registry():
    TagPass.runs = []
    reg = PassRegistry.from_entry_points()
    reg.register(TagPass)
    return reg


def _with_passes(path, passes: str):
    path.write_text(path.read_text().replace("  - export: {}\n", passes))
    return path


def test_changing_pass_k_reruns_from_k(tiny_recipe, registry):
    _with_passes(tiny_recipe, "  - tag: {tag: a}\n  - tag: {tag: b}\n  - export: {}\n")
    run_recipe(load_recipe(tiny_recipe, registry=registry), RunOptions(registry=registry))
    assert TagPass.runs == ["a", "b"]
    TagPass.runs = []
    recipe = load_recipe(tiny_recipe, ["passes.1.tag.tag=c"], registry=registry)
    result = run_recipe(recipe, RunOptions(registry=registry))
    assert TagPass.runs == ["c"]
    assert [s["cached"] for s in result.report["steps"]] == [True, False, False, False]  # + optimize
    assert result.report["steps"][1]["details"] == {"tag": "c"}


def test_failed_pass_keeps_finished_steps_and_writes_no_artifact(tiny_recipe, registry):
    _with_passes(tiny_recipe, "  - tag: {tag: a}\n  - tag: {tag: b, fail: true}\n  - export: {}\n")
    recipe = load_recipe(tiny_recipe, registry=registry)
    with pytest.raises(PassError) as info:
        run_recipe(recipe, RunOptions(registry=registry))
    assert info.value.pass_name == "tag" and info.value.step == 1 and info.value.exit_code == 3
    assert not (recipe.output_dir / "model.onnx").exists()
    leftovers = [p for p in (recipe.output_dir / ".cache" / "steps").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    TagPass.runs = []
    fixed = load_recipe(tiny_recipe, ["passes.1.tag.fail=false"], registry=registry)
    result = run_recipe(fixed, RunOptions(registry=registry))
    assert TagPass.runs == ["b"]  # step 0 resumed from the cache
    assert result.report["steps"][0]["cached"]


def test_torch_final_artifact_is_exported_implicitly(tiny_recipe, registry):
    _with_passes(tiny_recipe, "  - tag: {}\n")
    result = run_recipe(load_recipe(tiny_recipe, registry=registry), RunOptions(registry=registry))
    assert [(s["pass"], s.get("implicit")) for s in result.report["steps"][-2:]] == [
        ("export", True), ("optimize", True)]
    assert (result.output_dir / "model.onnx").is_file()


def test_gate_failure_is_reported(tiny_recipe):
    recipe = load_recipe(tiny_recipe, ["gates.min_accuracy=1.0", "gates.min_size_ratio=0.5"])
    result = run_recipe(recipe)
    failed = {g.name for g in result.failed_gates}
    assert "min_accuracy" in failed or result.report["final"]["accuracy"] == 1.0
    assert "min_size_ratio" not in failed
    assert (result.output_dir / "report.json").is_file()


def test_checkpoint_that_does_not_fit_names_tensors(tiny_recipe, tmp_path):
    torch.save(tiny_cnn(num_classes=10).state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(InputError) as info:
        run_recipe(load_recipe(tiny_recipe))
    assert info.value.where == "model.checkpoint"
    assert "(4," in info.value.got or "(10," in info.value.got  # names the classifier's shapes


def test_pickled_module_needs_trust(tiny_recipe, tmp_path):
    torch.save(tiny_cnn(num_classes=4), tmp_path / "tiny.pt")
    with pytest.raises(InputError) as info:
        run_recipe(load_recipe(tiny_recipe))
    assert "trust_checkpoint" in info.value.fix
    trusted = load_recipe(tiny_recipe, ["model.trust_checkpoint=true"])
    assert run_recipe(trusted).report["status"] == "passed"


USER_MODEL = """
import torch.nn as nn

def build(classes=4):
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, classes))
"""


def test_user_module_beside_recipe_runs_from_cli(tmp_path, recipe_file):
    """`mymodels:build` beside the recipe + state_dict checkpoint, through the real CLI."""
    (tmp_path / "mymodels.py").write_text(USER_MODEL)
    sys.path.insert(0, str(tmp_path))
    try:
        import mymodels  # noqa: F401 - the same file the CLI will import

        torch.save(sys.modules["mymodels"].build().state_dict(), tmp_path / "user.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mymodels", None)
    body = TINY.replace("modelzip.zoo:tiny_cnn", "mymodels:build").replace("{num_classes: 4}", "{}")
    path = recipe_file(body.replace("tiny.pt", "user.pt"))
    result = subprocess.run([sys.executable, "-m", "modelzip", "run", str(path), "--quiet",
                             "--set", "evaluation.steps=all"],
                            capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["steps"][0]["metrics"]["accuracy"] == pytest.approx(
        report["baseline"]["torch"]["accuracy"], abs=1e-9)


FAILING_PLUGIN = """
from modelzip import Pass, PassConfig

class ShoutPass(Pass):
    name = "shout"
    summary = "fails at run time"
    Config = PassConfig

    def run(self, artifact, config, ctx):
        raise ValueError("no voice left")
"""


def test_cli_exit_codes_for_gate_and_pass_failures(tiny_recipe, tmp_path):
    from tests.test_registry import make_third_party_plugin

    cmd = [sys.executable, "-m", "modelzip", "run", str(tiny_recipe), "--quiet"]
    gate = subprocess.run(cmd + ["--set", "gates.min_size_ratio=100"], capture_output=True, text=True)
    assert gate.returncode == 1, gate.stderr
    assert "min_size_ratio" in gate.stderr and "Traceback" not in gate.stderr
    missing = subprocess.run(cmd + ["--set", "model.checkpoint=absent.pt"], capture_output=True, text=True)
    assert missing.returncode == 2 and "checkpoint file not found" in missing.stderr
    site = tmp_path / "site"
    site.mkdir()
    make_third_party_plugin(site, FAILING_PLUGIN)
    _with_passes(tiny_recipe, "  - shout: {}\n")
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    failed = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert failed.returncode == 3, failed.stderr
    assert "passes[0].shout" in failed.stderr and "no voice left" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_export_after_onnx_is_a_checked_passthrough(tiny_recipe):
    _with_passes(tiny_recipe, "  - export: {}\n  - export: {opset: 19}\n")
    result = run_recipe(load_recipe(tiny_recipe, ["evaluation.steps=all"]))
    second = result.report["steps"][1]
    assert second["details"]["passthrough"] is True
    assert second["metrics"]["accuracy"] == result.report["steps"][0]["metrics"]["accuracy"]


def test_export_records_which_module_each_node_came_from(tiny_recipe):
    result = run_recipe(load_recipe(tiny_recipe))
    entry = result.output_dir / ".cache" / "steps" / result.report["steps"][0]["key"]
    mapping = json.loads((entry / "node_modules.json").read_text())
    assert "features.3" in mapping.values()  # the MaxPool, by its torch module name
    assert "classifier.1" in mapping.values()


def test_written_file_is_optimized_with_its_name_map_and_optimize_false_opts_out(tiny_recipe):
    from modelzip.run_folder import NAME_MAP, check_consistent

    result = run_recipe(load_recipe(tiny_recipe))
    out, report = result.output_dir, result.report
    optimize = report["steps"][-1]
    assert optimize["pass"] == "optimize" and optimize["implicit"] is True
    details = optimize["details"]
    assert details["saved_bytes"] > 0 and details["after"]["overhead"] < details["before"]["overhead"]
    assert optimize["metrics"]["size_bytes"] == details["after"]["file_bytes"] == report["final"]["size_bytes"]
    # The map beside the file, listed and checked like the other files, and named by the final record.
    assert report["final"]["name_map"] == NAME_MAP and NAME_MAP in report["files"]
    names = json.loads((out / NAME_MAP).read_text())
    assert names["schema"] == "modelzip.names/1" and names["tensors"]
    assert check_consistent(out) is None
    # The baseline is optimized alike: `export` alone still writes the baseline's very bytes.
    assert report["baseline"]["optimize"]["after"] == details["after"]
    assert report["final"]["latency"]["batch_1"]["verdict"] == "same model"

    plain = run_recipe(load_recipe(tiny_recipe, ["optimize=false"])).report
    assert [s["pass"] for s in plain["steps"]] == ["export"] and plain["baseline"]["optimize"] is None
    assert plain["final"]["name_map"] is None and NAME_MAP not in plain["files"]
    assert not (out / NAME_MAP).exists()  # the earlier run's map went with its model
    assert plain["final"]["size_bytes"] == details["before"]["file_bytes"]
    assert check_consistent(out) is None


def test_a_final_optimize_pass_is_not_repeated_and_sets_the_baselines(tiny_recipe):
    _with_passes(tiny_recipe, "  - export: {}\n  - optimize: {shorten_names: false}\n")
    report = run_recipe(load_recipe(tiny_recipe)).report
    assert [(s["pass"], s.get("implicit", False)) for s in report["steps"]] == [
        ("export", False), ("optimize", False)]
    assert report["final"]["name_map"] is None and report["baseline"]["optimize"]["names_shortened"] is None
    assert report["final"]["ratios"]["size"] == 1.0

class CountingUI(SilentUI):
    """Records what the pipeline measured (the descriptions of its progress bars)."""

    def __init__(self) -> None:
        super().__init__()
        self.tracked: list[str] = []

    def track(self, total, description):
        self.tracked.append(description)
        return super().track(total, description)


@pytest.mark.parametrize("steps", ["final", "all"])
def test_evaluation_steps_decides_which_accuracies_are_measured(tiny_recipe, steps):
    """final: the baseline ONNX and the final model only (the torch input model and the first export are
    not evaluated; the cheap statistics are still recorded for every step); all: every artifact once."""
    _with_passes(tiny_recipe, "  - export: {}\n  - export: {opset: 19}\n")
    ui = CountingUI()
    result = run_recipe(load_recipe(tiny_recipe, [f"evaluation.steps={steps}", "evaluation.latency=false",
                                                  "optimize=false"]), RunOptions(ui=ui))
    accuracies = sorted(d for d in ui.tracked if d.startswith("accuracy"))
    report = result.report
    if steps == "final":
        # the baseline export, the final passthrough: two ONNX files; step 0 is the baseline's very file
        assert accuracies == ["accuracy (onnxruntime, 128 images)"] * 2
        assert report["steps"][0]["metrics"]["accuracy"] is None
    else:
        assert accuracies == ["accuracy (onnxruntime, 128 images)"] * 2 + ["accuracy (torch, 128 images)"]
        assert report["steps"][0]["metrics"]["accuracy"] == report["baseline"]["onnx"]["accuracy"]
    for step in report["steps"]:
        assert step["metrics"]["macs"] > 0 and step["metrics"]["zip_bytes"] > 0
    assert report["final"]["accuracy"] == report["steps"][1]["metrics"]["accuracy"] is not None


def test_a_quantize_only_run_times_its_pair_once(tiny_recipe, monkeypatch):
    """quantize under prefer: faster times int8 against the float export of its torch input, which is
    the baseline export's file: the final latency is that measurement, not a second one. (With the
    default final optimize step both files the report compares are the optimized ones, which are
    timed; under prefer: smaller the pass times nothing.) Where int8 was measured slower, the float
    model comes back: the final file is the baseline's, timed alone for its milliseconds."""
    from modelzip.evaluation import latency

    timed = []  # (batch, files timed together) per measurement
    measure = latency.measure_latency
    monkeypatch.setattr(latency, "measure_latency",
                        lambda *a, **k: timed.append((a[2], len(a[0]))) or measure(*a, **k))
    _with_passes(tiny_recipe, "  - quantize: {prefer: faster}\n")
    result = run_recipe(load_recipe(tiny_recipe, ["optimize=false"]), RunOptions(ui=CountingUI()))
    step = result.report["steps"][0]["details"]
    final = result.report["final"]["latency"]
    pair = [(1, 2), (64, 2)]  # the pass's int8-vs-float pair at both batch sizes, once each
    for batch in ("batch_1", "batch_64"):
        if step["returned"] == "quantized":
            assert final[batch] == step["latency"][batch] and timed == pair
        else:
            assert final[batch]["verdict"] == "same model" and timed == pair + [(1, 1), (64, 1)]
        assert step["latency"][batch]["stopped"] in ("tight", "repeats", "time_cap", "min_span")
    assert final["cached"] is False


def test_quantizing_the_input_model_reuses_the_baseline_export(tiny_recipe):
    """The float model quantize starts from is the baseline's export (same model, same default
    settings): it is read from the cache, not exported a second time."""
    _with_passes(tiny_recipe, "  - quantize: {}\n")
    details = run_recipe(load_recipe(tiny_recipe, ["evaluation.latency=false"])).report["steps"][0]["details"]
    assert details["float_export"].startswith("the pipeline's export of this model")
    assert details["export_parity"]["top1_agreement"] == 1.0


def test_an_artifact_with_new_content_never_keeps_its_parents_id():
    from modelzip.artifacts import Artifact

    parent = Artifact(kind="torch", input_shape=(1, 1, 28, 28), id="in", module=tiny_cnn(num_classes=4))
    trained = parent.evolve(module=tiny_cnn(num_classes=4))
    exported = parent.evolve(kind="onnx", path="m.onnx", module=None)
    assert len({parent.id, trained.id, exported.id}) == 3  # a lookup by id cannot mistake one for another
    assert parent.evolve(lineage=()).id == "in"  # the same content keeps its name
    assert parent.evolve(module=parent.module, id="key").id == "key"  # the pipeline names outputs by key
