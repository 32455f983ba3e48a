"""Where the bytes of an ONNX file go: tensor data by role, graph overhead by kind.

    python scripts/onnx_bytes.py runs/x/model.onnx [more.onnx ...] [--json]

Tensor data (initializers and Constant tensors) is split by what reads it: quantized weights and
biases, their scales and zero points, activation scales and zero points (QDQ and QOperator
layouts), float weights, other constants. Graph overhead (file bytes minus tensor data) is split
into nodes (by op type), initializer headers (name, shape, type), graph inputs/outputs/value_info
and the rest (opset imports, metadata). Depthwise convolutions (group == channels) are counted
apart, since their per-channel scales cost the most per weight.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import onnx
from onnx import helper, numpy_helper

from modelzip.evaluation.onnx_stats import tensor_data_bytes

# (op, input index) -> role of an initializer read there; DequantizeLinear depends on the data type.
_QOPERATOR = {
    ("QLinearConv", 3): "weights int8", ("QLinearConv", 4): "weight scales", ("QLinearConv", 5): "weight zero points",
    ("QLinearConv", 8): "biases int32", ("QLinearMatMul", 3): "weights int8", ("QLinearMatMul", 4): "weight scales",
    ("QLinearMatMul", 5): "weight zero points", ("QGemm", 3): "weights int8", ("QGemm", 4): "weight scales",
    ("QGemm", 5): "weight zero points", ("QGemm", 6): "biases int32",
}
_ACTIVATION_SLOTS = {1: "activation scales", 2: "activation zero points"}


def breakdown(path: Path) -> dict:
    model = onnx.load(str(path))
    graph = model.graph
    size = path.stat().st_size
    data = tensor_data_bytes(model)
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, index))
    depthwise = _depthwise_weights(graph, initializers)
    roles: Counter = Counter()
    for name, init in initializers.items():
        payload = len(init.raw_data) if init.raw_data else numpy_helper.to_array(init).nbytes
        role = _role(init, consumers.get(name, []), initializers)
        if name in depthwise:
            role += " (depthwise)"
        roles[role] += payload
    nodes: Counter = Counter()
    for node in graph.node:
        nodes[node.op_type] += _field(node)
    headers = sum(_field(init) for init in graph.initializer) - sum(
        len(i.raw_data) if i.raw_data else numpy_helper.to_array(i).nbytes for i in graph.initializer)
    values = sum(_field(v) for v in [*graph.input, *graph.output, *graph.value_info])
    overhead = size - data
    return {"file": str(path), "file_bytes": size, "tensor_bytes": data, "overhead_bytes": overhead,
            "overhead": round(overhead / size, 4), "tensors_by_role": dict(roles.most_common()),
            "overhead_by_kind": {"nodes": sum(nodes.values()), "initializer headers": headers,
                                 "graph inputs/outputs/value_info": values,
                                 "rest (opsets, metadata, names of graph)": overhead - sum(nodes.values())
                                 - headers - values},
            "node_bytes_by_op": dict(nodes.most_common()),
            "nodes": dict(Counter(n.op_type for n in graph.node).most_common()),
            "opset_domains": sorted(o.domain or "ai.onnx" for o in model.opset_import)}


def _field(message) -> int:
    """Bytes of ``message`` as a field of its parent: tag, length varint, body."""
    body = len(message.SerializeToString())
    return 1 + max(1, (body.bit_length() + 6) // 7) + body


def _role(init, uses, initializers) -> str:
    for node, index in uses:
        key = (node.op_type, index)
        if key in _QOPERATOR:
            return _QOPERATOR[key]
        if node.op_type == "DequantizeLinear":
            source = initializers.get(node.input[0])
            kind = None if source is None else ("biases int32" if source.data_type == onnx.TensorProto.INT32
                                                else "weights int8")
            if kind is None:
                return _ACTIVATION_SLOTS.get(index, "activations")
            prefix = "bias" if kind == "biases int32" else "weight"
            return {0: kind, 1: f"{prefix} scales", 2: f"{prefix} zero points"}[index]
        if node.op_type in ("QuantizeLinear", "QLinearConv", "QLinearAdd", "QLinearMatMul", "QGemm"):
            return "activation scales" if init.data_type == onnx.TensorProto.FLOAT else "activation zero points"
    if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) >= 1 and max(init.dims, default=1) > 1:
        return "float weights"
    return "other constants"


def _depthwise_weights(graph, initializers) -> set[str]:
    """Initializer names that are (or quantize) a depthwise convolution's weight."""
    producers = {out: node for node in graph.node for out in node.output}
    names = set()
    for node in graph.node:
        if node.op_type not in ("Conv", "QLinearConv"):
            continue
        group = {a.name: helper.get_attribute_value(a) for a in node.attribute}.get("group", 1)
        weight = node.input[1] if node.op_type == "Conv" else node.input[3]
        if group <= 1:
            continue
        names.add(weight)
        names.update(node.input[2:3] if node.op_type == "Conv" else node.input[3:6] + node.input[8:9])
        for slot in (weight, *(node.input[2:3] if node.op_type == "Conv" else ())):
            producer = producers.get(slot)
            if producer is not None and producer.op_type == "DequantizeLinear":
                names.update(producer.input)
    return {n for n in names if n in initializers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args()
    reports = [breakdown(path) for path in args.paths]
    if args.json:
        print(json.dumps(reports, indent=1))
        return
    for report in reports:
        print(f"{report['file']}: {report['file_bytes']:,} bytes = {report['tensor_bytes']:,} tensor data + "
              f"{report['overhead_bytes']:,} graph overhead ({report['overhead']:.1%})")
        for role, size in report["tensors_by_role"].items():
            print(f"  data      {size:>9,}  {role}")
        for kind, size in report["overhead_by_kind"].items():
            print(f"  overhead  {size:>9,}  {kind}")
        print(f"  nodes: {report['nodes']}; opset domains: {report['opset_domains']}")


if __name__ == "__main__":
    main()
