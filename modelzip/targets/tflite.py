"""TFLite: the float torch model converted by litert-torch to model.tflite, run by ai-edge-litert.

The converter reads PyTorch, so this target converts from the last float torch model (a
torch.export program, modelzip.deploy.program), not from ONNX. fp32 keeps float weights; fp16
stores them as fp16 (ai-edge-quantizer's float casting, half the file; computed in fp32); int8 is
full-integer: PyTorch 2 export quantization (prepare_pt2e/convert_pt2e with litert-torch's
quantizer: per-channel symmetric int8 weights, int8 activations calibrated on the calibration
split), and the file's input and output are int8 too (the session quantizes the images with the
file's own scale and zero point, and dequantizes the outputs).

litert-torch cannot live in modelzip's venv (it pins xdsl==0.28.0, hence typing-extensions<4.13;
modelzip's pydantic>=2.12 needs >=4.14), so it has a venv of its own (`make tflite-env`: the
sibling ``<venv>-tflite`` of the running venv, or $MODELZIP_TFLITE_PYTHON), created at install
time, never at run time; tflite_convert.py runs there, offline. The runtime, ai-edge-litert, is
the `[tflite]` extra of modelzip's own venv.

Layout: the file takes NCHW float images (the torch model's layout; litert-torch inserts the
transposes). Batch: litert-torch 0.10 cannot lower a dynamic batch through a flatten, so the file
holds one signature per batch size measured (1 and data.batch_size), weights shared; a shorter
batch is padded to the next signature.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from modelzip.target import CalibratedConfig, Converted, ConvertInput, SourceKind, Target, TargetSession
from modelzip.targets._common import MESSAGE_CHARS, conversion_error, io_names

MODEL = "model.tflite"
PYTHON_ENV = "MODELZIP_TFLITE_PYTHON"  # the converter venv's python, where it is not the default
SCRIPT = Path(__file__).with_name("tflite_convert.py")


class TfliteConfig(CalibratedConfig):
    """fp32 | fp16 (fp16 weights) | int8 (full-integer, calibrated on the calibration split)."""


def converter_python() -> Path:
    """The converter venv's python: $MODELZIP_TFLITE_PYTHON, else ``<this venv>-tflite/bin/python``."""
    configured = os.environ.get(PYTHON_ENV)
    return Path(configured) if configured else Path(sys.prefix + "-tflite") / "bin" / "python"


class TfliteTarget(Target):
    name = "tflite"
    summary = "TFLite model.tflite from the float torch model (litert-torch; int8 full-integer, calibrated)"
    Config = TfliteConfig
    runtime = "ai-edge-litert"
    needs = ("ai_edge_litert",)
    install = "pip install 'modelzip[tflite]' && make tflite-env"  # the runtime here, litert-torch in its venv

    def missing(self, config: TfliteConfig) -> list[str]:
        absent = super().missing(config)
        if not converter_python().is_file():
            absent.append(f"litert-torch (its venv's python, {converter_python()})")
        return absent

    def source(self, config: TfliteConfig) -> SourceKind:
        return "torch"

    def calibrates(self, config: TfliteConfig) -> bool:
        return config.precision == "int8"

    def convert(self, source: ConvertInput, config: TfliteConfig, out_dir: Path) -> Converted:
        if source.program is None:
            raise conversion_error("tflite", source.onnx, "no torch program was given",
                                   "tflite converts from a torch model: leave it out of `deploy:` for an ONNX model")
        with tempfile.TemporaryDirectory(prefix="modelzip-tflite-") as scratch:
            request = Path(scratch) / "request.json"
            result_path = Path(scratch) / "result.json"
            request.write_text(json.dumps({
                "program": str(source.program), "input_shape": list(source.input_shape),
                "batches": list(source.batches), "precision": config.precision, "out": str(out_dir),
                "calibration": None if source.calibration is None else str(source.calibration),
                "result": str(result_path)}))
            done = subprocess.run([str(converter_python()), str(SCRIPT), str(request)], capture_output=True,
                                  text=True, cwd=scratch)
            if not result_path.is_file():
                raise conversion_error("tflite", source.onnx, f"the converter died (exit {done.returncode}): "
                                       + (done.stdout + done.stderr).strip()[-MESSAGE_CHARS:],
                                       "run `make tflite-env` again; if it repeats, leave tflite out of `deploy:`")
            result = json.loads(result_path.read_text())
        if "error" in result or not (out_dir / MODEL).is_file():
            raise conversion_error("tflite", source.onnx, result.get("error", "the converter wrote no file"),
                                   "replace the op litert-torch names, or leave tflite out of `deploy:`")
        return Converted((MODEL,), {**result["details"], "outputs": io_names(source.onnx)[1],
                                    "layout": "NCHW float input (as the torch model)",
                                    "dynamic_batch": False, "converter_wall_time_s": result["wall_time_s"],
                                    # refused by the guard in the converter's own process (the worker's
                                    # guard sees only its own): the report shows them like `blocked`
                                    "converter_blocked": result.get("blocked", [])})

    def open(self, out_dir: Path, converted: Converted, threads: int) -> TargetSession:
        return _TfliteSession(out_dir / MODEL, threads)


class _TfliteSession(TargetSession):
    """One signature runner per batch size; a batch without its own signature is padded to the
    next larger one (or split into the largest)."""

    def __init__(self, path: Path, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.runners = {}
        for name in self.interpreter.get_signature_list():
            runner = self.interpreter.get_signature_runner(name)
            (input_name, detail), = runner.get_input_details().items()
            outputs = sorted(runner.get_output_details().items(), key=lambda item: _index(item[0]))
            self.runners[int(detail["shape"][0])] = (runner, input_name, detail, outputs)

    def predict(self, x):
        import numpy as np

        batch = len(x)
        size = min((b for b in self.runners if b >= batch), default=max(self.runners))
        if size < batch:  # larger than every signature: in chunks
            parts = [self.predict(x[i:i + size]) for i in range(0, batch, size)]
            return [np.concatenate(chunks) for chunks in zip(*parts)]
        runner, input_name, detail, outputs = self.runners[size]
        padded = x if size == batch else np.concatenate([x, np.zeros((size - batch, *x.shape[1:]), x.dtype)])
        results = runner(**{input_name: _quantized(padded, detail)})
        return [_dequantized(results[name], out)[:batch] for name, out in outputs]


def _index(name: str) -> int:
    """output_10 after output_9 (the signature's names sort as text)."""
    digits = name.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else 0


def _quantized(x, detail):
    import numpy as np

    scale, zero = detail["quantization"]
    if not scale:
        return x.astype(detail["dtype"], copy=False)
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(detail["dtype"])


def _dequantized(y, detail):
    import numpy as np

    scale, zero = detail["quantization"]
    return y if not scale else (y.astype(np.float32) - zero) * np.float32(scale)
