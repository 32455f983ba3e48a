"""Sub-8-bit weights in torch: the grids, quantization-aware training, and the trained codes.

One grid per layer, one scale per output channel (``w ≈ value * scale``, ``value`` a small
integer). The formats that lowbit_onnx.py writes store exactly these values and scales, so
the file computes what the torch model trained with:

- int8:    symmetric, value in [-127, 127], scale = max|w| / 127 (onnxruntime's own grid);
- int4:    symmetric, value in [-7, 7], scale = max|w| / 7 (one code of 16 unused: symmetric
           keeps 0 exact without a zero point, which int4 containers and MatMulNBits' default share);
- int2:    asymmetric, code in [0, 3] with a per-channel zero point, range [min w, max w] widened
           to contain 0; value = code - zero point. Symmetric 2-bit would leave 3 levels, i.e. ternary;
- ternary: TWN (Li & Liu 2016): threshold 0.7 * mean|w|, value in {-1, 0, +1}, scale = mean of the
           |w| above the threshold (the least-squares scale for that support);
- binary:  XNOR-Net (Rastegari et al. 2016): value = sign(w) (0 counts as +1), scale = mean|w|,
           the least-squares scale for sign codes.

Training rounds in the forward pass and passes gradients straight through to the float
(latent) weight (the straight-through estimator, BinaryConnect / Bengio et al. 2013). The
scale is recomputed from the latent weight at every step and not differentiated.
After training the latent weights are replaced by the quantized ones ("baked"), so the float
export of the model is already the low-bit model, and ``Codes`` carry the integer values.

Activations: float (weight-only), or int8 fake-quantized at each quantized layer's input, with
the int8 QAT machinery's moving min/max observer (qat_modules.ActivationFakeQuant): asymmetric
(uint8, zero point) or symmetric (int8, zero point 0). The trained range is kept per layer
(``InputRange``); the file quantizes and dequantizes that input with it (lowbit_onnx.py).
"""
from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from modelzip.quantization import QuantizeFailure
from modelzip.quantization.qat_modules import QUANTIZABLE, ActivationFakeQuant

SEED_OFFSET = 130_003  # low-bit QAT's own random stream, apart from other passes
BITS = {"int8": 8, "int4": 4, "int2": 2, "ternary": 2, "binary": 1}  # storage bits (ternary: 2-bit codes)
IDEAL_BITS = {"int8": 8.0, "int4": 4.0, "int2": 2.0, "ternary": float(np.log2(3)), "binary": 1.0}
TWN_THRESHOLD = 0.7  # TWN's delta = 0.7 * mean|w|: the approximate optimum for Gaussian/uniform weights
# A Linear on a 4- or 2-bit grid runs as MatMulNBits (accuracy_level 4), in blocks of this many
# rows per scale. Measured with onnxruntime 1.32 (K=3136, N=256, 1 thread): 2-bit at block 256
# takes a slow path (2.57 ms at batch 1, exact float arithmetic), at block 128 its int8 kernel
# (0.018 ms; fp32 MatMul 0.048 ms); 4-bit at 256 runs the int8 kernel (0.017 ms). Block 128 costs
# 32/128 = 0.25 bit per weight in scales, block 256 half that.
MATMUL_NBITS_BLOCK = {4: 256, 2: 128}
# The int8 kernel rounds its input to int8, symmetric, one scale per block along K: simulating
# exactly that matched onnxruntime to 3e-6 (4-bit) and 8e-7 (2-bit). Training and the parity
# reference simulate it, so they see what runs.
KERNEL_INT8_INPUT = frozenset({"int4", "int2", "ternary"})
ACTIVATIONS = ("float", "asymmetric", "symmetric")


@dataclass(frozen=True)
class InputRange:
    """A layer's int8 input grid as trained: ``x ≈ (q - zero_point) * scale``, q in [qmin, qmax]."""

    scale: float
    zero_point: int
    symmetric: bool  # int8 with zero point 0; else uint8

    @property
    def limits(self) -> tuple[int, int]:
        return (-128, 127) if self.symmetric else (0, 255)

    def to_json(self) -> dict[str, Any]:
        return {"dtype": "int8" if self.symmetric else "uint8", "scale": self.scale, "zero_point": self.zero_point}


@dataclass(frozen=True)
class Codes:
    """One layer's trained weight, exactly: ``weight == values * scale`` per output channel (axis 0)."""

    grid: str  # int8 | int4 | int2 | ternary | binary
    values: np.ndarray  # int8, the torch weight's shape: code - zero point
    scale: np.ndarray  # float32 [out_channels]
    zero_point: np.ndarray | None  # uint8 [out_channels], int2 only (codes = values + zero_point)
    activation: InputRange | None = None  # the input's trained int8 grid; None: float input

    @property
    def bits(self) -> int:
        return BITS[self.grid]


def quantize(weight: Tensor, grid: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """(values, per-channel scale [C], zero point [C] or None) of ``weight`` on ``grid``; no gradient."""
    w = weight.detach().float().flatten(1)
    if grid in ("int8", "int4"):
        qmax = 127 if grid == "int8" else 7
        scale = _positive(w.abs().amax(dim=1) / qmax)
        return torch.clamp(torch.round(w / scale[:, None]), -qmax, qmax).view_as(weight), scale, None
    if grid == "int2":
        low = torch.clamp(w.amin(dim=1), max=0.0)
        high = torch.clamp(w.amax(dim=1), min=0.0)
        scale = _positive((high - low) / 3)
        zero_point = torch.clamp(torch.round(-low / scale), 0, 3)
        codes = torch.clamp(torch.round(w / scale[:, None]) + zero_point[:, None], 0, 3)
        return (codes - zero_point[:, None]).view_as(weight), scale, zero_point
    if grid == "ternary":
        magnitude = w.abs()
        support = magnitude > TWN_THRESHOLD * magnitude.mean(dim=1, keepdim=True)
        count = support.sum(dim=1)
        scale = _positive((magnitude * support).sum(dim=1) / count.clamp(min=1))
        return (torch.sign(w) * support).view_as(weight), scale, None
    if grid == "binary":
        values = torch.where(w >= 0, 1.0, -1.0)
        return values.view_as(weight), _positive(w.abs().mean(dim=1)), None
    raise ValueError(f"unknown weight grid {grid!r}; expected one of {sorted(BITS)}")


def _positive(scale: Tensor) -> Tensor:
    """An all-zero channel keeps scale 1 (its values are 0), so nothing divides by zero."""
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def dequantize(weight: Tensor, grid: str) -> Tensor:
    values, scale, _ = quantize(weight, grid)
    return (values * scale.view(-1, *([1] * (weight.dim() - 1)))).to(weight.dtype)


def input_block(grid: str) -> int:
    return MATMUL_NBITS_BLOCK[BITS[grid]]


def round_input_blocks(x: Tensor, block: int) -> Tensor:
    """``x`` rounded as MatMulNBits' int8 kernel rounds its input (see KERNEL_INT8_INPUT), with a
    straight-through gradient."""
    k = x.shape[-1]
    padded = F.pad(x.detach(), (0, -k % block)).unflatten(-1, (-1, block))
    absmax = padded.abs().amax(dim=-1, keepdim=True)
    absmax = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    # The kernel multiplies by 127 / max rather than dividing by the scale: on inputs already on an
    # int8 grid (int8 activations) the two round differently often enough to matter.
    rounded = (torch.round(padded * (127 / absmax)) * (absmax / 127)).flatten(-2)[..., :k]
    return x + (rounded - x).detach()


def _kernel_rounds_input(layer: nn.Module, grid: str) -> bool:
    return isinstance(layer, nn.Linear) and grid in KERNEL_INT8_INPUT


class LowBitLayer(nn.Module):
    """A Conv/Linear whose weight is rounded to ``grid`` in the forward pass, with a
    straight-through gradient to the wrapped layer's own (latent, float) weight, so fit()'s
    zero masks and checkpoints see the layer as usual."""

    def __init__(self, layer: nn.Module, grid: str, activations: str = "float") -> None:
        super().__init__()
        self.layer, self.grid = layer, grid
        self.input_quant = None if activations == "float" else ActivationFakeQuant(
            symmetric=activations == "symmetric")

    def forward(self, x: Tensor) -> Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        latent = self.layer.weight
        weight = latent + (dequantize(latent, self.grid) - latent).detach()
        if isinstance(self.layer, nn.Linear):
            if self.grid in KERNEL_INT8_INPUT:
                x = round_input_blocks(x, input_block(self.grid))
            return F.linear(x, weight, self.layer.bias)
        return self.layer._conv_forward(x, weight, self.layer.bias)


class KernelInput(nn.Module):
    """A baked Linear behind the input rounding of its runtime kernel: the parity reference."""

    def __init__(self, layer: nn.Linear, block: int) -> None:
        super().__init__()
        self.layer, self.block = layer, block

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(round_input_blocks(x, self.block))


class QuantizedInput(nn.Module):
    """A baked layer behind its trained int8 input grid (what the file's QuantizeLinear and
    DequantizeLinear compute): the parity reference."""

    def __init__(self, layer: nn.Module, grid: InputRange) -> None:
        super().__init__()
        self.layer, self.grid = layer, grid

    def forward(self, x: Tensor) -> Tensor:
        # onnxruntime's order: round(x / scale), then + zero point (training adds first; a tie can differ)
        scale, zero_point = self.grid.scale, float(self.grid.zero_point)
        codes = torch.clamp(torch.round(x / scale) + zero_point, *self.grid.limits)
        return self.layer((codes - zero_point) * scale)


# --------------------------------------------------------------------------- which layer gets which grid


def plan(model: nn.Module, grid: str, int8_layers: tuple[str, ...] | None,
         exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Module name -> grid for every Conv/Linear not excluded. ``int8_layers``: globs kept at 8 bits;
    None = the first and last such layer (the input and the logits are the most sensitive)."""
    names = layer_names(model, exclude)
    eight = {names[0], names[-1]} if int8_layers is None else kept_int8(names, int8_layers)
    return {name: "int8" if name in eight else grid for name in names}


def layer_names(model: nn.Module, exclude: tuple[str, ...] = ()) -> list[str]:
    """The Conv/Linear modules to quantize, in module order."""
    names = [name for name, module in model.named_modules() if name and isinstance(module, QUANTIZABLE)
             and not _matches(name, exclude)]
    if not names:
        raise QuantizeFailure("the model has no Conv or Linear layer to quantize",
                              got=type(model).__name__, expected="a model with Conv/Linear layers")
    return names


def kept_int8(names: list[str], int8_layers: tuple[str, ...]) -> set[str]:
    """The layers ``int8_layers`` globs name; a glob naming none is a mistake."""
    unmatched = [p for p in int8_layers if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise QuantizeFailure(f"int8_layers pattern {unmatched[0]!r} matches no Conv/Linear layer",
                              got=unmatched[0], expected="one of " + ", ".join(names[:12]),
                              fix="use a torch module name or glob from the list above")
    return {n for n in names if _matches(n, int8_layers)}


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


# --------------------------------------------------------------------------- training


@dataclass
class Trained:
    module: Any  # the torch model with baked (quantized) weights: what is exported
    reference: Any  # module with the runtime kernels' input rounding: the fake-quant forward, for parity
    codes: dict[str, Codes]  # module name -> its trained codes
    result: Any  # fit()'s FitResult
    distilled: bool


def train(module, data, settings, objective, grids: dict[str, str], hooks=None,
          activations: str = "float") -> Trained:
    """Quantization-aware training of a copy of ``module`` with ``settings`` (TrainSettings) through
    the shared loop, then bake. ``activations``: one of ACTIVATIONS. Raises QuantizeFailure without
    training images, TeacherMismatch, NonFiniteLoss (as fit() does)."""
    from modelzip.finetuning.distill import check_objective
    from modelzip.finetuning.loop import fit
    from modelzip.finetuning.train import first_images

    if len(data.train) == 0:
        raise QuantizeFailure("mode qat needs training images, but the training split is empty",
                              fix="raise data.limit_train")
    model = _wrap(copy.deepcopy(module), grids, activations)
    check_objective(objective, model, first_images(data))
    result = fit(model, data, settings, objective, hooks)
    model, codes = bake(model.cpu().eval())
    return Trained(model, reference(model, codes), codes, result, objective.distills)


def reference(baked: nn.Module, codes: dict[str, Codes]) -> nn.Module:
    """A copy of ``baked`` computing what the file computes: QuantizedInput where an input is
    int8, then KernelInput where the runtime kernel rounds its input again."""
    model = copy.deepcopy(baked)
    for name, layer_codes in codes.items():
        parent, child = _parent(model, name)
        layer = getattr(parent, child)
        if _kernel_rounds_input(layer, layer_codes.grid):
            layer = KernelInput(layer, input_block(layer_codes.grid))
        if layer_codes.activation is not None:
            layer = QuantizedInput(layer, layer_codes.activation)
        setattr(parent, child, layer)
    return model.eval()


def _wrap(model: nn.Module, grids: dict[str, str], activations: str = "float") -> nn.Module:
    if activations not in ACTIVATIONS:
        raise ValueError(f"unknown activations {activations!r}; expected one of {ACTIVATIONS}")
    for name, grid in grids.items():
        parent, child = _parent(model, name)
        setattr(parent, child, LowBitLayer(getattr(parent, child), grid, activations))
    return model


@torch.no_grad()
def bake(model: nn.Module) -> tuple[nn.Module, dict[str, Codes]]:
    """Unwrap every LowBitLayer (in place), its weight replaced by the quantized one; the codes."""
    codes: dict[str, Codes] = {}
    for name in [n for n, m in model.named_modules() if isinstance(m, LowBitLayer)]:
        parent, child = _parent(model, name)
        wrapper = getattr(parent, child)
        layer = wrapper.layer
        values, scale, zero_point = quantize(layer.weight, wrapper.grid)
        layer.weight.copy_(dequantize(layer.weight, wrapper.grid))
        codes[name] = Codes(wrapper.grid, values.cpu().numpy().astype(np.int8),
                            scale.cpu().numpy().astype(np.float32),
                            None if zero_point is None else zero_point.cpu().numpy().astype(np.uint8),
                            _input_range(wrapper.input_quant))
        setattr(parent, child, layer)
    return model, codes


def _input_range(observer: ActivationFakeQuant | None) -> InputRange | None:
    """The trained input grid; None for float inputs, or an observer that saw no batch (the layer
    never ran in training: its input stays float, in training as in the file)."""
    if observer is None or not bool(observer.observed):
        return None
    scale, zero_point = observer.qparams()
    return InputRange(float(scale), int(zero_point), observer.symmetric)


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, child = name.rpartition(".")
    return (model.get_submodule(path) if path else model), child
