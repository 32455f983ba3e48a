"""What the built-in targets share: naming the ONNX nodes a converter's message points at,
capturing what a C++ converter prints, and the ONNX model's input and output names."""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from modelzip.errors import TargetError

MESSAGE_CHARS = 1500  # the tail of a converter's output kept in an error


def culprits(onnx_path: Path, message: str) -> tuple[tuple[str, str], ...]:
    """(node name, op type) of each node of ``onnx_path`` whose op type the message names as a
    word, e.g. "No conversion rule found for operations: Frobnicate": the node a user must change."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", message))
    return tuple((node.name or f"#{i}", node.op_type) for i, node in enumerate(graph.node) if node.op_type in words)


def conversion_error(target: str, onnx_path: Path, message: str, fix: str) -> TargetError:
    """A TargetError naming the nodes and ops ``message`` points at (see culprits)."""
    nodes = culprits(onnx_path, message)
    named = "; ".join(f"node {name!r} (op {op})" for name, op in nodes)
    what = f"{target} cannot convert the model" + (f": {named}" if named else "")
    return TargetError(what, nodes=nodes, got=message.strip()[-MESSAGE_CHARS:], fix=fix)


def io_names(onnx_path: Path) -> tuple[list[str], list[str]]:
    """The graph's input names (initializers excluded) and output names, in order."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers], [o.name for o in graph.output]


@contextmanager
def captured_output() -> Iterator[list[str]]:
    """Capture what C/C++ code writes to file descriptors 1 and 2 (Python's sys.stdout cannot
    see it); the yielded list holds the text once the block ends."""
    text: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(1), os.dup(2)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield text
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            text.append(sink.read().decode(errors="replace"))
