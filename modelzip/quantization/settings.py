"""What the quantize pass asks the machinery for: plain, frozen values (no recipe, no context)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from modelzip.quantization.summary import QuantizeDetails


@dataclass(frozen=True)
class QuantizeSettings:
    """One quantization; fields that do not apply to ``mode`` are ignored."""

    mode: str  # static | dynamic | weight_only | qat
    exclude: tuple[str, ...] = ()  # globs on torch module or ONNX node names kept float
    # static / qat
    calibration_samples: int = 512
    calibration_batch_size: int = 64
    method: str = "minmax"  # minmax | entropy | percentile
    percentile: float = 99.999
    activations: str = "asymmetric"  # asymmetric | symmetric
    activations_given: bool = False  # set by the user (the report says why otherwise)
    # static / dynamic / qat
    per_channel: bool = True
    reduce_range: bool | None = None  # None: decided from the CPU
    # static / qat: "auto" rewrites the graph for onnxruntime's x86 int8 kernels (placement.py)
    placement: str = "auto"  # auto | none
    # weight_only
    bits: int = 4
    block_size: int = 128
    compute: str = "int8"  # int8 | float
    # accuracy search and latency
    max_accuracy_drop: float | None = None
    max_float_layers: int = 3
    prefer: str = "smaller"  # smaller | faster


@dataclass(frozen=True)
class Timing:
    """How float and quantized models are timed against each other (under `prefer: faster`)."""

    batch_size: int  # the data batch size, timed besides batch 1
    threads: int | None = None  # onnxruntime intra-op threads (None: the default)
    warmup: int = 10
    repeats: int = 50
    tolerance: float = 0.0  # stop once the speedup's interval is this tight (latency.compare_latency)


@dataclass(frozen=True)
class QuantizeResult:
    path: Path  # the ONNX model to return (quantized, or float under prefer: faster)
    details: QuantizeDetails  # the report's details for the step (to_json())


@dataclass(frozen=True)
class Progress:
    """Where the machinery reports what it is doing."""

    log: Callable[[str], None] = lambda message: None
    track: Callable[[int, str], Any] | None = None  # (total, description) -> context giving advance(n)

