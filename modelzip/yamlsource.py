"""Load YAML with ``safe_load`` semantics while remembering each key's line.

Recipe errors must name the YAML line of the offending key; PyYAML's
``safe_load`` drops that information, so we compose the node tree once and
record ``path -> line`` before constructing plain Python data from it.
Duplicate keys (silently "last one wins" in PyYAML) are reported as problems.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path_ = tuple[str | int, ...]


@dataclass
class YamlDocument:
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    duplicates: list[tuple[Path_, int]] = field(default_factory=list)

    def line_of(self, path: Path_) -> int | None:
        """Line of ``path`` or of its nearest ancestor present in the file."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)


def parse_yaml(text: str, *, filename: str = "<recipe>") -> YamlDocument:
    """Parse ``text``; raises ``yaml.YAMLError`` (with a mark) on bad syntax."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    doc = YamlDocument(data=None)
    if node is None:
        return doc
    doc.lines[()] = node.start_mark.line + 1
    _walk(node, (), doc)
    doc.data = yaml.safe_load(text)
    return doc


def _walk(node: yaml.Node, path: Path_, doc: YamlDocument) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            child = path + (key,)
            if key in seen:
                doc.duplicates.append((child, key_node.start_mark.line + 1))
            seen.add(key)
            doc.lines[child] = key_node.start_mark.line + 1
            _walk(value_node, child, doc)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = path + (index,)
            doc.lines[child] = item.start_mark.line + 1
            _walk(item, child, doc)


def format_path(path: Path_) -> str:
    """``("passes", 0, "export", "opset")`` -> ``passes[0].export.opset``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
