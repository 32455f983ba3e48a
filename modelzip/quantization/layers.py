"""Which ONNX nodes are layers, what their torch modules are called, what `exclude:` matches.

A node is known by several names, any of which an `exclude:` glob may match:

- its ONNX node name (``node_linear_1``);
- the torch module of its weight: exporters keep parameter names on initializers
  (``classifier.4.weight`` -> ``classifier.4``), which also names a Conv that BatchNorm was
  folded into after the conv, not after the BatchNorm;
- the module recorded by the exporter in node_modules.json beside the ONNX file.
"""
from __future__ import annotations

import difflib
import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path

# Ops whose constant weight makes them a "layer": what quantization actually compresses.
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN",
                          "Attention", "Gather"})
_WEIGHT_SUFFIXES = (".weight", ".weight_orig", ".W", ".embedding")


@dataclass(frozen=True)
class Layer:
    node: str  # ONNX node name: what the quantizers take
    op_type: str
    label: str  # torch module name where known, else the node name: what the report shows
    aliases: tuple[str, ...]  # every name an exclude pattern may match


def load_module_map(directory: Path) -> dict[str, str]:
    """node name -> torch module, from node_modules.json in ``directory`` ({} if absent)."""
    path = directory / "node_modules.json"
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text())
    return {node: value for node, value in raw.items() if isinstance(value, str) and value}


def all_aliases(model, module_map: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """node name -> the names it is known by (node name first)."""
    float_initializers = _float_initializers(model)
    aliases: dict[str, tuple[str, ...]] = {}
    for node in model.graph.node:
        names = [node.name]
        names += [_module_of_weight(i) for i in node.input if i in float_initializers]
        if node.name in module_map:
            names.append(module_map[node.name])
        aliases[node.name] = tuple(dict.fromkeys(n for n in names if n))
    return aliases


def find_layers(model, module_map: dict[str, str]) -> list[Layer]:
    """The weighted nodes (a constant float input of rank >= 2), in graph order."""
    float_initializers = _float_initializers(model)
    names = all_aliases(model, module_map)
    layers = []
    for node in model.graph.node:
        weights = [i for i in node.input if float_initializers.get(i, 0) >= 2]
        if node.op_type in WEIGHTED_OPS and weights:
            label = _module_of_weight(weights[0]) or module_map.get(node.name) or node.name
            layers.append(Layer(node.name, node.op_type, label, names[node.name]))
    return layers


def match_exclude(patterns: tuple[str, ...], aliases: dict[str, tuple[str, ...]]
                  ) -> tuple[dict[str, list[str]], list[str]]:
    """({pattern: matched node names}, patterns that matched nothing)."""
    matched: dict[str, list[str]] = {}
    for pattern in patterns:
        matched[pattern] = [node for node, names in aliases.items()
                            if any(fnmatch.fnmatchcase(name, pattern) for name in names)]
    return matched, [p for p, nodes in matched.items() if not nodes]


def suggest_names(pattern: str, aliases: dict[str, tuple[str, ...]], limit: int = 3) -> list[str]:
    known = sorted({name for names in aliases.values() for name in names})
    return difflib.get_close_matches(pattern, known, n=limit, cutoff=0.5)


def _float_initializers(model) -> dict[str, int]:
    """Float initializer name -> rank."""
    from onnx import TensorProto

    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
    return {init.name: len(init.dims) for init in model.graph.initializer if init.data_type in floats}


def _module_of_weight(initializer: str) -> str | None:
    for suffix in _WEIGHT_SUFFIXES:
        if initializer.endswith(suffix) and len(initializer) > len(suffix):
            return initializer[: -len(suffix)]
    return None
