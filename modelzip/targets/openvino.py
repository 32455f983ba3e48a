"""OpenVINO: the ONNX model as OpenVINO IR (model.xml + model.bin), run by openvino on the CPU.

fp32 keeps float weights; fp16 stores them as fp16 (halves model.bin; computed in f32 here);
int8 quantizes the float model with NNCF, calibrated on the recipe's calibration split. Every
precision runs with the f32 inference hint: on CPUs with avx512_bf16 OpenVINO computes in bf16
by default, which moved the CNN's logits by 6e-2 here, so parity would measure bf16, not the
conversion. The report says which precision ran (details.inference_precision).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from modelzip.target import CalibratedConfig, Converted, ConvertInput, Target, TargetSession
from modelzip.targets._common import conversion_error, io_names

XML, BIN = "model.xml", "model.bin"
INFERENCE_PRECISION = "f32"


class OpenVinoConfig(CalibratedConfig):
    """fp32 | fp16 | int8 (NNCF post-training quantization on the calibration split)."""


class OpenVinoTarget(Target):
    name = "openvino"
    summary = "OpenVINO IR (model.xml + model.bin); int8 by NNCF, calibrated; runs in openvino on the CPU"
    Config = OpenVinoConfig
    runtime = "openvino"
    needs = ("openvino",)
    install = "pip install 'modelzip[openvino]'"

    def needs_for(self, config: OpenVinoConfig) -> tuple[str, ...]:
        return ("openvino", "nncf") if config.precision == "int8" else ("openvino",)

    def calibrates(self, config: OpenVinoConfig) -> bool:
        return config.precision == "int8"

    def convert(self, source: ConvertInput, config: OpenVinoConfig, out_dir: Path) -> Converted:
        import openvino as ov

        try:
            model = ov.convert_model(str(source.onnx))
        except Exception as exc:  # OpConversionFailure and friends: the message names the op
            raise conversion_error("openvino", source.onnx, f"{type(exc).__name__}: {exc}",
                                   "replace the op in the model, or leave openvino out of `deploy:`") from exc
        details: dict[str, Any] = {"converter": f"openvino {ov.__version__}",
                                   "inference_precision": INFERENCE_PRECISION,
                                   "dynamic_batch": model.inputs[0].get_partial_shape()[0].is_dynamic}
        if config.precision == "int8":
            import nncf

            images = list(source.calibration_batches(1))
            model = nncf.quantize(model, nncf.Dataset(images), subset_size=len(images))
            details["converter"] += f", nncf {nncf.__version__} ({len(images)} calibration images)"
        ov.save_model(model, str(out_dir / XML), compress_to_fp16=config.precision == "fp16")
        details["outputs"] = io_names(source.onnx)[1]
        return Converted((XML, BIN), details)

    def open(self, out_dir: Path, converted: Converted, threads: int) -> TargetSession:
        return _OpenVinoSession(out_dir / XML, threads)


class _OpenVinoSession(TargetSession):
    def __init__(self, xml: Path, threads: int) -> None:
        import openvino as ov

        # One stream and `threads` threads: the same CPU onnxruntime gets in the comparison.
        self.compiled = ov.Core().compile_model(str(xml), "CPU", {
            "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION, "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()
        self.outputs = list(self.compiled.outputs)

    def predict(self, x):
        results = self.request.infer({0: x})
        return [results[output] for output in self.outputs]
