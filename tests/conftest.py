from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

FASHION = Path("/usr/share/datasets/fashion-mnist")
REPO = Path(__file__).resolve().parents[1]


def write_recipe(directory: Path, body: str, name: str = "recipe.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path


@pytest.fixture
def recipe_file(tmp_path):
    """Write a recipe (dedented) into tmp_path and return its path."""
    return lambda body, name="recipe.yaml": write_recipe(tmp_path, body, name)


needs_fashion = pytest.mark.skipif(
    not (FASHION / "t10k-images-idx3-ubyte.gz").exists() and not os.environ.get("MODELZIP_DATA"),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


def modelzip_cmd() -> list[str]:
    return [sys.executable, "-m", "modelzip"]
