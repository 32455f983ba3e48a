"""`python -m modelzip.sources.download NAME DIR`: fetch a built-in dataset with torchvision.

Used by `make demo`/`make test` only when neither the Debian package nor a local
copy exists. Tests never download.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

_TORCHVISION = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST", "cifar10": "CIFAR10"}


def download(name: str, target: Path) -> None:
    import torchvision

    if name not in _TORCHVISION:
        raise SystemExit(f"download: no download for {name!r} (known: {', '.join(_TORCHVISION)})")
    cls = getattr(torchvision.datasets, _TORCHVISION[name])
    with tempfile.TemporaryDirectory() as tmp:
        for train in (True, False):
            cls(root=tmp, train=train, download=True)
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if name == "cifar10":
            shutil.copytree(Path(tmp) / "cifar-10-batches-py", staging / "cifar-10-batches-py")
        else:  # keep the compressed idx files, as the Debian packages ship them
            for gz in (Path(tmp) / _TORCHVISION[name] / "raw").glob("*.gz"):
                shutil.copy(gz, staging / gz.name)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m modelzip.sources.download NAME DIR", file=sys.stderr)
        return 2
    try:
        download(argv[0], Path(argv[1]))
    except Exception as exc:  # network errors come in many types; report and fail
        print(f"download: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"download: {argv[0]} saved in {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
