"""weights: auto -- a grid per layer from measured sensitivity, within a file-size or accuracy budget.

1. Sensitivity: each Conv/Linear alone is rounded to each grid (no training) and the
   validation accuracy measured; its drop from float is that (layer, grid)'s cost.
2. Bytes: what each (layer, grid) costs in the file, by the formats lowbit_onnx.py writes
   (MatMulNBits for 2/4-bit Linear, bit-packed binary Linear, INT4/INT8 DequantizeLinear).
3. Greedy descent (as in HAWQ-style mixed precision): from all int8, repeatedly take the move
   (one layer to a smaller grid) with the least accuracy drop per byte saved, until the
   estimate fits the budget; then give bytes back: raise layers again, most accuracy per byte
   first, while the estimate still fits. Drops are treated as additive, which they are not
   exactly; QAT afterwards trains the chosen grids together.
3'. With an accuracy budget (max_accuracy_drop) instead: from all int8, repeatedly take the move
   with the least predicted drop per byte saved among those keeping the predicted drop (the sum
   of the chosen grids' drops, each at least 0: a drop measured below 0 is noise and buys
   nothing) within the budget, until none does: the smallest file the estimate allows. If all
   int8 already measures over the budget, all stays int8 (the report shows the prediction).
4. After QAT, ``verify`` measures the trained model (as the file computes it) on the same
   validation images: the drop the budget was about, reported next to the prediction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modelzip.quantization import QuantizeFailure
from modelzip.quantization.lowbit import BITS, MATMUL_NBITS_BLOCK, dequantize

CANDIDATES = ("int8", "int4", "ternary", "int2", "binary")
SENSITIVITY_SAMPLES = 1024  # validation images per (layer, grid) probe


@dataclass(frozen=True)
class AutoPlan:
    grids: dict[str, str]  # module name -> grid
    rows: list[dict[str, Any]]  # per layer: bytes and accuracy drop per grid, the choice
    budget_bytes: int | None  # the size budget, or None under an accuracy budget
    estimated_bytes: int
    float_accuracy: float
    predicted_drop: float  # the chosen grids' drops summed (each at least 0)
    max_accuracy_drop: float | None = None  # the accuracy budget, or None under a size budget

    def to_json(self) -> dict[str, Any]:
        return {"budget_bytes": self.budget_bytes, "max_accuracy_drop": self.max_accuracy_drop,
                "estimated_bytes": self.estimated_bytes, "predicted_drop": round(self.predicted_drop, 5),
                "float_accuracy": self.float_accuracy, "samples": SENSITIVITY_SAMPLES, "layers": self.rows}


@dataclass(frozen=True)
class Sensitivity:
    """What choosing needs: bytes and measured accuracy drop per (layer, grid)."""

    costs: dict[str, dict[str, int]]
    drops: dict[str, dict[str, float]]
    float_accuracy: float


def layer_bytes(weight_shape: tuple[int, ...], linear: bool, grid: str) -> int:
    """Bytes the file stores for one layer's weight on ``grid`` (values, scales, zero points)."""
    out = weight_shape[0]
    count = math.prod(weight_shape)
    if linear and grid in ("int4", "int2", "ternary"):
        block = MATMUL_NBITS_BLOCK[BITS[grid]]
        blocks = -(-(count // out) // block)
        points = out * -(-blocks * 2 // 8) if grid == "int2" else 0
        return out * blocks * (block * BITS[grid] // 8 + 4) + points
    if linear and grid == "binary":
        return -(-count // 8) + 4 * out
    return (count if grid == "int8" else -(-count // 2)) + 4 * out


def measure(model: nn.Module, data, names: list[str]) -> Sensitivity:
    """Each layer in ``names`` alone on each candidate grid: bytes, and validation accuracy lost."""
    images, labels = _validation(data)
    modules = {name: model.get_submodule(name) for name in names}
    costs = {name: {grid: layer_bytes(tuple(m.weight.shape), isinstance(m, nn.Linear), grid)
                    for grid in CANDIDATES} for name, m in modules.items()}
    float_accuracy = _accuracy(model, images, labels)
    drops = {name: {grid: float_accuracy - _accuracy_with(model, modules[name], grid, images, labels)
                    for grid in CANDIDATES} for name in names}
    return Sensitivity(costs, drops, float_accuracy)


def choose(model: nn.Module, data, names: list[str], *, budget_bytes: int | None = None,
           max_accuracy_drop: float | None = None, other_bytes: int, fixed: set[str]) -> AutoPlan:
    """The grid per layer in ``names`` within one budget (bytes, or accuracy drop); ``fixed`` layers
    stay int8; ``other_bytes``: the file's bytes besides these weights (biases, graph), estimated
    by the caller."""
    if (budget_bytes is None) == (max_accuracy_drop is None):
        raise ValueError("choose takes exactly one of budget_bytes and max_accuracy_drop")
    measured = measure(model, data, names)
    costs, drops = measured.costs, measured.drops
    chosen = {name: "int8" for name in names}
    if max_accuracy_drop is not None:
        _within_drop(chosen, costs, drops, fixed, max_accuracy_drop)
        total = other_bytes + sum(costs[n][chosen[n]] for n in names)
    else:
        total = _within_size(chosen, costs, drops, fixed, budget_bytes, other_bytes)
    rows = [{"layer": n, "grid": chosen[n], "bits": BITS[chosen[n]], "fixed_int8": n in fixed,
             "bytes": {g: costs[n][g] for g in CANDIDATES},
             "accuracy_drop": {g: round(drops[n][g], 5) for g in CANDIDATES}} for n in names]
    return AutoPlan(chosen, rows, budget_bytes, total, measured.float_accuracy,
                    _predicted(chosen, drops), max_accuracy_drop)


def _within_size(chosen, costs, drops, fixed, budget_bytes: int, other_bytes: int) -> int:
    """Descend until the bytes fit, then give some back (the module docstring, 3); the bytes."""
    names = list(chosen)
    total = other_bytes + sum(costs[n]["int8"] for n in names)
    while total > budget_bytes:
        move = _cheapest_move(chosen, costs, drops, fixed)
        if move is None:
            smallest = other_bytes + sum(min(costs[n].values()) if n not in fixed else costs[n]["int8"]
                                         for n in names)
            raise QuantizeFailure("target_size cannot be met by any choice of grids",
                                  got=f"a budget of {budget_bytes} bytes",
                                  expected=f"at least {smallest} bytes (every layer at its smallest grid)",
                                  fix="raise target_size, or free layers kept at 8 bits (int8_layers)")
        name, grid = move
        total += costs[name][grid] - costs[name][chosen[name]]
        chosen[name] = grid
    return _give_back(chosen, costs, drops, budget_bytes, total, fixed)


def _predicted(chosen: dict[str, str], drops) -> float:
    return sum(max(drops[name][grid], 0.0) for name, grid in chosen.items())


def _within_drop(chosen, costs, drops, fixed, max_drop: float) -> None:
    """Shrink while the predicted drop stays within ``max_drop`` (the module docstring, 3')."""
    predicted = _predicted(chosen, drops)  # at int8: rounding noise, all of it kept if it exceeds the budget
    while True:
        best, best_key = None, None
        for name, current in chosen.items():
            for grid in CANDIDATES if name not in fixed else ():
                saved = costs[name][current] - costs[name][grid]
                extra = max(drops[name][grid], 0.0) - max(drops[name][current], 0.0)
                if saved <= 0 or predicted + extra > max_drop:
                    continue
                key = (max(extra, 0.0) / saved, -saved)
                if best_key is None or key < best_key:
                    best, best_key = (name, grid, extra), key
        if best is None:
            return
        name, grid, extra = best
        chosen[name], predicted = grid, predicted + extra


def verify(plan: dict[str, Any], reference: nn.Module, data) -> dict[str, Any]:
    """The trained model's drop on the validation images the plan measured, vs its prediction."""
    images, labels = _validation(data)
    trained = _accuracy(reference, images, labels)
    drop = plan["float_accuracy"] - trained
    verified = {"trained_accuracy": trained, "drop": round(drop, 5), "predicted_drop": plan["predicted_drop"],
                "samples": len(labels), "model": "the trained low-bit model as the file computes it"}
    if plan.get("max_accuracy_drop") is not None:
        verified["within_budget"] = drop <= plan["max_accuracy_drop"]
    return verified


def _cheapest_move(chosen, costs, drops, fixed) -> tuple[str, str] | None:
    """The (layer, smaller grid) losing the least accuracy per byte saved; ties: the most bytes."""
    best, best_key = None, None
    for name, current in chosen.items():
        if name in fixed:
            continue
        for grid in CANDIDATES:
            saved = costs[name][current] - costs[name][grid]
            if saved <= 0:
                continue
            key = (max(drops[name][grid] - drops[name][current], 0.0) / saved, -saved)
            if best_key is None or key < best_key:
                best, best_key = (name, grid), key
    return best


def _give_back(chosen, costs, drops, budget: int, total: int, fixed: set[str]) -> int:
    """Move layers to grids that lose less accuracy (usually more bytes) while the budget holds."""
    improved = True
    while improved:
        improved = False
        options = []
        for name, current in chosen.items():
            for grid in CANDIDATES if name not in fixed else ():
                extra, gain = costs[name][grid] - costs[name][current], drops[name][current] - drops[name][grid]
                if gain > 0 and total + extra <= budget:
                    options.append((gain / max(extra, 1), name, grid, extra))
        if options:
            _, name, grid, extra = max(options)
            chosen[name], total, improved = grid, total + extra, True
    return total


def _validation(data) -> tuple[torch.Tensor, torch.Tensor]:
    split = "validation" if len(data.validation) else "train"
    images, labels, count = [], [], 0
    for x, y in data.batches(split, 256):
        images.append(x)
        labels.append(y)
        count += len(x)
        if count >= SENSITIVITY_SAMPLES:
            break
    if not images:
        raise QuantizeFailure("weights: auto measures sensitivity on validation images, but there are none",
                              fix="set data.val_samples > 0")
    return torch.cat(images)[:SENSITIVITY_SAMPLES], torch.cat(labels)[:SENSITIVITY_SAMPLES]


@torch.no_grad()
def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    correct = sum(int((model(x).argmax(-1) == y).sum()) for x, y in zip(images.split(256), labels.split(256)))
    return correct / len(labels)


@torch.no_grad()
def _accuracy_with(model: nn.Module, layer: nn.Module, grid: str, images, labels) -> float:
    """Validation accuracy with ``layer``'s weight rounded to ``grid`` (restored afterwards)."""
    original = layer.weight.detach().clone()
    layer.weight.copy_(dequantize(original, grid))
    try:
        return _accuracy(model, images, labels)
    finally:
        layer.weight.copy_(original)
