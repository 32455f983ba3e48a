"""Dynamic quantization: int8 weights, activations quantized at run time (no calibration).

Suited to Linear/LSTM/attention-heavy models, whose cost is in MatMuls. Convolutions stay
float: onnxruntime's ConvInteger CPU kernel takes only uint8 weights and is usually slower
than the float convolution, which is what static quantization is for.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelzip.quantization.prepare import quiet

OP_TYPES = ("MatMul", "Attention", "LSTM", "Gather", "EmbedLayerNormalization")


@dataclass(frozen=True)
class DynamicSettings:
    per_channel: bool
    reduce_range: bool

    def describe(self) -> dict[str, Any]:
        return {
            "format": "integer ops (DynamicQuantizeLinear + MatMulInteger)",
            "activations": "uint8 asymmetric, quantized at run time",
            "weights": "int8 symmetric" + (" per-channel" if self.per_channel else " per-tensor")
                       + (" 7-bit (reduce_range)" if self.reduce_range else ""),
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "op_types": list(OP_TYPES) + ["Gemm (as MatMul + Add)"],
        }


def quantize(model_path: Path, out_path: Path, settings: DynamicSettings,
             float_nodes: Iterable[str]) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        quantize_dynamic(str(model_path), str(out_path), op_types_to_quantize=list(OP_TYPES),
                         per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                         weight_type=QuantType.QInt8, nodes_to_exclude=sorted(float_nodes))
    return out_path
