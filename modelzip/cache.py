"""Content-addressed step cache.

A step's key hashes (input artifact id, pass name, params, pass version, seed),
as Olive's cache does, so an unchanged recipe reuses every step and editing
pass k reruns from k. Entries are directories written atomically: an
interrupted run leaves no half entry and resumes from the last finished step.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelzip.atomic import atomic_dir, write_text

# Bump when the layout of cache entries changes.
CACHE_FORMAT = 1
_COMPLETE = "complete.json"


def content_key(**parts: Any) -> str:
    """A short stable hash of JSON-serializable ``parts``."""
    blob = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class StepCache:
    def __init__(self, root: Path, *, enabled: bool = True) -> None:
        self.root = Path(root)
        self.enabled = enabled

    def entry(self, key: str) -> Path:
        return self.root / "steps" / key

    def lookup(self, key: str) -> Path | None:
        """The finished entry for ``key``, or None (always None when disabled)."""
        path = self.entry(key)
        if self.enabled and (path / _COMPLETE).is_file():
            return path
        return None

    @contextmanager
    def store(self, key: str) -> Iterator[Path]:
        """Yield a scratch dir; on success it becomes the entry for ``key``."""
        with atomic_dir(self.entry(key)) as tmp:
            yield tmp
            (tmp / _COMPLETE).write_text(json.dumps({"key": key}))
        shutil.rmtree(self.root / "partial" / key, ignore_errors=True)

    def resume_dir(self, key: str) -> Path:
        """Where an unfinished step keeps state (e.g. epoch checkpoints) between attempts."""
        path = self.root / "partial" / key
        if not self.enabled:
            shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # Metrics (accuracy etc.) of an artifact on a given eval set, keyed separately
    # so the baseline's numbers are reused too.
    def load_metrics(self, key: str) -> dict[str, Any] | None:
        path = self.root / "metrics" / f"{key}.json"
        if self.enabled and path.is_file():
            return json.loads(path.read_text())
        return None

    def save_metrics(self, key: str, metrics: dict[str, Any]) -> None:
        write_text(self.root / "metrics" / f"{key}.json", json.dumps(metrics, indent=1))
