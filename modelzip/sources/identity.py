"""Content ids of a run's inputs, computed without importing torch or running user code
when a cache can vouch for what an import would find.

A fully cached rerun needs the input model's id (the first link of every cache key) and
nothing else of the model, so the id must not cost the import of torch: it hashes the
model spec, the checkpoint file and the file that defines the factory.

Which file defines ``module:callable`` is only known for sure by importing the module (the
callable may be re-exported from another file). The answer is remembered under the named
module's own path and digest: while that file is unchanged, it still binds the callable to
the same defining file, whose digest is hashed afresh on every run. A changed named module
means importing it again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol

from modelzip.cache import file_sha256
from modelzip.recipe import ModelSpec
from modelzip.sources.locations import resolve_checkpoint, resolve_onnx_model
from modelzip.sources.user_code import callable_source_file, module_file


class Memo(Protocol):
    """Where the defining file of a ``module:callable`` is remembered (the step cache)."""

    def recall(self, token: str) -> str | None: ...

    def remember(self, token: str, value: str) -> None: ...


def model_fingerprint(spec: ModelSpec, base_dir: Path, memo: Memo | None = None) -> str:
    """Content id of the input model: spec, checkpoint bytes and the factory's source file (an
    ONNX input: spec and file bytes)."""
    digest = hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode())
    if spec.onnx_file is not None:
        digest.update(file_sha256(resolve_onnx_model(spec.onnx_file, base_dir)).encode())
        return digest.hexdigest()[:16]
    checkpoint = resolve_checkpoint(spec.checkpoint, base_dir)
    if checkpoint is not None:
        digest.update(file_sha256(checkpoint).encode())
    if not spec.source.startswith("torchvision:"):
        source_file = defining_file(spec.source, base_dir, what="model", where="model.source", memo=memo)
        if source_file is not None:
            digest.update(file_sha256(source_file).encode())
    return digest.hexdigest()[:16]


def defining_file(ref: str, base_dir: Path, *, what: str, where: str, memo: Memo | None = None) -> Path | None:
    """The file defining the ``module:callable`` ``ref`` (None for builtins), from ``memo``
    when the named module's file is unchanged since it was imported, else by importing it."""
    named = module_file(ref, base_dir)
    token = None if named is None or memo is None else f"{ref}|{named}|{file_sha256(named)}"
    if token is not None:
        recalled = memo.recall(token)
        if recalled == "":
            return None
        if recalled is not None and Path(recalled).is_file():
            return Path(recalled)
    found = callable_source_file(ref, base_dir, what=what, where=where)
    if token is not None:
        memo.remember(token, "" if found is None else str(found))
    return found
