"""Load YAML with ``safe_load`` semantics, within limits, remembering each key's line.

Recipe errors must name the YAML line of the offending key; PyYAML's
``safe_load`` drops that information, so we compose the node tree once, walk it
to record ``path -> line``, and construct plain Python data from that same tree.
Duplicate keys (silently "last one wins" in PyYAML) are reported as problems.

A recipe is small, so anything far past what a recipe needs is refused before it
can exhaust the machine: files over MAX_BYTES, text that is not UTF-8, nesting
deeper than MAX_DEPTH, more than MAX_NODES nodes, and documents whose aliases
expand to more than MAX_EXPANDED nodes (a 590-byte "billion laughs" file expands
to ~10**9; the walk visits each node object once and memoizes expanded sizes, so
it never expands anything itself).
Aliases that contain themselves and mappings or lists used as keys are refused too.
"""
from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any

import yaml

Path_ = tuple[str | int, ...]

MAX_BYTES = 1 << 20  # 1 MiB; the largest shipped recipe is ~3 KB
MAX_DEPTH = 50  # nesting levels, counted through aliases; a recipe needs ~6
MAX_NODES = 10_000  # as written (~200 in a recipe); PyYAML composes ~25k nodes/s
MAX_EXPANDED = 100_000  # after expanding aliases, as later code (pydantic, json) would
_SHOW = 80  # characters of a key shown in a key path


@dataclass(frozen=True)
class YamlIssue:
    """Why a text is not a YAML document we read: where (key path, line) and what."""

    path: Path_
    line: int | None
    message: str


class YamlInputError(ValueError):
    """The text is refused; ``syntax`` is True for plain YAML syntax errors."""

    def __init__(self, issues: list[YamlIssue], *, syntax: bool = False) -> None:
        self.issues = list(issues)
        self.syntax = syntax
        super().__init__("; ".join(issue.message for issue in self.issues))


@dataclass
class YamlDocument:
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    duplicates: list[tuple[Path_, int]] = field(default_factory=list)
    height: int = 0  # nesting levels of the expanded document (a scalar is 1)

    def line_of(self, path: Path_) -> int | None:
        """Line of ``path`` or of its nearest ancestor present in the file."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)


def parse_yaml(source: str | bytes, *, filename: str = "<recipe>") -> YamlDocument:
    """Parse one YAML document; raise ``YamlInputError`` (with lines) when it is refused."""
    text = _decode(source)
    loader = None
    try:
        loader = _BoundedLoader(text)  # its reader rejects control characters here
        node = loader.get_single_node()
        doc = YamlDocument(data=None, lines={(): 1})
        if node is None:
            return doc
        doc.lines[()] = node.start_mark.line + 1
        walker = _Walker(doc, loader.alias_marks)
        _, doc.height = walker.walk(node, (), 1)
        if walker.issues:
            raise YamlInputError(walker.issues)
        # Construct from the checked tree: parsing the text again would skip every limit.
        doc.data = loader.construct_document(node)
        return doc
    except _Limit as exc:
        raise YamlInputError([YamlIssue((), exc.problem_mark.line + 1, exc.problem)]) from None
    except yaml.YAMLError as exc:
        raise YamlInputError([_syntax_issue(exc, text)], syntax=True) from None
    finally:
        if loader is not None:
            loader.dispose()


def _decode(source: str | bytes) -> str:
    raw = source.encode("utf-8", "surrogatepass") if isinstance(source, str) else source
    if len(raw) > MAX_BYTES:
        line = raw.count(b"\n", 0, MAX_BYTES) + 1
        raise YamlInputError([YamlIssue((), line, f"the file is larger than the limit of {MAX_BYTES:,} "
                                        f"bytes (reached at line {line}); a recipe is a few KB: "
                                        "is this the right file?")])
    if isinstance(source, str):
        return source
    skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = skip + exc.start  # offset in the file
        line = raw.count(b"\n", 0, at) + 1
        column = at - (raw.rfind(b"\n", 0, at) + 1) + 1
        raise YamlInputError([YamlIssue((), line, f"not UTF-8 text: byte 0x{raw[at]:02x} at offset {at} "
                                        f"(line {line}, column {column}); save the file as UTF-8")]) from None


def _syntax_issue(exc: yaml.YAMLError, text: str) -> YamlIssue:
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        return YamlIssue((), line, f"invalid YAML: character #x{exc.character:04x} is not allowed "
                                   "(special characters must be written as escapes in quotes)")
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if context and problem.startswith("but "):  # "expected a single document ..., but found another"
        problem = f"{context}, {problem}"
    return YamlIssue((), mark.line + 1 if mark is not None else None, f"invalid YAML: {problem}")


class _Limit(yaml.MarkedYAMLError):
    """A limit reached while composing; becomes a YamlInputError, not a syntax error."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer stops at MAX_DEPTH levels and MAX_NODES events
    (PyYAML composes recursively: 1,000 nested `[` would raise RecursionError)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._events = 0
        # (id(sequence node), index) -> where an alias item was written: the node it
        # refers to carries the line of its anchor, and errors should point at the alias.
        self.alias_marks: dict[tuple[int, int], yaml.Mark] = {}

    def compose_node(self, parent: Any, index: Any) -> yaml.Node:
        self._depth += 1
        self._events += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Limit(problem=f"nested deeper than {MAX_DEPTH} levels",
                             problem_mark=self.peek_event().start_mark)
            if self._events > MAX_NODES:
                raise _Limit(problem=f"more than {MAX_NODES:,} YAML nodes; a recipe needs a few hundred",
                             problem_mark=self.peek_event().start_mark)
            if isinstance(index, int) and self.check_event(yaml.AliasEvent):
                self.alias_marks[(id(parent), index)] = self.peek_event().start_mark
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # Scalars PyYAML's resolver accepts can still fail to build: `2001-13-45` (a date),
        # an int of 5,000 digits (Python's int-size limit). Report them at their line.
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, OverflowError, TypeError) as exc:
            reason = str(exc).split(";")[0]  # drop Python's advice (set_int_max_str_digits)
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {_clip(repr(getattr(node, 'value', '?')))}: {reason}",
                node.start_mark) from None


class _Walker:
    """Records lines and duplicates, and measures the expanded document, visiting each
    node object once: an alias to a node already measured reuses its (size, height)."""

    def __init__(self, doc: YamlDocument, alias_marks: dict[tuple[int, int], yaml.Mark]) -> None:
        self.doc = doc
        self.alias_marks = alias_marks
        self.measured: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, height)
        self.active: set[int] = set()  # nodes on the current path: meeting one again is a cycle
        self.issues: list[YamlIssue] = []

    def walk(self, node: yaml.Node, path: Path_, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in self.active:
            self.fail(path, "an alias refers to a node that contains it (a recursive alias); "
                            "YAML data here must be a tree")
        if key not in self.measured:
            self.active.add(key)
            self.measured[key] = self.children(node, path, depth)
            self.active.discard(key)
        size, height = self.measured[key]
        if depth + height - 1 > MAX_DEPTH:
            self.fail(path, f"nested deeper than {MAX_DEPTH} levels (counting through aliases)")
        return size, height

    def children(self, node: yaml.Node, path: Path_, depth: int) -> tuple[int, int]:
        if depth > MAX_DEPTH:
            self.fail(path, f"nested deeper than {MAX_DEPTH} levels (counting through aliases)")
        size, height = 1, 0
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if not isinstance(key_node, yaml.ScalarNode):
                    kind = "mapping" if isinstance(key_node, yaml.MappingNode) else "list"
                    self.issues.append(YamlIssue(path, line, f"a {kind} used as a key; keys must be "
                                                             "plain names like `batch_size`"))
                    size += 1
                    continue
                child = path + (key_node.value,)
                if key_node.value in seen:
                    self.doc.duplicates.append((child, line))
                seen.add(key_node.value)
                self.doc.lines.setdefault(child, line)
                value_size, value_height = self.walk(value_node, child, depth + 1)
                size, height = self.add(size, height, 1 + value_size, value_height)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = path + (index,)
                mark = self.alias_marks.get((id(node), index), item.start_mark)
                self.doc.lines.setdefault(child, mark.line + 1)
                size, height = self.add(size, height, *self.walk(item, child, depth + 1))
        if size > MAX_EXPANDED:
            self.fail(path, f"expands to more than {MAX_EXPANDED:,} nodes (aliases count each time "
                            "they are used); a recipe needs a few hundred")
        return size, height + 1

    @staticmethod
    def add(size: int, height: int, child_size: int, child_height: int) -> tuple[int, int]:
        # Stop summing early: a billion laughs would otherwise build numbers of 10**9 nodes.
        return min(size + child_size, MAX_EXPANDED + 1), max(height, child_height)

    def fail(self, path: Path_, message: str) -> None:
        raise YamlInputError([YamlIssue(path, self.doc.line_of(path), message)])


def format_path(path: Path_) -> str:
    """``("passes", 0, "export", "opset")`` -> ``passes[0].export.opset``.

    Keys are shown as written unless they are long (clipped) or hold characters a
    terminal would act on (shown quoted, with escapes).
    """
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + _show_key(str(part))
    return out


def _show_key(key: str) -> str:
    shown = key if key.isprintable() and key else repr(key)
    return _clip(shown)


def _clip(text: str, limit: int = _SHOW) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
