"""Warnings where the result looks broken (modelzip.findings): each check on hand-built records,
and one run whose pass zeroes every weight."""
from __future__ import annotations

import json

import torch

from modelzip import Pass, PassConfig, load_recipe, run_recipe
from modelzip.evaluation.records import Finding, Metrics, StepRecord
from modelzip.findings import at_chance, find_problems, finetune_no_gain, zeroed_layers
from modelzip.pipeline import RunOptions
from modelzip.registry import PassRegistry
from modelzip.report import render_markdown
from tests.conftest import synthetic_recipe


def metrics(accuracy: float, backend: str = "torch") -> Metrics:
    return Metrics(accuracy, backend, 10_000, 1000, 1000, 5000, 4000)


def step(name: str, accuracy: float, *, index: int = 0, backend: str = "torch", details=None) -> StepRecord:
    return StepRecord(index, name, {}, "k", False, "torch", 0.1, details or {}, metrics(accuracy, backend))


def test_at_chance_fires_after_a_working_input_with_a_fix_for_the_pass() -> None:
    [found] = at_chance(step("prune", 0.102, index=2), metrics(0.91), num_classes=10)
    assert (found.step, found.pass_name, found.kind) == (2, "prune", "at_chance")
    assert found.format().startswith("passes[2].prune: accuracy 10.2% is at chance (10 classes")
    assert "lower sparsity" in found.fix
    assert "rank" in at_chance(step("lowrank", 0.1), metrics(0.9), 10)[0].fix
    assert "exclude" in at_chance(step("quantize", 0.1), metrics(0.9), 10)[0].fix
    assert "lr" in at_chance(step("finetune", 0.1), metrics(0.9), 10)[0].fix
    assert at_chance(step("custom", 0.1), metrics(0.9), 10)[0].fix  # a generic fix


def test_at_chance_does_not_fire_above_chance_after_chance_or_without_classes() -> None:
    assert at_chance(step("prune", 0.16), metrics(0.91), 10) == []  # above 1.5x chance
    assert at_chance(step("prune", 0.10), metrics(0.12), 10) == []  # the input was at chance already
    assert at_chance(step("prune", 0.10), metrics(0.91), None) == []  # classes unknown


def test_finetune_below_its_input_fires_on_the_same_backend_only() -> None:
    [found] = finetune_no_gain(step("finetune", 0.80, index=1), metrics(0.85))
    assert found.kind == "finetune_no_gain"
    assert found.message == "finetune ended at 80.0%, below its input's 85.0%"
    assert "distill: {teacher: baseline}" in found.fix
    assert finetune_no_gain(step("finetune", 0.86), metrics(0.85)) == []
    # 10,000 eval images at 85%: twice the standard error is 0.71 pp, so 0.5 pp lower is noise
    assert finetune_no_gain(step("finetune", 0.845), metrics(0.85)) == []
    assert finetune_no_gain(step("finetune", 0.80), metrics(0.85, "onnxruntime")) == []
    assert finetune_no_gain(step("prune", 0.80), metrics(0.85)) == []


def test_a_finetune_that_also_pruned_says_so_and_suggests_distilling_from_the_dense_input() -> None:
    pruned = step("finetune", 0.86, details={"pruning": {"sparsity": 0.9}})
    [found] = finetune_no_gain(pruned, metrics(0.92))
    assert found.message == "finetune pruned to 90.0% sparsity and ended at 86.0%, below its dense input's 92.0%"
    assert "distill: {teacher: input}" in found.fix and "lower sparsity" in found.fix


def test_a_layer_recorded_entirely_zero_is_named() -> None:
    details = {"layer_sparsity": {"features.0": 0.5, "features.3": 1.0}}
    [found] = zeroed_layers(step("prune", 0.9, index=1, details=details))
    assert found.message == "layer features.3 is entirely zero after prune"
    assert "`ignore:`" in found.fix
    assert zeroed_layers(step("prune", 0.9, details={"layer_sparsity": {"a": 0.99}})) == []
    assert zeroed_layers(step("export", 0.9)) == []


def test_each_step_is_compared_with_the_one_before_it() -> None:
    steps = [step("finetune", 0.95, index=0), step("prune", 0.25, index=1), step("export", 0.25, index=2)]
    found = find_problems(metrics(0.90), steps, num_classes=4)
    assert [(f.step, f.kind) for f in found.warnings] == [(1, "at_chance")] and found.unchecked == ()


# ---------------------------------------------------------------- evaluation.steps: final


def unevaluated(name: str, *, index: int, details=None) -> StepRecord:
    """A step under evaluation.steps: final: parameters and sizes, no accuracy."""
    stats = Metrics(None, "torch", None, 1000, 500, 5000, 4000)
    return StepRecord(index, name, {}, "k", False, "torch", 0.1, details or {}, stats)


def bn(accuracy_after: float, kept: str = "recalibrated") -> dict:
    """prune's and lowrank's record of BatchNorm recalibration (passes/_bn.py)."""
    return {"bn_recalibration": {"accuracy_images": 2000, "accuracy_before": 0.5, "accuracy_after": accuracy_after,
                                 "kept": kept}}


def test_finetune_is_compared_on_validation_with_what_the_pass_before_it_measured() -> None:
    steps = [unevaluated("prune", index=0, details=bn(0.85)),
             unevaluated("finetune", index=1, details={"best_val_accuracy": 0.80}), step("export", 0.80, index=2)]
    review = find_problems(metrics(0.90, "onnxruntime"), steps, num_classes=10)
    [found] = review.warnings
    assert (found.step, found.kind) == (1, "finetune_no_gain")
    assert found.message == "finetune ended at 80.0%, below its input's 85.0% (validation)"
    assert review.unchecked == ()  # both accuracies were measured by the passes
    # 84% vs 85% on 2,000 images is within twice the standard error (1.6 pp): no warning
    steps[1] = unevaluated("finetune", index=1, details={"best_val_accuracy": 0.84})
    assert find_problems(metrics(0.90, "onnxruntime"), steps, 10).warnings == ()
    # recalibrated statistics that validated worse were not kept: the model finetune got validated
    # at accuracy_before (50%), which 84% is well above
    steps[0] = unevaluated("prune", index=0, details=bn(0.99, kept="previous"))
    assert find_problems(metrics(0.90, "onnxruntime"), steps, 10).warnings == ()


def test_what_cannot_be_decided_is_listed_not_dropped() -> None:
    steps = [unevaluated("finetune", index=0, details={"best_val_accuracy": 0.9}),
             unevaluated("custom", index=1), unevaluated("export", index=2), step("quantize", 0.88, index=3)]
    review = find_problems(metrics(0.90, "onnxruntime"), steps, num_classes=10)
    assert review.warnings == ()
    # finetune: its own validation accuracy, but its input's only on the eval split; custom: nothing;
    # an unevaluated export is left out (its parity check ties it to its input)
    assert [(u.step, u.pass_name, u.kinds) for u in review.unchecked] == [
        (0, "finetune", ("finetune_no_gain",)), (1, "custom", ("at_chance",))]
    assert review.unchecked[1].format().startswith("passes[1].custom: at_chance not checked: its accuracy was "
                                                    "not evaluated (evaluation.steps: final)")
    assert "--set evaluation.steps=all" in review.unchecked[0].reason
    assert find_problems(metrics(0.9), steps, num_classes=None).unchecked[1:] == ()  # no classes: no chance check


def test_a_step_followed_only_by_exports_has_the_accuracy_they_measured() -> None:
    steps = [unevaluated("custom", index=0), unevaluated("export", index=1), step("export", 0.1, index=2)]
    review = find_problems(metrics(0.90, "onnxruntime"), steps, num_classes=10)
    assert [(f.step, f.pass_name, f.kind) for f in review.warnings] == [(0, "custom", "at_chance")]
    assert review.unchecked == ()


def test_at_chance_uses_the_validation_accuracy_a_pass_recorded() -> None:
    steps = [unevaluated("prune", index=0, details=bn(0.11)), step("export", 0.11, index=1)]
    [found] = find_problems(metrics(0.90, "onnxruntime"), steps, num_classes=10).warnings
    assert (found.step, found.pass_name) == (0, "prune")  # where it fell, not the final model
    assert found.message.startswith("validation accuracy (measured by the pass) 11.0% is at chance")
    assert "lower sparsity" in found.fix


def test_at_chance_on_the_final_model_names_the_steps_that_were_not_evaluated() -> None:
    steps = [unevaluated("lowrank", index=0), unevaluated("custom", index=1), step("quantize", 0.1, index=2)]
    [found] = find_problems(metrics(0.90, "onnxruntime"), steps, num_classes=10).warnings
    assert (found.step, found.kind) == (2, "at_chance")
    assert found.message == ("accuracy 10.0% is at chance (10 classes); the last accuracy known before it, of the "
                             "input model, was 90.0%, and passes[0].lowrank, passes[1].custom between were not "
                             "evaluated (evaluation.steps: final)")
    assert found.fix.startswith("`--set evaluation.steps=all` shows which step lost it")
    assert "exclude" in found.fix  # and what to try if it was quantize


class ZeroConfig(PassConfig):
    pass


class ZeroPass(Pass):
    """Throwaway plugin: every weight and bias zero, so the model predicts one class."""

    name = "zero"
    summary = "test pass"
    Config = ZeroConfig

    def run(self, artifact, config, ctx):
        module = artifact.module
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.zero_()
        return artifact.evolve(module=module)


def _zeroed_run(recipe_file, steps: str):
    registry = PassRegistry.from_entry_points()
    registry.register(ZeroPass)
    # 3 epochs learn the synthetic bands (4 classes, chance 25%); then every weight goes.
    passes = "  - finetune: {epochs: 3, lr: 0.05, augment: none}\n  - zero: {}\n  - export: {}"
    evaluation = f"{{latency: false, steps: {steps}}}"
    path = recipe_file(synthetic_recipe(passes, checkpoint="tiny.pt", evaluation=evaluation))
    return run_recipe(load_recipe(path, registry=registry), RunOptions(registry=registry))


def test_a_run_whose_pass_zeroes_the_model_warns_in_both_reports(tiny_checkpoint, recipe_file, capsys) -> None:
    from modelzip.cli import _print_run

    result = _zeroed_run(recipe_file, "all")
    assert result.report["steps"][0]["metrics"]["accuracy"] > 0.5
    assert [(w.step, w.pass_name, w.kind) for w in result.record.warnings] == [(1, "zero", "at_chance")]
    report = json.loads((result.output_dir / "report.json").read_text())
    assert [Finding.from_json(w) for w in report["warnings"]] == list(result.record.warnings)
    assert report["unchecked"] == [] and report["evaluation"]["steps"] == "all"
    assert result.report["status"] == "passed"  # a warning is not a failure
    markdown = (result.output_dir / "report.md").read_text()
    assert f"## Warnings\n\n- {result.record.warnings[0].format()}\n" in markdown
    assert "is at chance (4 classes" in markdown
    assert "## Warnings" not in render_markdown({**report, "warnings": []})
    _print_run(result, quiet=True)
    assert f"warning: {result.record.warnings[0].format()}" in capsys.readouterr().err.replace("\n", "")


def test_with_final_steps_only_the_same_warning_comes_from_the_final_model(tiny_checkpoint, recipe_file) -> None:
    """evaluation.steps: final: the zero step has no accuracy of its own, but only an export and an
    optimize follow it, so the final model's accuracy is its accuracy: the warning lands where it did with steps: all.
    What could not be decided (finetune measured validation, its input was measured on eval) is listed."""
    result = _zeroed_run(recipe_file, "final")
    steps = result.report["steps"]
    assert steps[0]["metrics"]["accuracy"] is None and steps[0]["details"]["best_val_accuracy"] > 0.5
    assert steps[1]["metrics"]["accuracy"] is None and steps[1]["metrics"]["params_nonzero"] == 0
    assert steps[2]["metrics"]["accuracy"] is None and steps[2]["pass"] == "export"
    assert steps[3]["metrics"]["accuracy"] <= 0.375  # the final (optimized) model: always evaluated
    [warning] = result.record.warnings
    assert (warning.step, warning.pass_name, warning.kind) == (1, "zero", "at_chance")
    assert "is at chance (4 classes; its input had " in warning.message
    assert [(u.step, u.pass_name, u.kinds) for u in result.record.unchecked] == [
        (0, "finetune", ("finetune_no_gain",))]
    markdown = (result.output_dir / "report.md").read_text()
    assert "| not evaluated (evaluation.steps: final) |" in markdown
    assert f"## Not checked\n\n- {result.record.unchecked[0].format()}\n" in markdown
