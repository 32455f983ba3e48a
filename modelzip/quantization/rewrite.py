"""Graph rewrites some quantizers need before they can see a layer."""
from __future__ import annotations

from pathlib import Path


def gemm_to_matmul(source: Path, target: Path) -> list[str]:
    """Rewrite plain Gemm nodes (Y = A·Bᵀ + C, as exported from nn.Linear) to MatMul + Add.

    onnxruntime's dynamic quantizer (MatMulInteger) and weight-only quantizer (MatMulNBits)
    only handle MatMul. The MatMul keeps the Gemm's node name, so `exclude:` patterns and the
    report keep working; the bias Add is named ``<gemm>_bias``. Gemm nodes with transA,
    alpha/beta != 1 or a non-constant weight are left alone (and stay float).
    Returns the names of the rewritten nodes.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes, rewritten = [], []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = (attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0
                 and attrs.get("beta", 1.0) == 1.0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in initializers:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
        # The weight name keeps its torch parameter prefix (see layers._module_of_weight).
        weight_name = node.input[1] + "_matmul"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), weight_name))
        has_bias = len(node.input) > 2 and bool(node.input[2])
        product = node.output[0] + "_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight_name], [product], name=node.name))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                          name=node.name + "_bias"))
        rewritten.append(node.name)
    graph.ClearField("node")
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    onnx.save(model, str(target))
    return rewritten


def matmul_copy(model_path: Path, scratch: Path) -> Path:
    """A copy of the model with Gemm as MatMul + Add: onnxruntime's dynamic and MatMulNBits
    quantizers only rewrite MatMul, so nn.Linear layers are quantized too (done once per run)."""
    target = scratch / "matmul.onnx"
    gemm_to_matmul(model_path, target)
    return target
