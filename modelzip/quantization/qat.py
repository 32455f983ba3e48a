"""quantize mode qat: fine-tune with fake quantization, then a static int8 graph with the learned ranges.

1. A copy of the torch model gets fake-quantized Conv/Linear layers (qat_modules.py) and is
   trained by the one training loop, ``fit()`` (optionally distilled, as in finetune).
2. The wrappers are removed: the float model with the trained weights is exported as usual.
3. onnxruntime's static QDQ quantizer writes the int8 graph. The inputs of the Conv/Gemm/MatMul
   nodes whose torch module was fake-quantized get the trained (scale, zero point) through
   ``TensorQuantOverrides``, so the int8 model uses the ranges the weights were trained for;
   every other tensor (layer outputs, tensors of layers kept float) is calibrated as in static
   mode. The report lists which tensors got which, read back from the int8 graph.
"""
from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelzip.quantization import QuantizeFailure
from modelzip.quantization.layers import find_layers, load_module_map
from modelzip.quantization.prepare import quiet
from modelzip.quantization.quantizer import Quantizer

SEED_OFFSET = 104_729  # QAT's own random stream (shuffles, dropout), apart from other passes
OVERRIDDEN_OPS = ("Conv", "Gemm", "MatMul")  # ops whose input a QATLayer fake-quantized
# onnxruntime's QDQ quantizer gives the output of these ops their input's (scale, zero point).
# Behind a range-preserving one (a MaxPool of a ReLU output has the same maximum) the learned
# range is set on its input too; behind an AveragePool (which narrows the range) the pool is
# kept float instead, since widening or narrowing the range before it would cost accuracy.
RANGE_PRESERVING_OPS = frozenset({"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze"})
RANGE_NARROWING_OPS = frozenset({"AveragePool"})


@dataclass
class Trained:
    module: Any  # the float torch model with the QAT-trained weights (wrappers removed)
    ranges: dict[str, dict[str, float]]  # torch module name -> learned input range
    result: Any  # fit()'s FitResult
    distilled: bool
    reduce_range: bool
    reduce_range_reason: str


def train(module, data, settings, objective, *, exclude: tuple[str, ...] = (),
          reduce_range: bool | None = None, hooks=None) -> Trained:
    """Quantization-aware fine-tuning of a copy of ``module`` with ``settings`` (TrainSettings).

    Raises QuantizeFailure without training images, TeacherMismatch when a distillation's
    teacher does not fit, NonFiniteLoss when the loss becomes NaN or infinite.
    """
    from modelzip.finetuning.distill import check_objective
    from modelzip.finetuning.loop import fit
    from modelzip.finetuning.train import first_images
    from modelzip.quantization import choice
    from modelzip.quantization.qat_modules import fake_quant_layers, insert_fake_quant, remove_fake_quant

    if len(data.train) == 0:
        raise QuantizeFailure("mode qat needs training images, but the training split is empty",
                              fix="raise data.limit_train or use mode: static")
    reduce_range, reason = choice.reduce_range(reduce_range)
    # The weight grid must be the one onnxruntime writes: [-127, 127], or [-64, 64] with reduce_range.
    weight_qmax = 64 if reduce_range else 127
    excluded = lambda name: any(fnmatch.fnmatchcase(name, p) for p in exclude)  # noqa: E731
    model = insert_fake_quant(copy.deepcopy(module), weight_qmax, excluded)
    check_objective(objective, model, first_images(data))
    result = fit(model, data, settings, objective, hooks)
    model = model.cpu().eval()
    ranges = {name: layer.input_quant.learned_range() for name, layer in fake_quant_layers(model).items()}
    return Trained(remove_fake_quant(model), {k: v for k, v in ranges.items() if v is not None}, result,
                   objective.distills, reduce_range, reason)


# --------------------------------------------------------------------------- int8 graph


def quantizer(settings, prepared: Path, input_name: str, calibration, trained: Trained, arranged) -> Quantizer:
    """A Quantizer: static QDQ with the learned ranges, calibration for the rest.

    ``settings``: QuantizeSettings; ``calibration``: run._Calibration (batches, cache, scratch);
    ``arranged``: placement.Placement of ``prepared`` (its float nodes stay float).
    """
    from modelzip.quantization import static

    chosen = static.StaticSettings("minmax", settings.percentile, False, True, trained.reduce_range)
    cache = calibration.cache
    samples = static.calibrate(prepared, calibration.batches(), input_name, chosen, cache,
                               calibration.scratch)
    module_map = load_module_map(calibration.work_dir)
    overrides, range_float, learned = learned_overrides(prepared, module_map, trained.ranges)
    described = {**chosen.describe(), "reduce_range_reason": trained.reduce_range_reason,
                 "calibration": {"method": "minmax", "samples": samples,
                                 "batch_size": settings.calibration_batch_size,
                                 "used_for": "tensors without a learned range"},
                 "learned_ranges": learned, "placement": arranged.to_json()}

    def run(float_nodes, out: Path) -> Path:
        return _quantize(prepared, out, cache, chosen, {*float_nodes, *range_float, *arranged.float_nodes},
                         overrides)

    return Quantizer(described, run, "int8")


def learned_overrides(model_path: Path, module_map: dict[str, str], ranges: dict[str, dict[str, float]]
                      ) -> tuple[dict[str, list[dict[str, Any]]], list[str], list[dict[str, Any]]]:
    """(TensorQuantOverrides, nodes to keep float so they apply, one report row per tensor) for
    the data input of each Conv/Gemm/MatMul node whose torch module has a learned range."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    overrides: dict[str, list[dict[str, Any]]] = {}
    float_nodes: list[str] = []
    rows: list[dict[str, Any]] = []
    for layer in find_layers(model, module_map):
        module = next((name for name in layer.aliases if name in ranges), None)
        if layer.op_type not in OVERRIDDEN_OPS or module is None:
            continue
        tensor = _node(model, layer.node).input[0]
        learned = ranges[module]
        if tensor in overrides:  # one tensor feeding two layers: the first layer's range wins
            rows[[r["tensor"] for r in rows].index(tensor)]["also_feeds"].append(module)
            continue
        upstream, keep_float = _range_chain(model, tensor)
        for name in (tensor, *upstream):
            overrides[name] = [{"scale": learned["scale"], "zero_point": learned["zero_point"]}]
        float_nodes += keep_float
        rows.append({"tensor": tensor, "module": module, "node": layer.node, **learned,
                     "also_set_on": upstream, "kept_float_for_range": keep_float, "also_feeds": []})
    return overrides, float_nodes, rows


def _range_chain(model, tensor: str) -> tuple[list[str], list[str]]:
    """(tensors up the chain of range-preserving ops ending in ``tensor``, each read by nothing
    else; the range-narrowing node that ends the chain, if any): see RANGE_PRESERVING_OPS."""
    producers = {out: node for node in model.graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    chain: list[str] = []
    node = producers.get(tensor)
    while node is not None:
        if node.op_type in RANGE_NARROWING_OPS:
            return chain, [node.name]
        if node.op_type not in RANGE_PRESERVING_OPS or readers.get(node.input[0]) != 1:
            break
        chain.append(node.input[0])
        node = producers.get(node.input[0])
    return chain, []


def _quantize(model_path: Path, out_path: Path, calibration: Path, settings, float_nodes,
              overrides: dict[str, list[dict[str, Any]]]) -> Path:
    """static.quantize, plus the learned per-tensor (scale, zero point) overrides."""
    import numpy as np
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from modelzip.quantization.static import _ort_method

    # onnxruntime writes override values straight into the Q/DQ initializers: give it typed values.
    typed = {tensor: [{"scale": np.array(o["scale"], dtype=np.float32),
                       "zero_point": np.array(o["zero_point"], dtype=np.uint8)}
                      for o in entries] for tensor, entries in overrides.items()}
    with quiet():
        quantize_static(
            str(model_path), str(out_path), calibration_data_reader=None,
            calibration_cache_path=str(calibration), calibrate_method=_ort_method(settings.method),
            quant_format=QuantFormat.QDQ, per_channel=settings.per_channel,
            reduce_range=settings.reduce_range, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=sorted(float_nodes),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                           "TensorQuantOverrides": typed},
        )
    return out_path


def _node(model, name: str):
    return next(node for node in model.graph.node if node.name == name)


# --------------------------------------------------------------------------- report


def record(trained: Trained, quantizer, quantized: Path, static_summary: str) -> dict[str, Any]:
    """Report items: the training curve, which tensors use learned vs calibrated ranges (as
    found in the int8 graph), and the summary line."""
    graph_scales = _activation_scales(quantized)
    learned = []
    for row in quantizer.settings["learned_ranges"]:
        learned.append(row | {"scale_in_graph": graph_scales.get(row["tensor"])})
    overridden = {name for row in learned for name in (row["tensor"], *row["also_set_on"])}
    calibrated = sorted(set(graph_scales) - overridden)
    result = trained.result
    details = {**training_record(trained), "sparsity_preserved": result.sparsity,
               "learned_ranges": learned, "calibrated_tensors": calibrated}
    applied = sum(1 for row in learned if row["scale_in_graph"] is not None)
    epochs = len(result.history)
    head = (f"qat {epochs} epoch{'s' if epochs != 1 else ''}"
            + (" distilled" if trained.distilled else "")
            + (f" (val {result.best_val_accuracy:.4f})" if result.best_val_accuracy is not None else "")
            + f"; {applied} learned / {len(calibrated)} calibrated activation ranges")
    return {"qat": details, "summary": f"{head}; {static_summary}"}


def _activation_scales(path: Path) -> dict[str, float]:
    """Quantized activation tensor -> the scale of its QuantizeLinear in the int8 graph."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name: init for init in model.graph.initializer}
    scales = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in initializers:
            scale = initializers.get(node.input[1])
            if scale is not None:
                scales[node.input[0]] = float(numpy_helper.to_array(scale).reshape(-1)[0])
    return scales


def training_record(trained) -> dict[str, Any]:
    """How a QAT run trained (int8 or low-bit: anything with ``result`` and ``distilled``), for the report."""
    result = trained.result
    return {"curve": result.history, "epochs_run": len(result.history), "optimizer_steps": result.total_steps,
            "best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy,
            "wall_time_s": round(result.wall_time_s, 3), "distilled": trained.distilled,
            "resumed_after_epoch": result.resumed_after_epoch}
