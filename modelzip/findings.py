"""Warnings where a run's result looks broken, each with what to try (issue #13).

Computed once, after all steps, from what the pipeline already measured (no extra
measurement, no torch): a step whose accuracy fell to chance, a finetune that ended
below its input, a layer a pass left entirely zero, a pruned model slower than its input,
a final model slower than the baseline. They never change the exit code.
"""
from __future__ import annotations

from collections.abc import Sequence

from modelzip.evaluation.latency import SLOWER
from modelzip.evaluation.records import Finding, LatencyResult, Metrics, StepRecord, accuracy_noise

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


def find_problems(baseline: Metrics, steps: Sequence[StepRecord], num_classes: int | None,
                  latency: LatencyResult | None = None) -> list[Finding]:
    """Every warning for ``steps`` (in order), each step compared with its input (the step before it,
    or ``baseline``, the input model in torch, for the first). ``num_classes`` None: no chance check.
    ``latency``: the final model's against the baseline's (None: not measured)."""
    found: list[Finding] = []
    previous = baseline
    for step in steps:
        found += at_chance(step, previous, num_classes)
        found += finetune_no_gain(step, previous)
        found += zeroed_layers(step)
        found += step_slower(step)
        previous = step.metrics
    return found + final_slower(steps, latency)


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
    """A finetune that ended below its input by more than the measurement's noise (compared only on
    the same backend: torch -> torch)."""
    if step.pass_name != "finetune" or step.metrics.accuracy_backend != before.accuracy_backend:
        return []
    if step.metrics.accuracy >= before.accuracy - accuracy_noise(before.accuracy, step.metrics.eval_samples):
        return []
    pruning = step.details.get("pruning")
    if isinstance(pruning, dict):  # it also pruned: below the dense input is a cost, not a failure to train
        message = (f"finetune pruned to {_pct(pruning.get('sparsity', 0))} sparsity and ended at "
                   f"{_pct(step.metrics.accuracy)}, below its dense input's {_pct(before.accuracy)}")
        fix = "try more epochs, `distill: {teacher: input}`, or a lower sparsity"
    else:
        message = f"finetune ended at {_pct(step.metrics.accuracy)}, below its input's {_pct(before.accuracy)}"
        fix = "try a lower lr, `distill: {teacher: baseline}`, or more epochs"
    return [Finding(step.index, step.pass_name, "finetune_no_gain", message, fix)]


def zeroed_layers(step: StepRecord) -> list[Finding]:
    """Layers whose weights the pass recorded as entirely zero (``details.layer_sparsity`` of 1.0)."""
    sparsity = step.details.get("layer_sparsity")
    if not isinstance(sparsity, dict):
        return []
    return [Finding(step.index, step.pass_name, "layer_zeroed",
                    f"layer {name} is entirely zero after {step.pass_name}",
                    "add it to `ignore:` or lower its sparsity")
            for name, value in sparsity.items() if isinstance(value, (int, float)) and value >= 1.0]


def step_slower(step: StepRecord) -> list[Finding]:
    """A step whose own speed check found its result slower than its input (``details.slower_than_input``,
    recorded by prune's channel pruning)."""
    slower = step.details.get("slower_than_input")
    if not isinstance(slower, dict):
        return []
    message = (f"the pruned model runs at {slower.get('ratio', 0):.2f}x its input's speed at batch "
               f"{slower.get('batch', '?')}: {slower.get('cause', 'cause unknown')}")
    return [Finding(step.index, step.pass_name, "slower_than_input", message,
                    f"try {_coarser(slower.get('round_to'), slower.get('block'))}, or prune less "
                    "(a higher target_macs or a lower ratio)")]


def _coarser(round_to, block) -> str:
    """The rounding to try next: the CPU's block (round_to: auto) where widths were not multiples
    of it, else twice what was used."""
    block = block if isinstance(block, int) and block > 1 else 16
    if not isinstance(round_to, int) or round_to % block:
        return f"round_to: auto ({block} on this CPU)"
    return f"round_to: {2 * round_to}"


def final_slower(steps: Sequence[StepRecord], latency: LatencyResult | None) -> list[Finding]:
    """The final model is SLOWER than the baseline at data.batch_size (the verdict, not noise)."""
    pair = latency.headline if latency is not None else None
    if pair is None or pair.verdict != SLOWER or not steps:
        return []
    last = steps[-1]
    passes = {step.pass_name for step in steps}
    fix = ("magnitude pruning keeps dense shapes and brings no speedup by itself: use method: channel"
           if any(step.details.get("effect") == "masked" for step in steps) else
           "see the steps' details for the one that slowed it (prune records slower_than_input); try "
           "round_to: auto (or twice the value it chose) on prune and lowrank, fewer steps, or pruning less"
           if passes & {"prune", "lowrank"} else
           "try fewer steps, or quantize with prefer: faster")
    message = (f"the final model is SLOWER than the input model: {pair.ratio:.2f}x its speed at batch "
               f"{pair.batch} ({pair.ci_low:.2f}-{pair.ci_high:.2f})")
    return [Finding(last.index, last.pass_name, "final_slower", message, fix)]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"
