"""Warnings where a run's result looks broken, each with what to try (issue #13).

Computed once, after all steps, from what the pipeline already measured (no extra
measurement, no torch): a step whose accuracy fell to chance, a finetune that ended
below its input, a layer a pass left entirely zero. They never change the exit code.
"""
from __future__ import annotations

from collections.abc import Sequence

from modelzip.evaluation.records import Finding, Metrics, StepRecord

# "At chance": at most 1.5x the accuracy of guessing (15% with 10 classes, 37.5% with 4), so a
# model that predicts one class, or a near-random one, is caught while a weak but working one is not.
CHANCE_MARGIN = 1.5

_CHANCE_FIX = {
    "prune": "try a lower sparsity (or ratio), or `finetune` after it with more epochs",
    "lowrank": "try a higher energy or rank_ratio, or `finetune` after it with more epochs",
    "quantize": "try `exclude:` for the sensitive layers, more calibration_samples, or mode: qat",
    "finetune": "try a lower lr, or more epochs",
}
_GENERIC_FIX = "compare its parameters with the step before it; try a milder setting"


def find_problems(baseline: Metrics, steps: Sequence[StepRecord], num_classes: int | None) -> list[Finding]:
    """Every warning for ``steps`` (in order), each step compared with its input (the step before it,
    or ``baseline``, the input model in torch, for the first). ``num_classes`` None: no chance check."""
    found: list[Finding] = []
    previous = baseline
    for step in steps:
        found += at_chance(step, previous, num_classes)
        found += finetune_no_gain(step, previous)
        found += zeroed_layers(step)
        previous = step.metrics
    return found


def at_chance(step: StepRecord, before: Metrics, num_classes: int | None) -> list[Finding]:
    """The step's accuracy is at chance while its input's was clearly above it."""
    if not num_classes or num_classes < 2:
        return []
    ceiling = CHANCE_MARGIN / num_classes
    if step.metrics.accuracy > ceiling or before.accuracy <= ceiling:
        return []
    message = (f"accuracy {_pct(step.metrics.accuracy)} is at chance ({num_classes} classes; "
               f"its input had {_pct(before.accuracy)})")
    return [Finding(step.index, step.pass_name, "at_chance", message,
                    _CHANCE_FIX.get(step.pass_name, _GENERIC_FIX))]


def finetune_no_gain(step: StepRecord, before: Metrics) -> list[Finding]:
    """A finetune that ended below its input (compared only on the same backend: torch -> torch)."""
    if step.pass_name != "finetune" or step.metrics.accuracy_backend != before.accuracy_backend:
        return []
    if step.metrics.accuracy >= before.accuracy:
        return []
    message = f"finetune ended at {_pct(step.metrics.accuracy)}, below its input's {_pct(before.accuracy)}"
    return [Finding(step.index, step.pass_name, "finetune_no_gain", message,
                    "try a lower lr, `distill: {teacher: baseline}`, or more epochs")]


def zeroed_layers(step: StepRecord) -> list[Finding]:
    """Layers whose weights the pass recorded as entirely zero (``details.layer_sparsity`` of 1.0)."""
    sparsity = step.details.get("layer_sparsity")
    if not isinstance(sparsity, dict):
        return []
    return [Finding(step.index, step.pass_name, "layer_zeroed",
                    f"layer {name} is entirely zero after {step.pass_name}",
                    "add it to `ignore:` or lower its sparsity")
            for name, value in sparsity.items() if isinstance(value, (int, float)) and value >= 1.0]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"
