"""The TFLite conversion itself, run by the converter venv's Python (modelzip.targets.tflite).

litert-torch cannot share modelzip's venv (it pins xdsl==0.28.0, which pins typing-extensions<4.13;
modelzip's pydantic>=2.12 needs >=4.14), so this file runs as a script there: it imports torch,
litert_torch and numpy, never modelzip (the package imports pydantic). It loads the float model as
a torch.export program (.pt2, saved by the same torch version in modelzip's venv), quantizes it
for int8 with PyTorch 2 export quantization (prepare_pt2e / convert_pt2e, litert-torch's
quantizer: per-channel symmetric int8 weights, int8 activations calibrated on the images given),
and writes model.tflite. It keeps itself offline with modelzip/offline.py, loaded by file path.

    python tflite_convert.py REQUEST.json   ->   writes {"details": ...} or {"error": ...} to RESULT
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

MODEL = "model.tflite"


def _offline():
    """modelzip.offline's guard, loaded without importing the modelzip package."""
    path = Path(__file__).resolve().parents[1] / "offline.py"
    spec = importlib.util.spec_from_file_location("_modelzip_offline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.offline()


def convert(request: dict) -> dict:
    """Write model.tflite with one signature per batch size (litert-torch 0.10 cannot lower a
    dynamic batch through flatten: "Shapes must be 1D sequences of concrete values"), weights shared."""
    import litert_torch
    import numpy as np
    import torch

    module = torch.export.load(request["program"]).module()
    rest = tuple(request["input_shape"][1:])
    batches = sorted(set(request["batches"]))
    details = {"converter": f"litert-torch {litert_torch.__version__} (torch {torch.__version__})",
               "signatures": {f"batch_{b}": b for b in batches}}
    quant_config = None
    if request["precision"] == "int8":
        module, quant_config, count = _quantized(module, np.load(request["calibration"]), rest)
        details["quantization"] = (f"full-integer int8 (pt2e, per-channel symmetric int8 weights, int8 activations "
                                   f"calibrated on {count} images; int8 input and output)")
    converter = litert_torch.Converter()
    for batch in batches:
        converter.add_signature(f"batch_{batch}", module, (torch.zeros((batch, *rest)),))
    out = Path(request["out"]) / MODEL
    converter.convert(quant_config=quant_config).export(str(out))
    if request["precision"] == "fp16":
        details["quantization"] = _to_fp16(out)
    return details


def _quantized(module, images, rest):
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    graph = torch.export.export(module, (torch.zeros((2, *rest)),),
                                dynamic_shapes=({0: torch.export.Dim.AUTO},)).module()
    prepared = prepare_pt2e(graph, quantizer)
    for start in range(0, len(images), 32):
        prepared(torch.from_numpy(images[start:start + 32]))
    return convert_pt2e(prepared, fold_quantize=False), QuantConfig(pt2e_quantizer=quantizer), len(images)


def _to_fp16(path: Path) -> str:
    """Float weights stored as fp16 (ai-edge-quantizer's weight-only fp16 recipe)."""
    from ai_edge_quantizer import quantizer, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import TFLOperationName

    manager = recipe_manager.RecipeManager()
    manager.add_weight_only_config(regex=".*", operation_name=TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                   algorithm_key=AlgorithmName.FLOAT_CASTING)
    result = quantizer.Quantizer(str(path), manager.get_quantization_recipe()).quantize()
    path.write_bytes(result.quantized_model)
    return "fp16 weights (ai-edge-quantizer), computed in fp32"


def main(request_path: Path) -> None:
    request = json.loads(request_path.read_text())
    started = time.perf_counter()
    with _offline() as blocked:
        try:
            result = {"details": convert(request)}
        except Exception as exc:  # the converter's own error: reported by modelzip, never a traceback
            result = {"error": f"{type(exc).__name__}: {str(exc)[:1500]}"}
    result["blocked"] = list(blocked)
    result["wall_time_s"] = round(time.perf_counter() - started, 3)
    Path(request["result"]).write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
