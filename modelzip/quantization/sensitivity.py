"""Accuracy-aware quantization: keep the most sensitive layers float until within budget.

Method (leave-one-out, then greedy):

1. Quantize every layer; if validation accuracy is within budget, stop.
2. Sensitivity: for each candidate layer, quantize everything but that layer and measure
   validation accuracy. That is exactly the decision the search makes (keep this layer
   float?), so it ranks layers by the accuracy they give back when kept float. The
   opposite probe (quantize only one layer) measures each layer's damage in isolation,
   but misses errors that compound downstream and costs the same N runs.
3. Keep layers float in that order, one more each try, re-measuring each combination
   (effects are not additive), until within budget or ``max_float_layers`` layers are float.

Layers that give nothing back on their own are not tried. The best result is kept whatever
happens: within budget with the fewest float layers, else the most accurate one seen.
Costs 1 + N + (max_float_layers - 1) quantize-and-evaluate runs at most.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Quantize = Callable[[tuple[str, ...]], Path]  # float layers -> quantized model
Evaluate = Callable[[Path], float]  # model -> validation accuracy


@dataclass(frozen=True)
class Trial:
    float_layers: tuple[str, ...]
    accuracy: float
    path: Path


@dataclass
class SearchResult:
    best: Trial
    float_accuracy: float
    budget: float
    sensitivity: list[dict[str, Any]] = field(default_factory=list)  # empty: not needed
    trials: int = 0

    @property
    def drop(self) -> float:
        return self.float_accuracy - self.best.accuracy

    @property
    def met(self) -> bool:
        return self.drop <= self.budget + 1e-12

    def to_json(self) -> dict[str, Any]:
        return {"float_accuracy": self.float_accuracy, "quantized_accuracy": self.best.accuracy,
                "drop": self.drop, "budget": self.budget, "met": self.met,
                "missed_by": None if self.met else self.drop - self.budget,
                "kept_float": list(self.best.float_layers), "trials": self.trials,
                "method": "leave-one-out sensitivity, then greedy" if self.sensitivity else "none needed"}


def search(quantize: Quantize, evaluate: Evaluate, *, candidates: list[str], float_accuracy: float,
           budget: float, max_float_layers: int, advance: Callable[[int], None] = lambda n=1: None,
           ) -> SearchResult:
    """Find the fewest float ``candidates`` keeping accuracy within ``budget`` (see module doc)."""
    result = SearchResult(best=Trial((), 0.0, Path()), float_accuracy=float_accuracy, budget=budget)

    def trial(float_layers: tuple[str, ...]) -> Trial:
        result.trials += 1
        path = quantize(float_layers)
        measured = Trial(float_layers, evaluate(path), path)
        advance(1)
        if _better(measured, result.best, float_accuracy, budget) or result.trials == 1:
            result.best = measured
        return measured

    base = trial(())
    if float_accuracy - base.accuracy <= budget:
        return result
    probes = {layer: trial((layer,)) for layer in candidates}
    result.sensitivity = [
        {"layer": layer, "accuracy_if_float": t.accuracy, "recovered": t.accuracy - base.accuracy}
        for layer, t in probes.items()]
    helpful = sorted((layer for layer, t in probes.items() if t.accuracy > base.accuracy),
                     key=lambda layer: -probes[layer].accuracy)  # stable: graph order on ties
    chosen: list[str] = []
    for layer in helpful[:max_float_layers]:
        chosen.append(layer)
        current = probes[layer] if len(chosen) == 1 else trial(tuple(chosen))
        if float_accuracy - current.accuracy <= budget:
            break
    return result


def _better(new: Trial, old: Trial, float_accuracy: float, budget: float) -> bool:
    def rank(t: Trial) -> tuple:
        within = float_accuracy - t.accuracy <= budget + 1e-12
        # Within budget: fewest float layers, then most accurate. Outside: most accurate first.
        return (0, len(t.float_layers), -t.accuracy) if within else (1, -t.accuracy, len(t.float_layers))

    return rank(new) < rank(old)
