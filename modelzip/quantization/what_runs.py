"""What runs quantized in an ONNX model: node counts by op type, layer status, weight storage.

A node counts as quantized when it is an integer op (QLinear*, ConvInteger, MatMulInteger,
MatMulNBits, ...), or when every float tensor it reads comes out of a DequantizeLinear
(a QDQ-wrapped op, which onnxruntime fuses into an integer kernel). The Q/DQ nodes and
DynamicQuantizeLinear are counted apart: they convert, they do not compute.

``as_run`` reads the graph onnxruntime really executes, after its optimizations: which QDQ
groups became integer kernels (QLinearConv, QGemm, NhwcMaxPool, ...), what still computes in
float, the layout changes it added (Transpose for NHWC int8 convolutions, Reorder for fp32 NCHWc
ones) and the Q/DQ nodes left unfused.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from modelzip.quantization.layers import Layer

CONVERSION_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
LAYOUT_OPS = frozenset({"Transpose", "ReorderInput", "ReorderOutput"})  # NHWC (int8) and NCHWc (fp32)
# Ops whose output is not 8-bit although they read 8-bit data (int32 or float results).
_WIDENING_OPS = frozenset({"DequantizeLinear", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
                           "DynamicQuantizeMatMul", "MatMulNBits"})
_INT8_TYPES = frozenset({2, 3})  # onnx TensorProto.UINT8, INT8
INTEGER_OPS = frozenset({"ConvInteger", "MatMulInteger", "MatMulNBits", "QGemm", "QAttention",
                         "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "GatherBlockQuantized",
                         "QEmbedLayerNormalization", "MatMulIntegerToFloat"})


def is_integer_op(op_type: str) -> bool:
    return op_type in INTEGER_OPS or op_type.startswith("QLinear")


def summarize(path: Path, layers: list[Layer]) -> dict[str, Any]:
    """Node counts, which of ``layers`` (found in the float model) run quantized, weight bytes."""
    import onnx

    model = onnx.load(str(path))
    wrapped = _qdq_wrapped_nodes(model)
    quantized, float_, conversions = Counter(), Counter(), Counter()
    for node in model.graph.node:
        if node.op_type in CONVERSION_OPS:
            conversions[node.op_type] += 1
        elif is_integer_op(node.op_type) or node.name in wrapped:
            quantized[node.op_type] += 1
        else:
            float_[node.op_type] += 1
    float_layers = _float_layer_nodes(model, wrapped)
    return {
        "nodes_quantized": sum(quantized.values()),
        "nodes_float": sum(float_.values()),
        "quantized_ops": dict(sorted(quantized.items())),
        "float_ops": dict(sorted(float_.items())),
        "conversion_ops": dict(sorted(conversions.items())),
        "layers_quantized": [layer.label for layer in layers if layer.node not in float_layers],
        "layers_float": [layer.label for layer in layers if layer.node in float_layers],
        "float_nodes": sorted(float_layers),
        "initializer_bytes": initializer_bytes(model),
    }


def initializer_bytes(model) -> dict[str, int]:
    """Stored bytes of initializers by element type, e.g. {'float32': 74000, 'int8': 800000}."""
    from onnx import TensorProto

    totals: Counter = Counter()
    for init in model.graph.initializer:
        name = TensorProto.DataType.Name(init.data_type).lower()  # int8, uint8, int4, int32, ...
        name = {"float": "float32", "double": "float64"}.get(name, name)
        totals[name] += len(init.raw_data) if init.raw_data else _typed_bytes(init)
    return dict(sorted(totals.items()))


def _typed_bytes(init) -> int:
    """Bytes of an initializer stored in typed fields instead of raw_data."""
    import numpy as np
    from onnx import numpy_helper

    try:
        return int(np.asarray(numpy_helper.to_array(init)).nbytes)
    except Exception:  # exotic or external data: count nothing rather than fail the report
        return 0


def _qdq_wrapped_nodes(model) -> set[str]:
    """Compute nodes whose every float input comes from a DequantizeLinear."""
    from onnx import TensorProto

    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    non_float = {init.name for init in model.graph.initializer
                 if init.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)}
    wrapped = set()
    for node in model.graph.node:
        if node.op_type in CONVERSION_OPS:
            continue
        data_inputs = [i for i in node.input if i and i not in non_float]
        if data_inputs and all(producer.get(i) == "DequantizeLinear" for i in data_inputs):
            wrapped.add(node.name)
    return wrapped


def _float_layer_nodes(model, wrapped: set[str]) -> set[str]:
    """Names of nodes that still compute in float. A node the quantizer replaced (an integer
    op under a new name) is absent here; one it kept is present and not QDQ-wrapped."""
    return {node.name for node in model.graph.node
            if node.op_type not in CONVERSION_OPS and not is_integer_op(node.op_type)
            and node.name not in wrapped}


def as_run(path: Path) -> dict[str, Any]:
    """Op counts of the graph onnxruntime's CPU session executes (ORT_ENABLE_ALL, its default and
    what every measurement uses): ``int8`` (nodes reading 8-bit data), ``float``, ``layout``
    (Transpose, ReorderInput/Output) and ``conversions`` (Q/DQ left unfused)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 1  # the graph does not depend on it
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    eight_bit = {init.name for init in graph.initializer if init.data_type in _INT8_TYPES}
    groups: dict[str, Counter] = {"int8": Counter(), "float": Counter(), "layout": Counter(),
                                  "conversions": Counter()}
    for node in graph.node:  # topological order
        reads_8bit = bool(node.input) and node.input[0] in eight_bit
        if node.op_type in CONVERSION_OPS:
            group = "conversions"
        elif node.op_type in LAYOUT_OPS:
            group = "layout"
        else:
            group = "int8" if reads_8bit else "float"
        groups[group][node.op_type] += 1
        if _writes_8bit(node, reads_8bit):
            eight_bit.update(node.output)
    return {name: dict(sorted(counts.items())) for name, counts in groups.items()}


def _writes_8bit(node, reads_8bit: bool) -> bool:
    if node.op_type in ("QuantizeLinear", "DynamicQuantizeLinear"):
        return True
    if node.op_type == "QGemm":  # without an output scale (input 7) it writes float
        return len(node.input) > 7 and bool(node.input[7])
    return reads_8bit and node.op_type not in _WIDENING_OPS
