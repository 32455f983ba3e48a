"""Where a run's input files are: a built-in dataset's files, a model's checkpoint.

Nothing here imports torch: cache keys are computed from these files before anything loads.
"""
from __future__ import annotations

import os
from pathlib import Path

from modelzip.errors import InputError

DATA_ENV = "MODELZIP_DATA"
SYSTEM_DATA_DIR = Path("/usr/share/datasets")
DOWNLOAD_DIR = Path("~/.cache/modelzip/data")

# MNIST-format file stems per split (each may also end in .gz) and the folder
# torchvision downloads them into: <root>/<folder>/raw/.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "eval": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
TORCHVISION_FOLDERS = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}
APT_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}
# Built-in datasets made from another one's files (sources.multi_fashion): searched, digested
# and downloaded as that one.
FILES_FROM = {"multi-fashion": "fashion-mnist"}



def dataset_search_paths(name: str, root: str | None, base_dir: Path) -> list[Path]:
    """Directories searched for a built-in dataset's files, in order (see module doc)."""
    if root is not None:
        path = Path(root).expanduser()
        return [path if path.is_absolute() else Path(base_dir) / path]
    paths = []
    if os.environ.get(DATA_ENV):
        paths.append(Path(os.environ[DATA_ENV]).expanduser() / name)
    paths += [SYSTEM_DATA_DIR / name, DOWNLOAD_DIR.expanduser() / name]
    return paths


def download_dir(name: str, root: str | None, base_dir: Path) -> Path:
    """Where ``download: true`` writes: the first writable-by-intent search path."""
    if root is not None or os.environ.get(DATA_ENV):
        return dataset_search_paths(name, root, base_dir)[0]
    return DOWNLOAD_DIR.expanduser() / name


def dataset_not_found(name: str, searched: list[Path], expected: str) -> InputError:
    fixes = [f"`apt-get install {APT_PACKAGES[name]}`"] if name in APT_PACKAGES else []
    fixes += ["set `data.root` to a directory holding the files", "set `data.download: true`"]
    return InputError(
        f"dataset {name!r} not found", where="data.dataset",
        got="searched " + ", ".join(str(p) for p in searched), expected=expected,
        fix=", or ".join(fixes),
    )


def find_idx_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_idx_dir(name: str, searched: list[Path]) -> Path | None:
    """The first directory holding all four files, flat or in torchvision's layout."""
    stems = [stem for pair in IDX_FILES.values() for stem in pair]
    for path in searched:
        for directory in (path, path / TORCHVISION_FOLDERS[name] / "raw"):
            if all(find_idx_file(directory, stem) for stem in stems):
                return directory
    return None


def resolve_checkpoint(path: str | None, base_dir: Path) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    return checkpoint_file(p if p.is_absolute() else base_dir / p, where="model.checkpoint")


def resolve_onnx_model(path: str, base_dir: Path) -> Path:
    """The file an "onnx:<file>" model.source names; an InputError when it is not a file."""
    p = Path(path).expanduser()
    p = p if p.is_absolute() else base_dir / p
    if not p.is_file():
        raise InputError("ONNX model file not found", where="model.source", got=str(p),
                         expected="an fp32 .onnx file (e.g. written by torch.onnx.export)",
                         fix="check the path after 'onnx:' (relative paths start at the recipe's directory)")
    return p


def checkpoint_file(path: Path, *, where: str) -> Path:
    """``path`` when it is a file; an InputError at ``where`` when it is missing or a directory."""
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in (".pt", ".pth", ".bin", ".ckpt"))[:5]
        raise InputError("the checkpoint path is a directory, not a file", where=where, got=str(path),
                         expected="a state_dict file saved with torch.save(model.state_dict(), path)",
                         fix=f"name a file inside it ({', '.join(inside)})" if inside
                         else "name the checkpoint file, not its folder")
    if not path.is_file():
        raise InputError("checkpoint file not found", where=where, got=str(path),
                         expected="a state_dict saved with torch.save(model.state_dict(), path)",
                         fix="check the path (relative paths start at the recipe's directory)")
    return path


