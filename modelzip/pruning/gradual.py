"""Gradual magnitude pruning while a model trains (Zhu & Gupta 2017, "To prune, or not to prune").

Sparsity rises over the optimizer steps t0..t1 on a cubic schedule::

    s_t = s_f + (s_i - s_f) · (1 - (t - t0) / (t1 - t0))³      t0 <= t <= t1,  s_i = 0

steep at first, while many weights are redundant, flat near the end, where every cut
costs more. The masks are recomputed from the current weights ``updates`` times, evenly
spaced over t0..t1 (the last at t1, exactly s_f), and the weights train in between. Pruned
weights are set back to +0.0 after every optimizer step, so momentum and weight decay
cannot revive them; masks only grow. ``schedule="oneshot"`` prunes to s_f at t0 at once.

Which layers and how: exactly ``prune: {method: magnitude}``'s rules (every Conv/Linear
weight, the final classifier included, minus ``ignore`` globs; one |w| threshold across the
layers or one per layer; exactly round(s·n) zeros), through the same code in magnitude.py.

The training loop drives a GradualPruner through its hooks (start, update, at_final) and
knows nothing of pruning. Resuming needs no saved state: the schedule is a function of the
step count, and the masks at a resumed step are recomputed from the checkpoint's weights,
whose pruned entries are exactly zero and so the smallest: the same masks.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from modelzip.pruning import PruneFailure, percent, prunable_layers
from modelzip.pruning.magnitude import covered_layers, smallest_entries, zero_fraction


@dataclass(frozen=True)
class GradualSettings:
    sparsity: float  # final fraction of the covered weights at zero, 0 < s < 1
    schedule: str = "gradual"  # gradual (cubic) | oneshot
    scope: str = "lamp"  # lamp / global: one threshold across layers on LAMP scores / |w|; layer: s in each
    ignore: tuple[str, ...] = ()  # globs on layer names kept dense
    start: float = 0.0  # fraction of the optimizer steps where pruning begins (t0)
    end: float = 0.75  # fraction where the final sparsity is reached (t1); gradual only
    updates: int = 16  # mask updates over t0..t1; gradual only


def cubic_sparsity(step: int, *, first: int, last: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta's s_t for ``step`` optimizer steps taken; ``initial`` before ``first``, ``final`` from ``last``."""
    if step >= last:
        return final
    if step <= first:
        return initial
    return final + (initial - final) * (1.0 - (step - first) / (last - first)) ** 3


def plan(settings: GradualSettings, total_steps: int) -> list[tuple[int, float]]:
    """(optimizer steps taken, sparsity) of each mask update; the last one is at the final sparsity."""
    first = round(settings.start * total_steps)
    if settings.schedule == "oneshot":
        return [(first, settings.sparsity)]
    last = max(first, round(settings.end * total_steps))
    # Rounded up, so no update lands on t0 itself (s = 0 there); in a run with fewer steps than
    # updates, the duplicates collapse.
    steps = sorted({first + math.ceil(k * (last - first) / settings.updates)
                    for k in range(1, settings.updates + 1)})
    return [(t, cubic_sparsity(t, first=first, last=last, final=settings.sparsity)) for t in steps]


class GradualPruner:
    """Masks that follow the schedule; hand ``start``, ``update`` and ``at_final`` to the training loop.

    Built on the model as it enters the pass (to check ``ignore`` before training); ``start``
    binds it to the copy being trained, by layer name.
    """

    def __init__(self, module: nn.Module, settings: GradualSettings) -> None:
        candidates, ignored = covered_layers(module, settings.ignore)
        self.names = [name for name in candidates if name not in ignored]
        if not self.names:
            raise PruneFailure("`ignore` covers every Conv/Linear layer: nothing is left to prune",
                               got=list(settings.ignore), expected="at least one layer not ignored",
                               fix="narrow the `ignore` patterns")
        self.settings, self.ignored = settings, sorted(ignored)
        self.points: list[tuple[int, float]] = []
        self.first = 0
        self.weights: list[Tensor] = []
        self.doomed: list[Tensor] | None = None  # per weight, the entries held at zero
        self.level = 0.0  # the sparsity the masks were computed for

    def start(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Plan the schedule for ``total_steps`` and bring ``model`` to its sparsity at ``step``."""
        layers = prunable_layers(model)
        self.weights = [layers[name].weight for name in self.names]
        self.points = plan(self.settings, total_steps)
        self.first = round(self.settings.start * total_steps)  # t0: pruning begins
        self.doomed, self.level = None, 0.0
        self.update(step)

    def update(self, step: int) -> None:
        """After an optimizer step: recompute the masks at a scheduled update, then zero the pruned weights."""
        level = self.sparsity_at(step)
        if level != self.level:
            self._recompute(level)
        if self.doomed is not None:
            with torch.no_grad():
                for weight, doomed in zip(self.weights, self.doomed):
                    weight.masked_fill_(doomed, 0.0)  # +0.0: a multiply would leave -0.0 (worse zip)

    def at_final(self, step: int) -> bool:
        """Whether the final sparsity has been reached after ``step`` optimizer steps."""
        return bool(self.points) and step >= self.points[-1][0]

    def sparsity_at(self, step: int) -> float:
        """The scheduled sparsity once ``step`` optimizer steps are taken (0 before the first update)."""
        reached = bisect.bisect_right(self.points, step, key=lambda point: point[0])  # every step: no scan
        return self.points[reached - 1][1] if reached else 0.0

    @torch.no_grad()
    def _recompute(self, level: float) -> None:
        if self.settings.scope in ("lamp", "global"):
            doomed = smallest_entries(self.weights, level, normalized=self.settings.scope == "lamp")
        else:
            doomed = [smallest_entries([w], level)[0] for w in self.weights]
        if self.doomed is not None:  # pruned weights are zero, so the smallest: this only guards that
            doomed = [new | old for new, old in zip(doomed, self.doomed)]
        self.doomed, self.level = doomed, level

    def details(self, model: nn.Module) -> dict[str, Any]:
        """The report's facts about ``model`` after training: schedule, per-layer and overall sparsity."""
        layers = prunable_layers(model)
        covered = [layers[name].weight for name in self.names]
        total = sum(w.numel() for w in covered)
        zeroed = sum(w.numel() - int(w.count_nonzero()) for w in covered)
        first, last = self.first, self.points[-1][0]
        return {
            "method": "magnitude", "schedule": self.settings.schedule, "scope": self.settings.scope,
            "target_sparsity": self.settings.sparsity, "sparsity": round(zeroed / total, 6),
            "weights_zeroed": zeroed, "weights_covered": total, "ignored": self.ignored,
            "first_step": first, "final_step": last,
            "mask_updates": [[t, round(s, 6)] for t, s in self.points],
            "layer_sparsity": {name: zero_fraction(layer.weight) for name, layer in layers.items()},
            "summary": self.describe(first, last),
        }

    def describe(self, first: int, last: int) -> str:
        target = percent(self.settings.sparsity, 1.0)
        if self.settings.schedule == "oneshot":
            return f"one-shot magnitude pruning to {target} at step {first}"
        return (f"gradual magnitude pruning 0 -> {target} over steps {first}..{last} "
                f"({len(self.points)} mask updates)")
