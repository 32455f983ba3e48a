"""Fake quantization in plain torch, for quantization-aware training that exports to ONNX.

torch.ao's fused fake-quant observers do not export to ONNX (torch 2.14), and nothing of them
is needed: the wrappers below only exist during training and are removed before export, so
the exported graph is the plain float model with trained weights. The grid they simulate is
the one the static quantizer writes afterwards:

- weights: int8, symmetric, one scale per output channel, ``scale = max|w| / qmax`` with
  qmax 127 (64 with reduce_range), as onnxruntime computes it (``(rmax - rmin) / (qmax - qmin)``
  on the symmetric range [-127, 127] or [-64, 64]);
- the input of each Conv/Linear: uint8 with a zero point, per tensor, from a moving-average
  min/max observer (range widened to include 0, as onnxruntime does).

Rounding is half-to-even (torch.round), like onnxruntime's QuantizeLinear. Gradients go
straight through the rounding inside the representable range and are zero where the value
is clamped (the straight-through estimator of Bengio et al. 2013, as in Jacob et al. 2018).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

ACTIVATION_QMIN, ACTIVATION_QMAX = 0, 255  # uint8, asymmetric: static mode's default
# int8, symmetric (zero point 0): scale = max|range| / 127, but values clamp to [-128, 127] as
# onnxruntime's QuantizeLinear saturates them, so training sees what the file computes.
SYMMETRIC_QMIN, SYMMETRIC_QMAX, SYMMETRIC_LEVELS = -128, 127, 127
AVERAGING_CONSTANT = 0.01  # weight of each new batch in the moving min/max (torch.ao's default)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
QUANTIZABLE = (*_CONVS, nn.Linear)


class _FakeQuantizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
        scaled = x / scale + zero_point
        ctx.save_for_backward((scaled >= qmin) & (scaled <= qmax))
        return (torch.clamp(torch.round(scaled), qmin, qmax) - zero_point) * scale

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """Round ``x`` to the grid ``(q - zero_point) * scale``, q in [qmin, qmax]; straight-through
    gradient inside the range, zero outside. ``scale``/``zero_point`` broadcast against ``x``."""
    return _FakeQuantizeSTE.apply(x, scale, zero_point, qmin, qmax)


def weight_scales(weight: Tensor, qmax: int) -> Tensor:
    """Per-output-channel symmetric scales, shaped to broadcast against ``weight``."""
    absmax = weight.detach().abs().flatten(1).amax(dim=1)
    scale = absmax / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero channel stays zero
    return scale.view(-1, *([1] * (weight.dim() - 1)))


def fake_quantize_weight(weight: Tensor, qmax: int) -> Tensor:
    zero = torch.zeros((), dtype=weight.dtype, device=weight.device)
    return fake_quantize(weight, weight_scales(weight, qmax), zero, -qmax, qmax)


class ActivationFakeQuant(nn.Module):
    """Observes a moving-average min/max while training and fake-quantizes to uint8 with it
    (``symmetric``: to int8 with zero point 0).

    The observer only moves in training mode, so validation (and the ranges handed to the
    exporter) use the ranges as trained. Buffers, so fit()'s best-epoch snapshot keeps them.
    """

    def __init__(self, averaging_constant: float = AVERAGING_CONSTANT, symmetric: bool = False) -> None:
        super().__init__()
        self.averaging_constant = averaging_constant
        self.symmetric = symmetric
        self.qmin, self.qmax = (SYMMETRIC_QMIN, SYMMETRIC_QMAX) if symmetric else (ACTIVATION_QMIN, ACTIVATION_QMAX)
        self.register_buffer("min_val", torch.zeros(()))
        self.register_buffer("max_val", torch.zeros(()))
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self._observe(x.detach())
        if not bool(self.observed):
            return x
        scale, zero_point = self.qparams()
        return fake_quantize(x, scale, zero_point, self.qmin, self.qmax)

    @torch.no_grad()
    def _observe(self, x: Tensor) -> None:
        low, high = x.min().float(), x.max().float()
        if not bool(self.observed):
            self.min_val.copy_(low)
            self.max_val.copy_(high)
            self.observed.fill_(True)
            return
        c = self.averaging_constant
        self.min_val.mul_(1 - c).add_(c * low)
        self.max_val.mul_(1 - c).add_(c * high)

    def qparams(self) -> tuple[Tensor, Tensor]:
        """(scale, zero_point) as float32 scalars; the range always contains 0 (exact zero padding)."""
        low = torch.clamp(self.min_val.detach(), max=0.0)
        high = torch.clamp(self.max_val.detach(), min=0.0)
        if self.symmetric:
            scale = (torch.maximum(-low, high) / SYMMETRIC_LEVELS).float()
            return torch.where(scale > 0, scale, torch.ones_like(scale)), torch.zeros_like(scale)
        scale = ((high - low) / (ACTIVATION_QMAX - ACTIVATION_QMIN)).float()
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero_point = torch.clamp(torch.round(ACTIVATION_QMIN - low / scale), ACTIVATION_QMIN, ACTIVATION_QMAX)
        return scale, zero_point

    def learned_range(self) -> dict[str, float] | None:
        """What the int8 graph should use for this tensor (None before any training batch)."""
        if not bool(self.observed):
            return None
        scale, zero_point = self.qparams()
        return {"scale": float(scale), "zero_point": int(zero_point), "rmin": float(self.min_val),
                "rmax": float(self.max_val)}


class QATLayer(nn.Module):
    """A Conv/Linear with fake-quantized input and weights. The wrapped layer keeps its own
    (float, trained) weight, so fit()'s zero masks still find and keep pruned zeros."""

    def __init__(self, layer: nn.Module, weight_qmax: int) -> None:
        super().__init__()
        self.layer = layer
        self.weight_qmax = weight_qmax
        self.input_quant = ActivationFakeQuant()

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_quant(x)
        weight = fake_quantize_weight(self.layer.weight, self.weight_qmax)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, weight, self.layer.bias)
        return self.layer._conv_forward(x, weight, self.layer.bias)


def insert_fake_quant(model: nn.Module, weight_qmax: int, keep_float: Callable[[str], bool]) -> nn.Module:
    """Wrap every Conv/Linear of ``model`` (in place) whose name ``keep_float`` rejects; returns
    the model (a QATLayer itself when the model is a single layer)."""
    if isinstance(model, QUANTIZABLE):
        return model if keep_float("") else QATLayer(model, weight_qmax)
    targets = [name for name, module in model.named_modules()
               if name and isinstance(module, QUANTIZABLE) and not keep_float(name)]
    for name in targets:
        parent, child = _parent(model, name)
        setattr(parent, child, QATLayer(getattr(parent, child), weight_qmax))
    return model


def fake_quant_layers(model: nn.Module) -> dict[str, QATLayer]:
    """Module name -> wrapper (the wrapper sits exactly where its layer was and will be)."""
    return {name: module for name, module in model.named_modules() if isinstance(module, QATLayer)}


def remove_fake_quant(model: nn.Module) -> nn.Module:
    """Put each wrapped layer back in its place (in place): the plain float model, trained."""
    if isinstance(model, QATLayer):
        return model.layer
    for name in [n for n, m in model.named_modules() if isinstance(m, QATLayer)]:
        parent, child = _parent(model, name)
        setattr(parent, child, getattr(parent, child).layer)
    return model


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, child = name.rpartition(".")
    return (model.get_submodule(path) if path else model), child
