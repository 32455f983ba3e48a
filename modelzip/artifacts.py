"""Artifacts: what flows between passes (a torch module or an ONNX file).

An artifact carries its kind, example input shape, a content id and its
lineage. The pipeline stores and reloads artifacts; passes only build new ones
with :meth:`Artifact.evolve`.

A reloaded torch artifact is lazy: its weights load (and torch is imported) only when
something needs the module. A fully cached rerun needs only ids, so it never does.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from modelzip.plugin import ArtifactKind

WEIGHTS_FILE = "weights.pt"
STRUCTURE_FILE = "structure.json"
ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class LineageEntry:
    """How an artifact was made: which pass, with what, from which parent."""

    pass_name: str
    params: dict[str, Any]
    parent: str
    key: str
    wall_time_s: float

    def to_json(self) -> dict[str, Any]:
        return {"pass": self.pass_name, "params": self.params, "parent": self.parent,
                "key": self.key, "wall_time_s": round(self.wall_time_s, 4)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LineageEntry:
        return cls(d["pass"], d["params"], d["parent"], d["key"], d["wall_time_s"])


@dataclass(frozen=True)
class Artifact:
    kind: ArtifactKind
    input_shape: tuple[int, ...]
    id: str
    module: Any = None  # torch.nn.Module when kind == "torch"
    path: Path | None = None  # the ONNX file when kind == "onnx"
    lineage: tuple[LineageEntry, ...] = field(default=())
    # Loads the module of a lazy torch artifact (module None); called once, however often asked.
    loader: Callable[[], Any] | None = field(default=None, compare=False, repr=False)

    def evolve(self, **changes: Any) -> Artifact:
        """A new artifact derived from this one, e.g. ``evolve(kind="onnx", path=p, module=None)``.

        New content (a module or a file) is not what this artifact's id names, so unless ``id`` is
        given it gets a provisional one, never the parent's: a lookup by id (the pipeline's export
        of the input, PassContext.exported) cannot mistake a trained model for its input. The
        pipeline names a pass's output by its cache key."""
        if "module" in changes:  # a new module replaces what the loader would have loaded
            changes.setdefault("loader", None)
        if ("module" in changes or "path" in changes) and "id" not in changes:
            changes["id"] = f"{self.id}+unsaved-{uuid.uuid4().hex[:12]}"
        return replace(self, **changes)

    def loaded(self) -> Artifact:
        """This artifact with its module in memory (itself when it already is, or is ONNX)."""
        if self.module is not None or self.loader is None:
            return self
        return replace(self, module=self.loader(), loader=None)

    def __post_init__(self) -> None:
        if self.kind == "torch" and self.module is None and self.loader is None:
            raise ValueError("a torch artifact needs a module (or a loader)")
        if self.kind == "onnx" and self.path is None:
            raise ValueError("an onnx artifact needs a path")


def save_artifact(artifact: Artifact, directory: Path) -> None:
    """Write ``artifact`` into ``directory`` (a fresh temporary dir owned by the cache)."""
    import shutil

    if artifact.kind == "torch":
        from modelzip import structure

        structure.save(artifact.module, directory / WEIGHTS_FILE, directory / STRUCTURE_FILE)
    elif Path(artifact.path).resolve() != (directory / ONNX_FILE).resolve():
        shutil.copyfile(artifact.path, directory / ONNX_FILE)
    meta = {"kind": artifact.kind, "input_shape": list(artifact.input_shape), "id": artifact.id,
            "lineage": [e.to_json() for e in artifact.lineage]}
    (directory / "artifact.json").write_text(json.dumps(meta, indent=1))


def load_artifact(directory: Path, build_module, *, lazy: bool = False) -> Artifact:
    """Reload what :func:`save_artifact` wrote. ``build_module()`` gives a fresh architecture.
    ``lazy``: a torch artifact's weights load when :meth:`Artifact.loaded` asks for them."""
    meta = json.loads((directory / "artifact.json").read_text())
    common = {"kind": meta["kind"], "input_shape": tuple(meta["input_shape"]), "id": meta["id"],
              "lineage": tuple(LineageEntry.from_json(e) for e in meta["lineage"])}
    if meta["kind"] == "onnx":
        return Artifact(path=directory / ONNX_FILE, **common)
    if lazy:
        return Artifact(loader=cache(lambda: load_module(directory, build_module)), **common)
    return Artifact(module=load_module(directory, build_module), **common)


def load_module(directory: Path, build_module) -> Any:
    """The torch module a torch artifact's directory holds, in eval mode."""
    import torch

    from modelzip import structure

    module = build_module()
    structure.rebuild(module, json.loads((directory / STRUCTURE_FILE).read_text()))
    state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    return module.eval()
