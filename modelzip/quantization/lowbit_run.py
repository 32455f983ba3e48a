"""Sub-8-bit weights end to end: the exported float ONNX of the baked model -> the small file,
checked for parity against the torch fake-quant model and timed against float.

Parity is the file's own check: on real held-out images, the argmax of the file run in a
default onnxruntime CPU session must agree with the torch model the weights were trained in
(baked: exactly the fake-quant forward) on at least MIN_AGREEMENT of them. A runtime that
computes a format wrongly (onnxruntime 1.32's QDQ fusion of INT2 weights did: accuracy fell to
chance) fails the step (QuantizeFailure -> PassError, exit code 3).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from modelzip.quantization import QuantizeFailure, lowbit_onnx, prepare
from modelzip.quantization.layers import find_layers, load_module_map
from modelzip.quantization.settings import Progress, QuantizeResult, Timing

PARITY_SAMPLES = 1024  # 0.5% of 1024 is 5 images: agreement can fail for a handful of flips
MIN_AGREEMENT = 0.995
# What a user must set to run the file: nothing. Recorded so the file says so itself.
SESSION_METADATA = {"modelzip.onnxruntime.session_options": "none (a default session computes this file)",
                    "modelzip.lowbit.formats": ""}


def quantize_lowbit(source: Path, trained, *, data, input_shape: tuple[int, ...], timing: Timing,
                    work_dir: Path, scratch: Path, seed: int = 0, progress: Progress | None = None,
                    prefer: str = "smaller", auto: dict[str, Any] | None = None,
                    activations: str = "float") -> QuantizeResult:
    """Write ``work_dir``/model.onnx from ``source`` (the float export of ``trained.module``)."""
    import onnx

    from modelzip.onnx_export import checker_problem
    from modelzip.quantization.run import OUTPUT_FILE, measure_latency

    progress = progress or Progress()
    float_path = prepare.float_onnx(source, scratch, work_dir)
    layers = find_layers(onnx.load(str(float_path)), load_module_map(work_dir))
    small = scratch / "lowbit.onnx"
    rows = lowbit_onnx.rewrite(float_path, small, trained.codes, layers)
    _mark(small, rows)
    problem = checker_problem(small)
    if problem is not None:
        raise QuantizeFailure(f"the low-bit ONNX file fails onnx.checker: {problem}")
    progress.log(f"low-bit: {len(rows)} layers stored small, checking parity on real images")
    parity = check_parity(trained.reference, small, parity_images(data))
    latency = measure_latency(float_path, small, input_shape, timing, prefer, seed, progress)
    output = work_dir / OUTPUT_FILE
    shutil.copyfile(small, output)
    details = record(rows, parity, latency, float_bytes=float_path.stat().st_size, path=output,
                     trained=trained, auto=auto, activations=activations)
    return QuantizeResult(output, details)


def _mark(path: Path, rows) -> None:
    import onnx

    model = onnx.load(str(path))
    formats = json.dumps({row.layer: f"{row.grid}: {row.format}" for row in rows})
    for key, value in {**SESSION_METADATA, "modelzip.lowbit.formats": formats}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def parity_images(data, samples: int = PARITY_SAMPLES) -> np.ndarray:
    """Up to ``samples`` held-out images (the eval split; training images if it is empty)."""
    taken, count = [], 0
    for split in ("eval", "train"):
        for images, _ in data.batches(split, 256):
            taken.append(images.numpy())
            count += len(images)
            if count >= samples:
                return np.concatenate(taken)[:samples]
        if taken:
            break
    if not taken:
        raise QuantizeFailure("no images to check the low-bit file with", fix="use a dataset with images")
    return np.concatenate(taken)


def check_parity(module, path: Path, images: np.ndarray, *, min_agreement: float = MIN_AGREEMENT
                 ) -> dict[str, Any]:
    """The file in a default onnxruntime session vs the torch model; raises below ``min_agreement``."""
    import torch

    from modelzip.evaluation.accuracy import onnx_outputs

    with torch.no_grad():
        expected = module.eval()(torch.from_numpy(images)).numpy()
    try:
        got = onnx_outputs(path, images)
    except Exception as exc:  # ORT raises its own types (Fail, NotImplemented, InvalidGraph, ...)
        raise QuantizeFailure(f"onnxruntime cannot run the low-bit file: {exc}",
                              fix="exclude the failing layer (exclude: [...]) or use weights: int8") from exc
    agreement = float((got.argmax(-1) == expected.argmax(-1)).mean())
    report = {"samples": len(images), "top1_agreement": agreement,
              "max_abs_diff": float(np.abs(got - expected).max()), "min_agreement": min_agreement,
              "reference": "torch model with the trained low-bit weights and the kernels' input rounding "
                           "(the fake-quant forward)",
              "session": "onnxruntime CPU, default options"}
    if agreement < min_agreement:
        raise QuantizeFailure("onnxruntime computes the low-bit file differently from the trained torch model",
                              got=f"top-1 agreement {agreement:.4f} on {len(images)} images, max |diff| "
                                  f"{report['max_abs_diff']:.3g}",
                              expected=f"agreement >= {min_agreement}",
                              fix="a runtime fault or a format bug: rerun with weights: int8, or exclude the "
                                  "layers whose format is suspect, and report it")
    return report


def _activations_note(activations: str) -> str:
    if activations == "float":
        return "float (weight-only)"
    return (f"int8 {activations}: QuantizeLinear/DequantizeLinear with the trained range on each quantized "
            "layer's input; onnxruntime 1.32 runs the layers in float on those values (no int8 kernel "
            "takes INT4 weights), so it simulates int8 inputs exactly but is not faster")


def record(rows, parity: dict[str, Any], latency, *, float_bytes: int, path: Path, trained,
           auto: dict[str, Any] | None = None, activations: str = "float"):
    """The step's QuantizeDetails: the low-bit table, sizes (weights vs graph), parity, training."""
    from modelzip.quantization.qat import training_record
    from modelzip.quantization.summary import QuantizeDetails, lowbit_summary

    file_bytes = path.stat().st_size
    weights = lowbit_onnx.weight_bytes(path)
    layer_bytes = sum(row.bytes for row in rows)
    table = {
        "layers": [row.to_json() for row in rows],
        "file": {"bytes": file_bytes, "weight_bytes": weights, "graph_bytes": file_bytes - weights,
                 "layer_weight_bytes": layer_bytes, "other_weight_bytes": weights - layer_bytes,
                 "ideal_layer_bytes": sum(row.ideal_bytes for row in rows)},
        "session_options": "none: a default onnxruntime session computes the file",
        "activations": _activations_note(activations),
    }
    if auto is not None:
        table["auto"] = auto
    grids = sorted({row.grid for row in rows})
    details = QuantizeDetails(
        mode="qat", settings={"weights": grids, "activations": activations,
                              "matmul_nbits": {"block_size_by_bits": lowbit_onnx.MATMUL_NBITS_BLOCK,
                                               "accuracy_level": lowbit_onnx.ACCURACY_LEVEL}},
        preprocess="none (the exported graph, weights replaced)", returned_float=False,
        layers={"total": len(rows), "quantized": [row.layer for row in rows], "kept_float": []},
        nodes={}, exclude={}, excluded_but_quantized=[], agreement_with_float=parity,
        size={"float_bytes": float_bytes, "quantized_bytes": file_bytes,
              "ratio": round(float_bytes / max(file_bytes, 1), 3)},
        latency=latency, qat=training_record(trained), low_bit=table)
    return lowbit_summary(details)
