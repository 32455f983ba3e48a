"""Unstructured magnitude pruning: zero the smallest |w| of Conv/Linear weights.

The zeros are written into the plain ``weight`` tensors (no
``torch.nn.utils.prune`` re-parametrisation is left behind), so the state_dict
keeps its usual keys and the exported ONNX carries the zeros: its raw size and
latency do not change (dense shapes), its zip-compressed size falls. Biases and
BatchNorm parameters are never touched. The finetune pass keeps exact zeros at
zero, so a later fine-tune does not undo this.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from modelzip.pruning import before_after, millions, model_stats, percent, prunable_layers, resolve_patterns


def prune_magnitude(module: nn.Module, input_shape: tuple[int, ...], *, sparsity: float, scope: str,
                    layers: Mapping[str, float], ignore: Sequence[str]) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``module`` with the smallest weights zeroed, and the facts for the report.

    ``scope="lamp"`` ranks all weights of the covered layers together by their LAMP score
    (one threshold on layer-normalized magnitudes), ``"global"`` by |w| itself, ``"layer"``
    gives each layer its own threshold (the same sparsity everywhere). ``layers`` maps patterns to
    a per-layer sparsity (the first matching pattern wins; such a layer is always
    pruned on its own); ``ignore`` patterns keep layers dense.
    """
    pruned = copy.deepcopy(module)
    candidates, ignored = covered_layers(pruned, ignore)
    override = _overrides(layers, [n for n in candidates if n not in ignored])
    shared = [n for n in candidates if n not in ignored and n not in override]
    with torch.no_grad():
        if scope in ("lamp", "global"):
            _zero_smallest([candidates[n].weight for n in shared], sparsity, normalized=scope == "lamp")
        else:
            for name in shared:
                _zero_smallest([candidates[name].weight], sparsity)
        for name, layer_sparsity in override.items():
            _zero_smallest([candidates[name].weight], layer_sparsity)
    return pruned, _details(module, pruned, input_shape, candidates, ignored, sparsity, scope)


def _overrides(layers: Mapping[str, float], names: list[str]) -> dict[str, float]:
    """Per-layer sparsity from ``layers`` patterns; earlier patterns take precedence."""
    resolved = resolve_patterns(layers, names, key="layers") if layers else {}
    chosen: dict[str, float] = {}
    for pattern, hits in resolved.items():
        for name in hits:
            chosen.setdefault(name, layers[pattern])
    return chosen


def covered_layers(module: nn.Module, ignore: Sequence[str]) -> tuple[dict[str, nn.Module], set[str]]:
    """Every Conv/Linear layer by name, and the names ``ignore`` keeps dense (a PruneFailure
    for a pattern that covers none). The final classifier is a layer like any other."""
    candidates = prunable_layers(module)
    ignored = {name for hits in resolve_patterns(ignore, candidates, key="ignore").values() for name in hits}
    return candidates, ignored


def smallest_entries(weights: Sequence[torch.Tensor], fraction: float, *,
                     normalized: bool = False) -> list[torch.Tensor]:
    """Per tensor of ``weights``, a bool mask of its entries among the round(fraction * n)
    lowest-scored of all n entries together (one threshold across the tensors). The score is
    |w|, or with ``normalized`` its LAMP score (:func:`lamp_scores`)."""
    scores = torch.cat([lamp_scores(w) if normalized else w.detach().abs().flatten() for w in weights])
    count = round(fraction * scores.numel())
    doomed = torch.zeros_like(scores, dtype=torch.bool)
    if count:
        # A stable sort breaks ties (e.g. weights that are already zero) by position,
        # so the same model always loses the same weights.
        doomed[torch.argsort(scores, stable=True)[:count]] = True
    masks, offset = [], 0
    for weight in weights:
        masks.append(doomed[offset:offset + weight.numel()].view_as(weight))
        offset += weight.numel()
    return masks


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """Layer-adaptive magnitude scores (LAMP, Lee et al. 2021), flattened: w_u^2 divided by the
    sum of w_v^2 over the layer's entries at least as large. Within a layer the order is that of
    |w|; across layers the scores are comparable, so one global threshold no longer empties the
    layers whose weights are small by construction (wide fan-in): the largest weight of every
    layer scores 1. Measured on dsresnet at 90%: raw |w| left layer3 99% zero (see BENCHMARKS.md)."""
    squared = weight.detach().flatten().double() ** 2
    order = torch.argsort(squared, stable=True)
    ascending = squared[order]
    remaining = torch.flip(torch.cumsum(torch.flip(ascending, [0]), 0), [0])  # sum of this and larger
    scores = torch.empty_like(squared)
    scores[order] = ascending / remaining.clamp_min(torch.finfo(torch.float64).tiny)
    return scores


def _zero_smallest(weights: list[torch.Tensor], fraction: float, *, normalized: bool = False) -> None:
    """Zero exactly round(fraction * n) of the n entries of ``weights``, lowest score first."""
    if not weights:
        return
    for weight, doomed in zip(weights, smallest_entries(weights, fraction, normalized=normalized)):
        # masked_fill writes +0.0; multiplying by a mask would leave -0.0 for negative weights.
        weight.masked_fill_(doomed, 0.0)


def _details(original: nn.Module, pruned: nn.Module, input_shape: tuple[int, ...],
             candidates: dict[str, nn.Module], ignored: set[str], target: float,
             scope: str) -> dict[str, Any]:
    before = model_stats(original, input_shape, zipped=True)
    after = model_stats(pruned, input_shape, zipped=True)
    per_layer = {name: zero_fraction(layer.weight) for name, layer in candidates.items()}
    covered = [layer.weight for name, layer in candidates.items() if name not in ignored]
    total = sum(w.numel() for w in covered)
    zeroed = sum(w.numel() - int(w.count_nonzero()) for w in covered)
    summary = (f"{percent(zeroed, total)} of weights zeroed (masked: dense shapes, no speedup by itself); "
               f"zipped checkpoint {millions(before['state_dict_zip_bytes'])}B -> "
               f"{millions(after['state_dict_zip_bytes'])}B")
    return {"method": "magnitude", "effect": "masked", "scope": scope, "target_sparsity": target,
            "sparsity": round(zeroed / total, 6) if total else 0.0, "weights_zeroed": zeroed,
            "weights_covered": total, "layer_sparsity": per_layer, "ignored": sorted(ignored),
            **before_after(before, after), "summary": summary}


def zero_fraction(weight: torch.Tensor) -> float:
    return round(1.0 - int(weight.count_nonzero()) / weight.numel(), 6)
