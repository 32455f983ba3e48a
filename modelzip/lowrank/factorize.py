"""Replace layers by two thinner ones when the factorized form is cheaper.

Every decomposition is the best rank-r approximation (Eckart-Young) of a
reshaped weight matrix, split as (U sqrt(S)) (sqrt(S) V^T) so both halves have
the same scale. The factorized pair is an ``nn.Sequential`` of standard layers,
which modelzip's structure manifest saves and reloads without pickles.
"""
from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modelzip.lowrank.ranks import LowRankSettings, choose_rank


@dataclass(frozen=True)
class LayerRecord:
    """What happened to one eligible layer. A layer that cannot be decomposed at all (a
    grouped conv, say) has no rank, energy or costs."""

    name: str
    kind: str  # linear | conv | conv-channel | conv-spatial
    factorized: bool
    reason: str | None = None  # why not, when not factorized
    rank: int | None = None
    full_rank: int | None = None
    energy_kept: float | None = None
    params_before: int | None = None
    params_after: int | None = None
    macs_before: int | None = None
    macs_after: int | None = None

    @property
    def decomposed(self) -> bool:
        return self.rank is not None

    def to_json(self) -> dict[str, Any]:
        """The report's per-layer entry (the keys a layer has, in a fixed order)."""
        if not self.decomposed:
            return {"name": self.name, "kind": self.kind, "factorized": self.factorized,
                    "reason": self.reason}
        out = {"name": self.name, "kind": self.kind, "rank": self.rank, "full_rank": self.full_rank,
               "energy_kept": self.energy_kept, "params_before": self.params_before,
               "params_after": self.params_after, "macs_before": self.macs_before,
               "macs_after": self.macs_after, "factorized": self.factorized}
        return out if self.factorized else {**out, "reason": self.reason}


def factorize_model(model: nn.Module, settings: LowRankSettings, input_shape: tuple[int, ...]
                    ) -> tuple[nn.Module, list[LayerRecord]]:
    """A copy of ``model`` with every eligible layer factorized, and a per-layer record."""
    model = copy.deepcopy(model).eval()
    spatial = _output_sizes(model, input_shape)
    layers = []
    for name, module in list(model.named_modules()):
        if not _eligible(name, module, settings):
            continue
        record, replacement = _factorize_layer(module, settings, spatial.get(name))
        layers.append(LayerRecord(name=name, **record))
        if replacement is not None:
            parent_name, _, child = name.rpartition(".")
            (model.get_submodule(parent_name) if parent_name else model).add_module(child, replacement)
    return model, layers


def _eligible(name: str, module: nn.Module, settings) -> bool:
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in settings.ignore):
        return False
    if isinstance(module, nn.Linear):
        return settings.linear
    return isinstance(module, nn.Conv2d) and settings.conv != "none"


def _output_sizes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Input and output spatial sizes of every Conv2d (for MACs), from one forward pass."""
    sizes: dict[str, tuple[int, ...]] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: sizes.__setitem__(n, (*i[0].shape[2:], *o.shape[2:])))
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros((1, *input_shape[1:])))
    for hook in hooks:
        hook.remove()
    return sizes


def _factorize_layer(module: nn.Module, settings, sizes) -> tuple[dict[str, Any], nn.Module | None]:
    if isinstance(module, nn.Linear):
        return _linear(module, settings)
    if module.groups != 1:
        return {"kind": "conv", "factorized": False, "reason": "grouped/depthwise convolution"}, None
    if settings.conv == "spatial":
        return _conv_spatial(module, settings, sizes)
    return _conv_channel(module, settings, sizes)


def _svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
    return u, s, vh


def _split(u, s, vh, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).float(), (root[:, None] * vh[:rank]).float()


def _record(kind: str, rank: int, full: int, s: torch.Tensor, before: tuple[int, int],
            after: tuple[int, int]) -> dict[str, Any]:
    energy = float((s[:rank] ** 2).sum() / (s ** 2).sum()) if s.numel() else 1.0
    cheaper = after[0] < before[0] and after[1] < before[1]
    return {"kind": kind, "rank": rank, "full_rank": full, "energy_kept": round(energy, 4),
            "params_before": before[1], "params_after": after[1] if cheaper else before[1],
            "macs_before": before[0], "macs_after": after[0] if cheaper else before[0],
            "factorized": cheaper,
            **({} if cheaper else {"reason": f"factorized form at rank {rank} of {full} is not cheaper"})}


def _linear(layer: nn.Linear, settings) -> tuple[dict[str, Any], nn.Module | None]:
    u, s, vh = _svd(layer.weight)
    rank = choose_rank(s, settings)
    out_f, in_f = layer.weight.shape
    bias = layer.bias is not None
    before = (in_f * out_f, in_f * out_f + out_f * bias)
    after = (rank * (in_f + out_f), rank * (in_f + out_f) + out_f * bias)
    record = _record("linear", rank, len(s), s, before, after)
    if not record["factorized"]:
        return record, None
    left, right = _split(u, s, vh, rank)
    first, second = nn.Linear(in_f, rank, bias=False), nn.Linear(rank, out_f, bias=bias)
    with torch.no_grad():
        first.weight.copy_(right)
        second.weight.copy_(left)
        if bias:
            second.bias.copy_(layer.bias)
    return record, nn.Sequential(first, second)


def _conv_channel(conv: nn.Conv2d, settings, sizes) -> tuple[dict[str, Any], nn.Module | None]:
    """k x k conv (in -> out) ~ k x k conv (in -> r) then 1 x 1 conv (r -> out)."""
    out_c, in_c, kh, kw = conv.weight.shape
    u, s, vh = _svd(conv.weight.reshape(out_c, in_c * kh * kw))
    rank = choose_rank(s, settings)
    pixels = math.prod(sizes[2:]) if sizes else 1
    bias = conv.bias is not None
    before = (out_c * in_c * kh * kw * pixels, out_c * in_c * kh * kw + out_c * bias)
    after_params = rank * in_c * kh * kw + out_c * rank + out_c * bias
    after = ((rank * in_c * kh * kw + out_c * rank) * pixels, after_params)
    record = _record("conv-channel", rank, len(s), s, before, after)
    if not record["factorized"]:
        return record, None
    left, right = _split(u, s, vh, rank)
    first = nn.Conv2d(in_c, rank, (kh, kw), conv.stride, conv.padding, conv.dilation, bias=False,
                      padding_mode=conv.padding_mode)
    second = nn.Conv2d(rank, out_c, 1, bias=bias)
    with torch.no_grad():
        first.weight.copy_(right.reshape(rank, in_c, kh, kw))
        second.weight.copy_(left.reshape(out_c, rank, 1, 1))
        if bias:
            second.bias.copy_(conv.bias)
    return record, nn.Sequential(first, second)


def _conv_spatial(conv: nn.Conv2d, settings, sizes) -> tuple[dict[str, Any], nn.Module | None]:
    """k x k conv ~ (k x 1 conv, in -> r) then (1 x k conv, r -> out), as in Jaderberg et al. 2014."""
    out_c, in_c, kh, kw = conv.weight.shape
    if kh == 1 or kw == 1 or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return {"kind": "conv-spatial", "factorized": False,
                "reason": "needs a k x k kernel (k > 1) with numeric zero padding"}, None
    # W[o, i, y, x] as a matrix with rows (i, y) and columns (o, x).
    matrix = conv.weight.permute(1, 2, 0, 3).reshape(in_c * kh, out_c * kw)
    u, s, vh = _svd(matrix)
    rank = choose_rank(s, settings)
    in_h, in_w, out_h, out_w = sizes if sizes else (1, 1, 1, 1)
    bias = conv.bias is not None
    before = (out_c * in_c * kh * kw * out_h * out_w, out_c * in_c * kh * kw + out_c * bias)
    mid_w = in_w  # the first conv pads and strides only vertically: full input width
    after = (rank * in_c * kh * out_h * mid_w + out_c * rank * kw * out_h * out_w,
             rank * in_c * kh + out_c * rank * kw + out_c * bias)
    record = _record("conv-spatial", rank, len(s), s, before, after)
    if not record["factorized"]:
        return record, None
    left, right = _split(u, s, vh, rank)  # left: (i, y) x r, right: r x (o, x)
    first = nn.Conv2d(in_c, rank, (kh, 1), (conv.stride[0], 1), (conv.padding[0], 0),
                      (conv.dilation[0], 1), bias=False)
    second = nn.Conv2d(rank, out_c, (1, kw), (1, conv.stride[1]), (0, conv.padding[1]),
                       (1, conv.dilation[1]), bias=bias)
    with torch.no_grad():
        first.weight.copy_(left.reshape(in_c, kh, rank).permute(2, 0, 1).unsqueeze(-1))
        second.weight.copy_(right.reshape(rank, out_c, kw).permute(1, 0, 2).unsqueeze(2))
        if bias:
            second.bias.copy_(conv.bias)
    return record, nn.Sequential(first, second)
