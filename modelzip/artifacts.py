"""Artifacts: what flows between passes (a torch module or an ONNX file).

An artifact carries its kind, example input shape, a content id and its
lineage. The pipeline stores and reloads artifacts; passes only build new ones
with :meth:`Artifact.evolve`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
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

    def evolve(self, **changes: Any) -> Artifact:
        """A new artifact derived from this one, e.g. ``evolve(kind="onnx", path=p, module=None)``."""
        return replace(self, **changes)

    def __post_init__(self) -> None:
        if self.kind == "torch" and self.module is None:
            raise ValueError("a torch artifact needs a module")
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


def load_artifact(directory: Path, build_module) -> Artifact:
    """Reload what :func:`save_artifact` wrote. ``build_module()`` gives a fresh architecture."""
    meta = json.loads((directory / "artifact.json").read_text())
    common = {"kind": meta["kind"], "input_shape": tuple(meta["input_shape"]), "id": meta["id"],
              "lineage": tuple(LineageEntry.from_json(e) for e in meta["lineage"])}
    if meta["kind"] == "onnx":
        return Artifact(path=directory / ONNX_FILE, **common)
    import torch

    from modelzip import structure

    module = build_module()
    structure.rebuild(module, json.loads((directory / STRUCTURE_FILE).read_text()))
    state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    return Artifact(module=module.eval(), **common)
