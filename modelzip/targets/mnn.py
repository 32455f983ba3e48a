"""MNN: the float ONNX model converted by MNN's converter to model.mnn, run by MNN on the CPU.

fp32 keeps float weights; fp16 stores them as fp16 (``--fp16``, half the file); int8 is weight
quantization (``--weightQuantBits 8``, a quarter of the file; computed in float). The converter
always gets the float ONNX: it crashes on int4/int2 DequantizeLinear weights.

Two hazards of the MNN wheel, measured: importing ``MNN.tools`` runs ``pip install`` of a
logging SDK and sends telemetry, so the converter is called through its C extension
(``_tools.mnnconvert``) and ``MNN.tools`` is never imported (modelzip.deploy also converts in a
process of its own, offline: modelzip.offline); and the converter reports success after
printing "Converted Failed!", so success is a written, non-empty file.
"""
from __future__ import annotations

from pathlib import Path

from modelzip.target import Converted, ConvertInput, Target, TargetConfig, TargetSession
from modelzip.targets._common import captured_output, conversion_error, io_names

MODEL = "model.mnn"
FLAGS = {"fp32": [], "fp16": ["--fp16"], "int8": ["--weightQuantBits", "8"]}
FAILED = "Converted Failed"


class MnnConfig(TargetConfig):
    """fp32 | fp16 (fp16 weights) | int8 (8-bit weight quantization, no calibration)."""


class MnnTarget(Target):
    name = "mnn"
    summary = "MNN model.mnn (fp16 / int8 = weight quantization); runs in MNN on the CPU"
    Config = MnnConfig
    runtime = "MNN"
    needs = ("MNN", "_tools")  # _tools: the converter's C extension, shipped in the MNN wheel
    install = "pip install 'modelzip[mnn]'"

    def convert(self, source: ConvertInput, config: MnnConfig, out_dir: Path) -> Converted:
        import _tools  # never `MNN.tools`: see the module doc

        target = out_dir / MODEL
        argv = ["mnnconvert", "-f", "ONNX", "--modelFile", str(source.onnx), "--MNNModel", str(target),
                "--bizCode", "modelzip", *FLAGS[config.precision]]
        with captured_output() as printed:
            _tools.mnnconvert(argv)
        output = printed[0]
        if FAILED in output or not target.is_file() or target.stat().st_size == 0:
            raise conversion_error("mnn", source.onnx, output or "the converter wrote no file",
                                   "replace the op the converter names, or leave mnn out of `deploy:`")
        inputs, outputs = io_names(source.onnx)
        return Converted((MODEL,), {"converter": f"MNN {_version()} mnnconvert {' '.join(FLAGS[config.precision])}"
                                                 .rstrip(), "inputs": inputs, "outputs": outputs,
                                    "inference_precision": "high" if config.precision == "fp32" else "normal"})

    def open(self, out_dir: Path, converted: Converted, threads: int) -> TargetSession:
        return _MnnSession(out_dir / MODEL, converted, threads)


def _version() -> str:
    from importlib.metadata import version

    return version("MNN")


class _MnnSession(TargetSession):
    def __init__(self, path: Path, converted: Converted, threads: int) -> None:
        with captured_output():  # its import prints the CPU's features from C++ into our report's terminal
            import MNN.expr as expr  # MNN itself is safe; MNN.tools is the hazard
            import MNN.nn as nn

        self.expr = expr
        precision = converted.details.get("inference_precision", "high")
        manager = nn.create_runtime_manager(({"backend": "CPU", "numThread": threads, "precision": precision},))
        self.net = nn.load_module_from_file(str(path), converted.details["inputs"], converted.details["outputs"],
                                            runtime_manager=manager, shape_mutable=True)

    def predict(self, x):
        import numpy as np

        expr = self.expr
        outputs = self.net.forward([expr.const(x, list(x.shape), expr.NCHW)])
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        return [np.asarray(expr.convert(o, expr.NCHW).read() if o.data_format == expr.NC4HW4 else o.read())
                for o in outputs]
