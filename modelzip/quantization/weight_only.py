"""Weight-only quantization: blockwise 4- or 8-bit MatMul weights (onnxruntime's MatMulNBits).

Each column of a weight matrix is cut into blocks of ``block_size`` rows; each block has
its own scale and zero point. Activations stay float in the graph. MatMulNBits is a
com.microsoft contrib op: the model runs in onnxruntime, not in every ONNX runtime.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelzip.quantization.prepare import quiet

# MatMulNBits accuracy_level: 4 computes in int8 (activations quantized per block at run
# time); 1 dequantizes the weights and computes in fp32. Measured here with onnxruntime 1.32,
# 8-bit weights at level 1 ran ~10x slower than fp32 at batch 1, level 4 about as fast.
ACCURACY_LEVEL = {"int8": 4, "float": 1}


@dataclass(frozen=True)
class WeightOnlySettings:
    bits: int
    block_size: int
    compute: str  # int8 | float

    def describe(self) -> dict[str, Any]:
        return {
            "format": "MatMulNBits (com.microsoft)",
            "activations": "float" if self.compute == "float" else "float, int8 inside MatMulNBits",
            "weights": f"{self.bits}-bit asymmetric, blocks of {self.block_size}",
            "bits": self.bits,
            "block_size": self.block_size,
            "accuracy_level": ACCURACY_LEVEL[self.compute],
            "op_types": ["MatMul", "Gemm (as MatMul + Add)"],
        }


def quantize(model_path: Path, out_path: Path, settings: WeightOnlySettings,
             float_nodes: Iterable[str]) -> Path:
    import onnx

    with quiet():  # the import itself calls logging.basicConfig(level=INFO)
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

        config = DefaultWeightOnlyQuantConfig(block_size=settings.block_size, is_symmetric=False,
                                              bits=settings.bits,
                                              accuracy_level=ACCURACY_LEVEL[settings.compute])
        quantizer = MatMulNBitsQuantizer(onnx.load(str(model_path)), nodes_to_exclude=sorted(float_nodes),
                                         algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(out_path), use_external_data_format=False)
    return out_path
