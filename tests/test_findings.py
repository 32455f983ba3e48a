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
    assert [(f.step, f.kind) for f in found] == [(1, "at_chance")]


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


def test_a_run_whose_pass_zeroes_the_model_warns_in_both_reports(tiny_checkpoint, recipe_file, capsys) -> None:
    from modelzip.cli import _print_run

    registry = PassRegistry.from_entry_points()
    registry.register(ZeroPass)
    # 3 epochs learn the synthetic bands (4 classes, chance 25%); then every weight goes.
    passes = "  - finetune: {epochs: 3, lr: 0.05, augment: none}\n  - zero: {}\n  - export: {}"
    path = recipe_file(synthetic_recipe(passes, checkpoint="tiny.pt", evaluation="{latency: false}"))
    result = run_recipe(load_recipe(path, registry=registry), RunOptions(registry=registry))
    assert result.report["steps"][0]["metrics"]["accuracy"] > 0.5
    assert [(w.step, w.pass_name, w.kind) for w in result.record.warnings] == [(1, "zero", "at_chance")]
    report = json.loads((result.output_dir / "report.json").read_text())
    assert [Finding.from_json(w) for w in report["warnings"]] == list(result.record.warnings)
    assert result.report["status"] == "passed"  # a warning is not a failure
    markdown = (result.output_dir / "report.md").read_text()
    assert f"## Warnings\n\n- {result.record.warnings[0].format()}\n" in markdown
    assert "is at chance (4 classes" in markdown
    assert "## Warnings" not in render_markdown({**report, "warnings": []})
    _print_run(result, quiet=True)
    assert f"warning: {result.record.warnings[0].format()}" in capsys.readouterr().err.replace("\n", "")
