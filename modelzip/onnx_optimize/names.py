"""Short names for tensors and nodes, and the map back to the names the exporter wrote.

Exporters and quantizers name tensors after module paths and their own suffixes
("layer2.0.downsample.0.weight_bias_quantized_zero_point"): in a 64 k-parameter int8 model
the names alone are a sixth of the file. Every tensor and node gets the next name of
a, b, ..., z, a0, a1, ..., zz (lower case and digits only, so names that become file names,
as with external data, cannot collide on case-insensitive file systems); tensors and nodes
draw from one sequence, so no tensor shares a node's name. The graph's inputs and outputs
keep their names: callers feed and read them.
"""
from __future__ import annotations

import itertools
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modelzip.onnx_optimize.graph import all_graphs

if TYPE_CHECKING:
    import onnx

_FIRST = string.ascii_lowercase
_REST = string.ascii_lowercase + string.digits


@dataclass
class NameMap:
    """Old name -> new name, for tensors and for nodes."""

    tensors: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, str] = field(default_factory=dict)

    def composed(self, earlier: NameMap | None) -> NameMap:
        """This map applied after ``earlier`` (a file optimized again): keys stay the exporter's names."""
        if earlier is None:
            return self
        return NameMap(_compose(earlier.tensors, self.tensors), _compose(earlier.nodes, self.nodes))

    def to_json(self, schema: str) -> dict[str, object]:
        return {"schema": schema, "tensors": self.tensors, "nodes": self.nodes}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> NameMap:
        tensors, nodes = data.get("tensors"), data.get("nodes")
        if not isinstance(tensors, dict) or not isinstance(nodes, dict):
            raise ValueError("a name map has 'tensors' and 'nodes' mappings")
        return cls(dict(tensors), dict(nodes))


def _compose(first: Mapping[str, str], second: Mapping[str, str]) -> dict[str, str]:
    # A name the second map lacks was removed by then (folded, or shared with another tensor).
    through = {old: second[middle] for old, middle in first.items() if middle in second}
    reached = set(first.values())
    through.update({old: new for old, new in second.items() if old not in reached})
    return through


def short_names(reserved: set[str]) -> Iterator[str]:
    """a, b, ..., z, a0, ..., zz, a00, ...: lower case and digits, never one of ``reserved``."""
    for length in itertools.count(1):
        for rest in itertools.product(_REST, repeat=length - 1):
            for first in _FIRST:
                name = first + "".join(rest)
                if name not in reserved:
                    yield name


def shorten(model: onnx.ModelProto, aliases: Mapping[str, str] | None = None) -> NameMap:
    """Rename every tensor and node of the model's graphs (in place) but the main graph's
    inputs and outputs; the map. ``aliases`` ({name removed earlier: name it now reads}, from
    sharing identical initializers) join the map under the kept tensor's new name."""
    graph = model.graph
    reserved = {value.name for value in [*graph.input, *graph.output]}
    fresh = short_names(reserved)
    names = NameMap()

    def tensor(name: str) -> str:
        if not name or name in reserved:
            return name
        if name not in names.tensors:
            names.tensors[name] = next(fresh)
        return names.tensors[name]

    for inner in all_graphs(graph):
        for init in inner.initializer:
            init.name = tensor(init.name)
        for sparse in inner.sparse_initializer:
            sparse.values.name = tensor(sparse.values.name)
        for value in [*inner.input, *inner.output, *inner.value_info]:
            value.name = tensor(value.name)
        for node in inner.node:
            node.input[:] = [tensor(name) for name in node.input]
            node.output[:] = [tensor(name) for name in node.output]
            if node.name:
                short = next(fresh)
                names.nodes[node.name] = short
                node.name = short
        for annotation in inner.quantization_annotation:
            annotation.tensor_name = tensor(annotation.tensor_name)
    for removed, kept in (aliases or {}).items():
        names.tensors[removed] = names.tensors.get(kept, kept)
    return names
