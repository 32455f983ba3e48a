"""Warnings where a run's result looks broken, each with what to try (issue #13).

Computed once, after all steps, from what the pipeline already measured (no extra
measurement, no torch): a step whose accuracy fell to chance, a finetune that ended
below its input, a layer a pass left entirely zero, a pruned model slower than its input,
a final model slower than the baseline. They never change the exit code.

Under ``evaluation.steps: final`` intermediate steps have no eval accuracy. The checks that
compare accuracies then use what passes measured themselves on the validation split
(``recorded``: finetune's best epoch, prune's and lowrank's BatchNorm recalibration), and
what still cannot be decided is listed as ``Unchecked``, never silently dropped.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelzip.evaluation.latency import SLOWER
from modelzip.evaluation.records import Finding, LatencyResult, Metrics, StepRecord, Unchecked, accuracy_noise

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


@dataclass(frozen=True)
class Observed:
    """An accuracy known for an artifact: the pipeline's on the eval split, or one a pass recorded."""

    accuracy: float
    split: str  # "eval" or "validation"
    backend: str  # "torch" or "onnxruntime"
    samples: int | None  # None: not recorded
    where: str  # "the input model" or "passes[i].name", for messages

    @classmethod
    def of(cls, metrics: Metrics, where: str) -> Observed | None:
        if not metrics.evaluated:
            return None
        return cls(metrics.accuracy, "eval", metrics.accuracy_backend, metrics.eval_samples, where)


def observed(step: StepRecord) -> Observed | None:
    """The step's eval accuracy, else a validation accuracy its pass measured on its output, else None."""
    return Observed.of(step.metrics, _name(step)) or recorded(step)


def recorded(step: StepRecord) -> Observed | None:
    """What the pass measured on its own output: finetune's best epoch (the one it returns), or the
    statistics prune and lowrank kept after BatchNorm recalibration (first 2,000 validation images)."""
    details = step.details
    if step.pass_name == "finetune" and _number(details.get("best_val_accuracy")):
        return Observed(details["best_val_accuracy"], "validation", "torch", None, _name(step))
    bn = details.get("bn_recalibration")
    if isinstance(bn, dict) and bn.get("kept") in ("recalibrated", "previous"):
        accuracy = bn.get("accuracy_after" if bn["kept"] == "recalibrated" else "accuracy_before")
        if _number(accuracy):
            return Observed(accuracy, "validation", "torch", bn.get("accuracy_images"), _name(step))
    return None


@dataclass(frozen=True)
class Review:
    warnings: tuple[Finding, ...]
    unchecked: tuple[Unchecked, ...]


# Passes whose parity check ties their output to their input: they keep its accuracy.
KEEPS_ACCURACY = ("export", "optimize")


def find_problems(reference: Metrics, steps: Sequence[StepRecord], num_classes: int | None,
                  latency: LatencyResult | None = None) -> Review:
    """Every warning for ``steps`` (in order), each step compared with its input (the step before it,
    or ``reference``, the input model's evaluated accuracy, for the first), and the checks that could
    not be decided. ``num_classes`` None: no chance check. ``latency``: the final model's against the
    baseline's (None: not measured). Exports and optimizes keep accuracy (their parity checks tie
    their output to their input): one that was not evaluated is skipped in the chain, and a step
    followed only by such steps up to an evaluated one has that one's accuracy."""
    found: list[Finding] = []
    unchecked: list[Unchecked] = []
    before = last = Observed.of(reference, "the input model")
    skipped: list[StepRecord] = []  # steps without an accuracy since ``last``
    for step, after in zip(steps, _known(steps)):
        if after is None and step.pass_name in KEEPS_ACCURACY:
            continue
        found += at_chance(step, last, num_classes, after=after, skipped=skipped)
        found += finetune_no_gain(step, before, after=after)
        found += zeroed_layers(step)
        found += step_slower(step)
        kinds = _undecided(step, after, before, num_classes)
        if kinds:
            unchecked.append(Unchecked(step.index, step.pass_name, kinds, _reason(step, after)))
        before = after
        if after is None:
            skipped.append(step)
        else:
            last, skipped = after, []
    return Review(tuple(found + final_slower(steps, latency)), tuple(unchecked))


def _known(steps: Sequence[StepRecord]) -> list[Observed | None]:
    """``observed`` of each step; where it is None and the next step keeps accuracy (an export, an
    optimize) and has one, that one."""
    known = [observed(step) for step in steps]
    for i in reversed(range(len(steps) - 1)):
        if known[i] is None and steps[i + 1].pass_name in KEEPS_ACCURACY:
            known[i] = known[i + 1]
    return known


def _undecided(step: StepRecord, after: Observed | None, before: Observed | None,
               num_classes: int | None) -> tuple[str, ...]:
    kinds = []
    if after is None and num_classes and num_classes >= 2:
        kinds.append("at_chance")
    if step.pass_name == "finetune" and not _comparable(after, before):
        kinds.append("finetune_no_gain")
    return tuple(kinds)


def _reason(step: StepRecord, after: Observed | None) -> str:
    fix = "`--set evaluation.steps=all` checks it (finished steps come from the cache)"
    if after is None:
        return f"its accuracy was not evaluated (evaluation.steps: final) and the pass measured none; {fix}"
    return (f"its {after.split} accuracy is known, its input's on the same split is not "
            f"(evaluation.steps: final); {fix}")


def at_chance(step: StepRecord, before: Metrics | Observed | None, num_classes: int | None, *,
              after: Observed | None = None, skipped: Sequence[StepRecord] = ()) -> list[Finding]:
    """The step's accuracy (``after``, default its eval accuracy) is at chance while the last one
    known before it (``before``) was clearly above. ``skipped``: steps between the two that have no
    accuracy, any of which may be where it fell."""
    if isinstance(before, Metrics):
        before = Observed.of(before, "its input")
    after = after or Observed.of(step.metrics, _name(step))
    if not num_classes or num_classes < 2 or after is None or before is None:
        return []
    ceiling = CHANCE_MARGIN / num_classes
    if after.accuracy > ceiling or before.accuracy <= ceiling:
        return []
    what = "accuracy" if after.split == "eval" else "validation accuracy (measured by the pass)"
    fix = _CHANCE_FIX.get(step.pass_name, _GENERIC_FIX)
    if not skipped:
        message = (f"{what} {_pct(after.accuracy)} is at chance ({num_classes} classes; "
                   f"its input had {_pct(before.accuracy)})")
        return [Finding(step.index, step.pass_name, "at_chance", message, fix)]
    names = ", ".join(_name(s) for s in skipped)
    message = (f"{what} {_pct(after.accuracy)} is at chance ({num_classes} classes); the last accuracy known "
               f"before it, of {before.where}, was {_pct(before.accuracy)}, and {names} between were not "
               "evaluated (evaluation.steps: final)")
    fix = (f"`--set evaluation.steps=all` shows which step lost it (finished steps come from the cache); "
           f"if it was this one, {fix}")
    return [Finding(step.index, step.pass_name, "at_chance", message, fix)]


def finetune_no_gain(step: StepRecord, before: Metrics | Observed | None, *,
                     after: Observed | None = None) -> list[Finding]:
    """A finetune that ended below its input by more than the measurement's noise, compared only on
    the same split and backend: eval in torch (evaluation.steps: all), or the validation accuracy
    finetune kept against the one the pass before it recorded (first 2,000 validation images)."""
    if isinstance(before, Metrics):
        before = Observed.of(before, "its input")
    after = after or Observed.of(step.metrics, _name(step))
    if step.pass_name != "finetune" or not _comparable(after, before):
        return []
    samples = min(n for n in (after.samples, before.samples, 10**9) if n)
    if after.accuracy >= before.accuracy - accuracy_noise(before.accuracy, samples):
        return []
    split = "" if after.split == "eval" else " (validation)"
    pruning = step.details.get("pruning")
    if isinstance(pruning, dict):  # it also pruned: below the dense input is a cost, not a failure to train
        message = (f"finetune pruned to {_pct(pruning.get('sparsity', 0))} sparsity and ended at "
                   f"{_pct(after.accuracy)}, below its dense input's {_pct(before.accuracy)}{split}")
        fix = "try more epochs, `distill: {teacher: input}`, or a lower sparsity"
    else:
        message = f"finetune ended at {_pct(after.accuracy)}, below its input's {_pct(before.accuracy)}{split}"
        fix = "try a lower lr, `distill: {teacher: baseline}`, or more epochs"
    return [Finding(step.index, step.pass_name, "finetune_no_gain", message, fix)]


def _comparable(after: Observed | None, before: Observed | None) -> bool:
    return (after is not None and before is not None and after.split == before.split
            and after.backend == before.backend)


def _name(step: StepRecord) -> str:
    return f"passes[{step.index}].{step.pass_name}"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
