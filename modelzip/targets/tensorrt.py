"""TensorRT: a TensorRT-ready ONNX file, and where TensorRT and an NVIDIA GPU are present, the
command that builds its engine.

int8 writes an explicit-quantization QDQ model (symmetric int8 activations and per-channel
int8 weights, the only QDQ form TensorRT builds int8 engines from), calibrated on the recipe's
calibration split by onnxruntime's quantizer; fp16 and fp32 write the float ONNX (TensorRT
chooses fp16 kernels at build time, from `--fp16`). The `tensorrt` package cannot be installed
here (its wheel downloads libraries from outside the package registries) and needs an NVIDIA
GPU, so the engine is not built by modelzip: the report says so and gives the `trtexec` command
that builds and times it (`details.trtexec`).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from modelzip.target import CalibratedConfig, Converted, ConvertInput, Target
from modelzip.targets._common import io_names

MODEL = "model.onnx"
ENGINE = "model.plan"


class TensorRtConfig(CalibratedConfig):
    """fp32 | fp16 (float ONNX, fp16 chosen at engine build) | int8 (explicit QDQ, calibrated)."""


class TensorRtTarget(Target):
    name = "tensorrt"
    summary = "TensorRT-ready ONNX (int8: explicit QDQ, calibrated) and the trtexec command for its engine"
    Config = TensorRtConfig
    runtime = "tensorrt"
    needs = ("onnx", "onnxruntime")  # writing the file; building the engine is left to trtexec
    install = "pip install modelzip"

    def calibrates(self, config: TensorRtConfig) -> bool:
        return config.precision == "int8"

    def not_runnable(self) -> str | None:
        import importlib.util

        if importlib.util.find_spec("tensorrt") is None:
            return "engine not built: the `tensorrt` package is not installed here"
        return "engine not built: modelzip writes the TensorRT-ready ONNX, trtexec builds and times the engine"

    def convert(self, source: ConvertInput, config: TensorRtConfig, out_dir: Path) -> Converted:
        if config.precision == "int8":
            _quantize_qdq(source, out_dir / MODEL)
        else:
            shutil.copyfile(source.onnx, out_dir / MODEL)
        flags = {"fp32": "", "fp16": " --fp16", "int8": " --int8 --fp16"}[config.precision]
        batch = _shape_flags(source, out_dir / MODEL)
        return Converted((MODEL,), {
            "engine": "not built here (no TensorRT and NVIDIA GPU)",
            "trtexec": f"trtexec --onnx={MODEL}{flags}{batch} --saveEngine={ENGINE}",
            "quantization": "explicit QDQ, int8 symmetric activations, per-channel int8 weights"
                            if config.precision == "int8" else "none (float ONNX)",
            "outputs": io_names(source.onnx)[1]})


def _shape_flags(source: ConvertInput, model: Path) -> str:
    """trtexec's optimization profile for a dynamic batch: batch 1 to 256, tuned for the given one."""
    import onnx

    first = onnx.load(str(model), load_external_data=False).graph.input[0]
    dims = first.type.tensor_type.shape.dim
    if not dims or not dims[0].dim_param:
        return ""
    rest = "x".join(str(d) for d in source.input_shape[1:])
    name = first.name
    return (f" --minShapes={name}:1x{rest} --optShapes={name}:{source.input_shape[0]}x{rest}"
            f" --maxShapes={name}:256x{rest}")


def _quantize_qdq(source: ConvertInput, out: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    input_name = io_names(source.onnx)[0][0]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = source.calibration_batches(32)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    quantize_static(str(source.onnx), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
