"""Edits that change what an ONNX file stores, never what it computes.

Every function edits the model in place and returns what it did, for the report.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

DEFAULT_DOMAINS = ("", "ai.onnx")
# Defaults the ONNX spec states in prose (so the schemas carry no default_value): one stride
# and one dilation per spatial axis, no padding.
_SPATIAL_OPS = frozenset({"Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "MaxPool", "AveragePool",
                          "LpPool"})
_SPATIAL_DEFAULTS = {"strides": 1, "dilations": 1, "pads": 0}


# ---------------------------------------------------------------- walking graphs


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs in ``node``'s attributes (If branches, Loop and Scan bodies)."""
    from onnx import AttributeProto

    for attribute in node.attribute:
        if attribute.type == AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == AttributeProto.GRAPHS:
            yield from attribute.graphs


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every graph nested in it, outermost first."""
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from all_graphs(sub)


def all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node of the model: its graphs' and its local functions'."""
    for graph in all_graphs(model.graph):
        yield from graph.node
    for function in model.functions:
        for node in function.node:
            yield node
            for sub in subgraphs(node):
                for graph in all_graphs(sub):
                    yield from graph.node


def nested_inputs(graph: onnx.GraphProto) -> set[str]:
    """Names read by nodes inside ``graph``'s subgraphs: outer-scope values are read by name."""
    names: set[str] = set()
    for node in graph.node:
        for sub in subgraphs(node):
            for inner in all_graphs(sub):
                for inner_node in inner.node:
                    names.update(inner_node.input)
    return names


def graph_input_names(graph: onnx.GraphProto) -> set[str]:
    return {value.name for value in graph.input}


def rename_inputs(graph: onnx.GraphProto, aliases: Mapping[str, str]) -> None:
    """Make every node (nested ones too) read ``aliases[name]`` where it read ``name``."""
    for inner in all_graphs(graph):
        for node in inner.node:
            for index, name in enumerate(node.input):
                if name in aliases:
                    node.input[index] = aliases[name]


# ---------------------------------------------------------------- stripping


def strip(model: onnx.ModelProto) -> dict[str, int]:
    """Drop what no runtime reads; how many of each were dropped.

    - doc strings (model, graphs, nodes, values, initializers);
    - ``value_info``: shape annotations of intermediate tensors, which runtimes infer again;
    - graph, node and value ``metadata_props``: exporter debug data (the dynamo exporter's
      graph signature alone is 7 kB); the *model's* metadata_props are the user's, and stay;
    - attributes equal to their default (Conv's ``group: 1``, ``auto_pad: NOTSET``, unit
      strides and dilations, zero pads);
    - all-zero zero points of int32 DequantizeLinear inputs (quantized biases): 0 is the
      default and the only value the spec allows there. int8/uint8 zero points stay even when
      zero: onnxruntime fuses DequantizeLinear -> Gemm into QGemm only when they are present
      (measured: without them the classifier of a static int8 dsresnet ran float Gemm).
    """
    counts = {"value_info": 0, "metadata_props": 0, "default_attributes": 0, "zero_points": 0}
    model.doc_string = ""
    for graph in all_graphs(model.graph):
        graph.doc_string = ""
        counts["value_info"] += len(graph.value_info)
        counts["metadata_props"] += len(graph.metadata_props)
        del graph.value_info[:]
        del graph.metadata_props[:]
        for value in [*graph.input, *graph.output, *graph.initializer]:
            value.doc_string = ""
            counts["metadata_props"] += len(value.metadata_props)
            del value.metadata_props[:]
    for node in all_nodes(model):
        node.doc_string = ""
        counts["metadata_props"] += len(node.metadata_props)
        del node.metadata_props[:]
    # Graphs only: a local function's nodes may take attribute values from the call (ref_attr_name)
    # and follow the function's own opset imports.
    opsets = {entry.domain or "": entry.version for entry in model.opset_import}
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for graph in all_graphs(model.graph):
        for node in graph.node:
            key = (node.op_type, node.domain)
            if key not in schemas:
                schemas[key] = _schema_defaults(node.op_type, node.domain, opsets)
            counts["default_attributes"] += _drop_default_attributes(node, schemas[key])
        counts["zero_points"] += _drop_zero_int32_zero_points(graph)
    return counts


def _drop_default_attributes(node: onnx.NodeProto, defaults: Mapping[str, Any]) -> int:
    from onnx import helper

    spatial = node.op_type in _SPATIAL_OPS and node.domain in DEFAULT_DOMAINS
    keep = []
    for attribute in node.attribute:
        if attribute.ref_attr_name:
            keep.append(attribute)
            continue
        value = helper.get_attribute_value(attribute)
        if attribute.name in defaults and _same(value, defaults[attribute.name]):
            continue
        if spatial and attribute.name in _SPATIAL_DEFAULTS and isinstance(value, list) and value \
                and all(v == _SPATIAL_DEFAULTS[attribute.name] for v in value):
            continue
        keep.append(attribute)
    dropped = len(node.attribute) - len(keep)
    if dropped:
        del node.attribute[:]
        node.attribute.extend(keep)
    return dropped


def _schema_defaults(op_type: str, domain: str, opsets: Mapping[str, int]) -> dict[str, Any]:
    import onnx.defs
    from onnx import helper

    domain = "" if domain in DEFAULT_DOMAINS else domain
    version = opsets.get(domain) or opsets.get("ai.onnx" if domain == "" else domain)
    if version is None:
        return {}
    try:
        schema = onnx.defs.get_schema(op_type, version, domain)
    except onnx.defs.SchemaError:  # a contrib or custom op: its defaults are unknown here
        return {}
    return {name: helper.get_attribute_value(attribute.default_value)
            for name, attribute in schema.attributes.items() if attribute.default_value.type}


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, bytes) or isinstance(default, bytes):
        return value == default
    if isinstance(value, (int, float)) and isinstance(default, (int, float)):
        return value == default
    if isinstance(value, list) and isinstance(default, list):
        return value == default
    return False


def _drop_zero_int32_zero_points(graph: onnx.GraphProto) -> int:
    import numpy as np
    from onnx import TensorProto, numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    dropped = 0
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.domain not in DEFAULT_DOMAINS or len(node.input) != 3:
            continue
        data, zero = initializers.get(node.input[0]), initializers.get(node.input[2])
        if data is None or zero is None or data.data_type != TensorProto.INT32:
            continue
        if not np.any(numpy_helper.to_array(zero)):
            del node.input[2]
            dropped += 1
    return dropped


# ---------------------------------------------------------------- domains


def remove_unused_domains(model: onnx.ModelProto) -> list[str]:
    """Drop opset imports of domains no node (nor local function) uses; the removed domains.

    The default ONNX domain is always kept: a model must declare its opset. Quantized files
    come out of onnxruntime's tools declaring ai.onnx.training, org.pytorch.aten,
    com.microsoft.nchwc and more, which some converters refuse to load.
    """
    used = {node.domain for node in all_nodes(model)} | {function.domain for function in model.functions}
    used = {"" if domain in DEFAULT_DOMAINS else domain for domain in used} | {""}
    keep = [entry for entry in model.opset_import if ("" if entry.domain in DEFAULT_DOMAINS else entry.domain)
            in used]
    removed = [entry.domain for entry in model.opset_import if entry not in keep]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return removed


# ---------------------------------------------------------------- initializers and dead nodes


def dedupe_initializers(graph: onnx.GraphProto) -> dict[str, str]:
    """Store identical initializers (type, shape and bytes) once; {removed name: kept name}.

    Graph inputs and outputs are never merged: a caller may feed or read them by name.
    """
    from onnx import numpy_helper

    pinned = graph_input_names(graph) | {value.name for value in graph.output}
    first: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    aliases: dict[str, str] = {}
    for init in graph.initializer:
        if init.name in pinned or init.data_location == init.EXTERNAL:
            continue
        key = (init.data_type, tuple(init.dims), numpy_helper.to_array(init).tobytes())
        if key in first:
            aliases[init.name] = first[key]
        else:
            first[key] = init.name
    if aliases:
        rename_inputs(graph, aliases)
        kept = [init for init in graph.initializer if init.name not in aliases]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return aliases


def remove_dead(graph: onnx.GraphProto) -> tuple[int, int]:
    """Remove nodes whose outputs nothing reads and initializers nothing reads; (nodes, initializers)."""
    needed = {value.name for value in graph.output} | nested_inputs(graph)
    alive = []
    for node in reversed(graph.node):
        if any(name and name in needed for name in node.output):
            alive.append(node)
            needed.update(node.input)
    alive.reverse()
    nodes_removed = len(graph.node) - len(alive)
    if nodes_removed:
        del graph.node[:]
        graph.node.extend(alive)
    inputs = graph_input_names(graph)
    kept = [init for init in graph.initializer if init.name in needed or init.name in inputs]
    initializers_removed = len(graph.initializer) - len(kept)
    if initializers_removed:
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return nodes_removed, initializers_removed
