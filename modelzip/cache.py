"""Content-addressed step cache, with entries that prove they are whole.

A step's key hashes everything the step reads: the input artifact's id, the
pass, its params and version, the seed, the device, the data it trains or
calibrates on (spec and file digests) and any file a parameter names (see
``modelzip.inputs``), as Olive's cache does for (pass, config, input model).
An unchanged recipe reuses every step; changing anything a step reads reruns
it and everything after it.

Entries are directories written atomically. A finished entry's
``complete.json`` lists the size and sha256 of every file in it; a lookup
checks them, so a truncated or edited entry is a miss (reported through
``on_damage``, removed, recomputed), never a silently wrong result. Metric
records carry a digest of their own content for the same reason.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelzip.atomic import TMP_SUFFIX, atomic_dir, remove_tree, write_text

# Bump when the layout of cache entries or what a key covers changes: old entries are then
# never matched (and `modelzip` ignores them).
CACHE_FORMAT = 2
_COMPLETE = "complete.json"

Damage = Callable[[str], None]


def content_key(**parts: Any) -> str:
    """A short stable hash of JSON-serializable ``parts``."""
    blob = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _json_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


class StepCache:
    def __init__(self, root: Path, *, enabled: bool = True, on_damage: Damage | None = None) -> None:
        self.root = Path(root)
        self.enabled = enabled
        self.on_damage = on_damage or (lambda message: None)

    def entry(self, key: str) -> Path:
        return self.root / "steps" / key

    def lookup(self, key: str) -> Path | None:
        """The finished, intact entry for ``key``, or None (always None when disabled).

        A damaged entry (a file missing, truncated or changed since it was stored, or an
        unreadable manifest) is reported, removed and treated as a miss.
        """
        path = self.entry(key)
        if not self.enabled or not path.exists():
            return None
        problem = _verify_entry(path, key)
        if problem is None:
            remove_tree(self.root / "partial" / key)  # left if a run died between commit and cleanup
            return path
        self.discard(key, problem)
        return None

    def discard(self, key: str, why: str) -> None:
        """Drop a damaged entry (the next lookup misses and the step runs again)."""
        self.on_damage(f"cache entry {key} is damaged ({why}): removed, the step runs again")
        remove_tree(self.entry(key))

    @contextmanager
    def store(self, key: str) -> Iterator[Path]:
        """Yield a scratch dir; on success it becomes the entry for ``key``."""
        with atomic_dir(self.entry(key)) as tmp:
            yield tmp
            manifest = {"key": key, "format": CACHE_FORMAT, "files": _manifest(tmp)}
            (tmp / _COMPLETE).write_text(json.dumps(manifest, indent=1))
        remove_tree(self.root / "partial" / key)

    def resume_dir(self, key: str) -> Path:
        """Where an unfinished step keeps state (e.g. epoch checkpoints) between attempts."""
        path = self.root / "partial" / key
        if not self.enabled:
            remove_tree(path)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def clean_interrupted(self) -> list[Path]:
        """Remove what interrupted writes left behind (temporary entries and files).

        Only safe while this process holds the cache lock: nobody else is writing.
        """
        removed = []
        for folder in (self.root / "steps", self.root / "metrics", self.root / "partial"):
            if not folder.is_dir():
                continue
            for leftover in folder.glob(f".*{TMP_SUFFIX}"):
                remove_tree(leftover)
                removed.append(leftover)
        return removed

    # Metrics (accuracy etc.) of an artifact on a given eval set, keyed separately
    # so the baseline's numbers are reused too.
    def load_metrics(self, key: str) -> dict[str, Any] | None:
        return self._load_record("metrics", key, "cached measurement")

    def save_metrics(self, key: str, metrics: dict[str, Any]) -> None:
        self._save_record("metrics", key, metrics)

    # A small fact worth not recomputing: which file defines a factory (sources.identity),
    # onnxruntime's providers, a chart of report.html. Kept apart from the measurements.
    def recall(self, token: str) -> str | None:
        found = self._load_record("memo", content_key(what="memo", token=token), "remembered value")
        return found.get("value") if found is not None else None

    def remember(self, token: str, value: str) -> None:
        self._save_record("memo", content_key(what="memo", token=token), {"value": value})

    def _load_record(self, folder: str, key: str, what: str) -> dict[str, Any] | None:
        path = self.root / folder / f"{key}.json"
        if not self.enabled or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
            value = record["value"]
            intact = record["key"] == key and record["digest"] == _json_digest(value) and isinstance(value, dict)
        except (OSError, ValueError, KeyError, TypeError):
            intact = False
        if intact:
            return value
        self.on_damage(f"{what} {path.name} is damaged: removed, computing again")
        path.unlink(missing_ok=True)
        return None

    def _save_record(self, folder: str, key: str, value: dict[str, Any]) -> None:
        record = {"key": key, "digest": _json_digest(value), "value": value}
        write_text(self.root / folder / f"{key}.json", json.dumps(record, indent=1))


def file_record(path: Path) -> dict[str, Any]:
    """What a manifest says of a file: {"size", "sha256"}."""
    return {"size": Path(path).stat().st_size, "sha256": file_sha256(path)}


def _manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file below ``directory``, by relative POSIX path."""
    return {path.relative_to(directory).as_posix(): file_record(path)
            for path in sorted(p for p in directory.rglob("*") if p.is_file())}


def _verify_entry(path: Path, key: str) -> str | None:
    """None when the entry at ``path`` is whole, else what is wrong with it."""
    try:
        manifest = json.loads((path / _COMPLETE).read_text())
        files = manifest["files"]
        if manifest.get("key") != key or manifest.get("format") != CACHE_FORMAT:
            return "its manifest belongs to another key or format"
        if not all(isinstance(n, str) and isinstance(e, dict) and isinstance(e.get("size"), int)
                   and isinstance(e.get("sha256"), str) for n, e in files.items()):
            return "complete.json lists files in another shape"
    except FileNotFoundError:
        return "unfinished: no complete.json"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"unreadable complete.json: {type(exc).__name__}"
    for name, expected in files.items():
        file = path / name
        try:
            size = os.stat(file).st_size
        except OSError:
            return f"{name} is missing"
        if size != expected["size"]:
            return f"{name} has {size} bytes, expected {expected['size']}"
        if file_sha256(file) != expected["sha256"]:
            return f"{name} changed since it was stored"
    return None

