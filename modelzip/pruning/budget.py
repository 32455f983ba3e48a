"""``target_macs: auto``: the smallest MACs fraction whose model stays within an accuracy budget.

A bisection over ``target_macs`` in ``[low, high]``. Each trial is expensive (prune, a short
fine-tune, a validation pass), so the caller supplies it as ``measure(target) -> Measured``
and this module only decides where to look and what was found; it imports no torch and
never sees the recipe or the context.

Order: ``high`` first (if even the mildest pruning breaks the budget, nothing will),
then ``low`` (if the harshest one keeps it, stop there), then ``steps`` halvings of the
interval between the smallest feasible and the largest infeasible target. At most
``steps + 2`` trials; the interval ends ``(high - low) / 2**steps`` wide.

Bisection assumes accuracy falls as fewer MACs are kept. When it does not (a short
fine-tune is noisy), the result is still the smallest feasible target *tried*: every
trial is kept, so the report shows where the assumption failed.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

DECIMALS = 3  # targets are rounded to 0.001: finer differences are below what pruning resolves


@dataclass(frozen=True)
class Measured:
    """What one trial at a target gave (``payload``: the model, kept only for the chosen trial)."""

    macs_kept: float  # fraction of the input's MACs the pruned model keeps (<= target)
    pruned_accuracy: float  # validation accuracy right after pruning
    accuracy: float  # validation accuracy after the short fine-tune
    seconds: float = 0.0
    payload: Any = None


@dataclass(frozen=True)
class Trial:
    target_macs: float
    measured: Measured
    drop: float  # reference accuracy minus ``measured.accuracy`` (negative: it improved)
    feasible: bool  # drop <= the budget

    def to_json(self) -> dict[str, Any]:
        m = self.measured
        return {"target_macs": self.target_macs, "macs_kept": round(m.macs_kept, 4),
                "val_accuracy_pruned": round(m.pruned_accuracy, 4), "val_accuracy": round(m.accuracy, 4),
                "drop": round(self.drop, 4), "feasible": self.feasible, "seconds": round(m.seconds, 1)}


@dataclass(frozen=True)
class BudgetSearch:
    reference: float  # the input model's validation accuracy
    max_drop: float
    trials: tuple[Trial, ...]  # in the order they ran

    @property
    def chosen(self) -> Trial | None:
        """The smallest feasible target tried; None when no trial kept the budget."""
        feasible = [t for t in self.trials if t.feasible]
        return min(feasible, key=lambda t: t.target_macs) if feasible else None

    @property
    def best(self) -> Trial:
        """The most accurate trial (what a failed search reports as the nearest miss)."""
        return max(self.trials, key=lambda t: (t.measured.accuracy, t.target_macs))


def search_budget(measure: Callable[[float], Measured], *, reference: float, max_drop: float,
                  low: float, high: float, steps: int,
                  log: Callable[[str], None] = lambda message: None) -> BudgetSearch:
    """Bisect ``target_macs`` in ``[low, high]`` for the smallest one within ``max_drop`` of
    ``reference`` (see the module docstring). Only the chosen trial keeps its payload: the
    others' models are dropped as soon as a smaller feasible one is found."""
    trials: dict[float, Trial] = {}  # by target, in the order they ran
    kept: dict[float, Any] = {}  # the payload of the smallest feasible target so far

    def trial(target: float) -> Trial:
        target = round(target, DECIMALS)
        if target in trials:
            return trials[target]
        measured = measure(target)
        drop = reference - measured.accuracy
        # The tolerance keeps an exact-budget drop (0.9 - 0.89 in floats) feasible.
        trials[target] = Trial(target, replace(measured, payload=None), drop, drop <= max_drop + 1e-9)
        if trials[target].feasible and all(target < smallest for smallest in kept):
            kept.clear()
            kept[target] = measured.payload
        log(describe(trials[target], len(trials)))
        return trials[target]

    if trial(high).feasible and not trial(low).feasible:
        feasible, infeasible = round(high, DECIMALS), round(low, DECIMALS)
        for _ in range(steps):
            middle = round((feasible + infeasible) / 2, DECIMALS)
            if middle in (feasible, infeasible):  # the interval is down to the rounding
                break
            if trial(middle).feasible:
                feasible = middle
            else:
                infeasible = middle
    ordered = tuple(Trial(t.target_macs, replace(t.measured, payload=kept[t.target_macs]), t.drop, t.feasible)
                    if t.target_macs in kept else t for t in trials.values())
    return BudgetSearch(reference, max_drop, ordered)


def describe(trial: Trial, number: int) -> str:
    """One log line per trial."""
    m = trial.measured
    verdict = "within budget" if trial.feasible else "over budget"
    return (f"trial {number}: target_macs {trial.target_macs:g} (kept {m.macs_kept:.1%}): "
            f"val {m.pruned_accuracy:.2%} after pruning, {m.accuracy:.2%} after fine-tuning, "
            f"drop {pp(trial.drop)}: {verdict} ({m.seconds:.0f} s)")


def pp(fraction: float) -> str:
    """An accuracy difference in percentage points: 0.0096 -> '0.96 pp' (0.96 must not read as 1.0)."""
    return f"{fraction * 100:.2f} pp"
