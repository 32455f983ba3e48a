"""Fingerprints of what a step or a measurement reads besides its input artifact.

A cache key must change whenever the result could: the data specification,
the bytes of the dataset files, files a pass parameter names (a teacher
checkpoint), the device, and for passes that time models, the CPU and the
evaluation settings. Each fingerprint is plain JSON data for ``content_key``.

Dataset digests hash file contents (Fashion-MNIST's four files take about
0.1 s), except for image folders, whose thousands of files are fingerprinted
by (path, size, modification time) instead.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelzip.cache import file_sha256
from modelzip.recipe import DataSpec, Recipe

if TYPE_CHECKING:
    from modelzip.sources.identity import Memo

# Data keys that only decide which images are evaluated: measurements read them, steps do not.
EVAL_ONLY_KEYS = ("limit_eval",)
# Whether files may be downloaded changes no result (the files' digests are keyed).
NEVER_KEYED = ("download",)


def data_fingerprint(spec: DataSpec, base_dir: Path, *, for_eval: bool,
                     files: dict[str, str] | None = None) -> dict[str, Any]:
    """The data spec (eval-only keys dropped for steps) plus digests of the dataset's files
    (``files``: digests already computed by :func:`dataset_digests`)."""
    fields = spec.model_dump(mode="json")
    for key in NEVER_KEYED + (() if for_eval else EVAL_ONLY_KEYS):
        fields.pop(key, None)
    return {"spec": fields, "files": dataset_digests(spec, base_dir) if files is None else files}


def dataset_digests(spec: DataSpec, base_dir: Path, memo: Memo | None = None) -> dict[str, str]:
    """Digest per file the dataset is read from ({} when none are found: loading fails later).
    ``memo`` remembers which file defines a ``module:callable`` dataset (sources.identity)."""
    from modelzip.sources import locations as sources

    name = sources.FILES_FROM.get(spec.dataset, spec.dataset)
    searched = sources.dataset_search_paths(name, spec.root, base_dir)
    if name in sources.TORCHVISION_FOLDERS:
        directory = sources.find_idx_dir(name, searched)
        if directory is None:
            return {}
        files = [sources.find_idx_file(directory, stem) for pair in sources.IDX_FILES.values()
                 for stem in pair]
        return {path.name: file_sha256(path) for path in files if path is not None}
    if spec.dataset == "cifar10":
        folders = [p / "cifar-10-batches-py" for p in searched] + searched
        folder = next((p for p in folders if p.name == "cifar-10-batches-py" and p.is_dir()), None)
        return {} if folder is None else _content_digests(folder)
    if spec.dataset == "imagefolder":
        root = next((p for p in searched if (p / "train").is_dir()), None)
        return {} if root is None else {"listing": _listing_digest(root)}
    return _callable_digest(spec.dataset, base_dir, memo)


def _content_digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _listing_digest(root: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(root).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _callable_digest(ref: str, base_dir: Path, memo) -> dict[str, str]:
    """A ``module:callable`` dataset: the digest of the file defining it (its args are in the spec)."""
    from modelzip.sources.identity import defining_file

    source = defining_file(ref, base_dir, what="dataset", where="data.dataset", memo=memo)
    return {} if source is None else {source.name: file_sha256(source)}


def named_files(paths: list[str], recipe: Recipe) -> dict[str, str]:
    """Digest of each file a pass parameter names ("missing" if absent: the pass reports it)."""
    digests = {}
    for raw in paths:
        path = recipe.resolve(raw)
        digests[raw] = file_sha256(path) if path is not None and path.is_file() else "missing"
    return digests


def timing_fingerprint(recipe: Recipe, threads: int) -> dict[str, Any]:
    """What a step that times models depends on (prune's speed check, quantize's `prefer: faster`,
    merge): the CPU, threads, timing settings and how the timed sessions are set up."""
    from modelzip.envinfo import cpu_model
    from modelzip.evaluation.runtime import TIMING_METHOD

    return {"cpu": cpu_model(), "threads": threads, "evaluation": recipe.evaluation.timing_settings(),
            "batch_size": recipe.data.batch_size, "method": TIMING_METHOD}


def cpu_fingerprint() -> dict[str, Any]:
    """What a pass that follows the CPU's instruction set (round_to: auto) depends on."""
    import platform

    from modelzip.envinfo import cpu_flags, cpu_model

    return {"model": cpu_model(), "machine": platform.machine(), "flags": cpu_flags()}
