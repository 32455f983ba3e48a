"""Constant folding: compute once, while writing the file, what every inference would recompute.

A small folder of our own rather than onnxruntime's offline optimizer (a session's
optimized_model_filepath): at ORT_ENABLE_BASIC it keeps to standard ops, but what it rewrites
follows the ORT version, and one level up it writes com.microsoft and NCHWc ops that ORT itself
says "should only be used in the same environment the model was optimized in"; the artifact
must stay a portable ONNX file that any runtime loads, rewritten the same way by every install.
Here each foldable node is evaluated with onnx.reference (the ONNX spec's own numpy
implementation), one node at a time in graph order, so chains of constant nodes fold too.

Not folded:
- DequantizeLinear and QuantizeLinear: a quantized weight feeding DequantizeLinear is the
  pattern runtimes fuse into integer kernels; folding it would store float weights (4x the
  bytes) and run float arithmetic;
- random and other non-deterministic ops; nodes with subgraphs; ops outside the ONNX domain
  (onnx.reference does not implement them);
- a node whose result is larger than the stored constants it is computed from (through any
  chain of folded nodes) by more than ``_GROWTH_SLACK`` bytes: an Expand or ConstantOfShape would
  trade a tiny node for a large tensor, and a chain unpacking bit-packed weights (quantize's
  binary weights: BitShift, BitwiseAnd, Cast, Mul) would store them as float again, growing a
  little at each node;
- a node producing a graph output (the output would become an initializer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelzip.onnx_optimize.graph import DEFAULT_DOMAINS, graph_input_names, nested_inputs, subgraphs

if TYPE_CHECKING:
    import numpy as np
    import onnx

_NEVER_FOLD = frozenset({
    "DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear",
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
    "Dropout",  # deterministic only in inference mode, which a training_mode input can switch
})
_GROWTH_SLACK = 1024  # bytes a folded result may exceed its inputs by (small shape tensors)


@dataclass(frozen=True)
class Folded:
    constant_nodes: int  # Constant nodes turned into initializers
    nodes: int  # other nodes computed once and replaced by their result

    def to_json(self) -> dict[str, int]:
        return {"constant_nodes": self.constant_nodes, "nodes": self.nodes}


def fold_constants(model: onnx.ModelProto) -> Folded:
    """Fold the main graph's constant nodes into initializers (in place)."""
    from onnx import numpy_helper

    graph = model.graph
    opsets = {entry.domain or "": entry.version for entry in model.opset_import}
    overridable = graph_input_names(graph)  # an initializer that is also an input can be fed
    constants: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in graph.initializer
                                        if init.name not in overridable}
    outputs = {value.name for value in graph.output}
    stored = {name: _nbytes(value) for name, value in constants.items()}  # bytes each constant derives from
    kept, folded = [], []
    for node in graph.node:
        values = _fold(node, constants, outputs, opsets, stored)
        if values is None:
            kept.append(node)
            continue
        folded.append(node)
        constants.update(values)
    if not folded:
        return Folded(0, 0)
    read = {name for node in kept for name in node.input} | nested_inputs(graph)
    existing = {init.name for init in graph.initializer}
    new = [numpy_helper.from_array(constants[name], name) for node in folded for name in node.output
           if name in read and name not in existing]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new)
    constant_nodes = sum(node.op_type == "Constant" for node in folded)
    return Folded(constant_nodes, len(folded) - constant_nodes)


def _fold(node: onnx.NodeProto, constants: dict[str, Any], outputs: set[str],
          opsets: dict[str, int], stored: dict[str, int]) -> dict[str, Any] | None:
    """{output name: value} of ``node`` when it folds, else None. ``stored``: for each constant,
    the bytes of the initializers it is computed from (updated for the outputs that fold)."""
    if not _foldable(node, constants, outputs):
        return None
    from onnx.reference import ReferenceEvaluator

    feeds = {name: constants[name] for name in node.input if name}
    try:
        results = ReferenceEvaluator(node, opsets=opsets).run(None, feeds)
    except Exception:  # an op or attribute onnx.reference does not implement: leave it to the runtime
        return None
    values = {name: value for name, value in zip(node.output, results) if name}
    source = sum(stored.get(name, 0) for name in feeds)
    if node.op_type != "Constant":
        if sum(_nbytes(v) for v in values.values()) - source > _GROWTH_SLACK:
            return None
    for name, value in values.items():
        stored[name] = source if node.op_type != "Constant" else _nbytes(value)
    return values


def _foldable(node: onnx.NodeProto, constants: dict[str, Any], outputs: set[str]) -> bool:
    if node.domain not in DEFAULT_DOMAINS or node.op_type in _NEVER_FOLD or any(subgraphs(node)):
        return False
    if any(name in outputs for name in node.output):
        return False
    if node.op_type == "Constant":
        return not any(attribute.name == "sparse_value" for attribute in node.attribute)
    inputs = [name for name in node.input if name]
    return bool(inputs) and all(name in constants for name in inputs)


def _nbytes(value: Any) -> int:
    return int(getattr(value, "nbytes", 0))
