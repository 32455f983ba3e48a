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


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    """tmp_path/tiny.pt: the state_dict of a seeded, untrained tiny_cnn with 4 classes."""
    import torch

    from modelzip.zoo import tiny_cnn

    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save(tiny_cnn(num_classes=4).state_dict(), path)
    return path


def pass_context(recipe, data, *, pass_name: str, work_dir: Path, build_module, baseline=None,
                 resume_dir: Path | None = None):
    """The context the pipeline would give step 0 (modelzip.testing.make_context, the public helper)."""
    from modelzip.testing import make_context

    return make_context(pass_name, work_dir=work_dir, recipe=recipe, data=data, baseline=baseline,
                        build_module=build_module, resume_dir=resume_dir)


needs_fashion = pytest.mark.skipif(
    not (FASHION / "t10k-images-idx3-ubyte.gz").exists() and not os.environ.get("MODELZIP_DATA"),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


def modelzip_cmd() -> list[str]:
    return [sys.executable, "-m", "modelzip"]


def synthetic_recipe(passes: str, *, name: str = "tiny", seed: bool = True,
                     model: str = "modelzip.zoo:tiny_cnn", model_args: str = "{num_classes: 4}",
                     checkpoint: str | None = None, data_args: str = "{train: 256, eval: 128}",
                     val_samples: int = 32, evaluation: str = "{warmup: 1, repeats: 5}") -> str:
    """The tiny-model, synthetic-data recipe the tests share (runs in seconds).

    ``passes`` is the body of the `passes:` list, e.g. "  - export: {}".
    """
    lines = ["version: 1", f"name: {name}", *(["seed: 0"] if seed else []), "model:", f"  source: {model}",
             f"  args: {model_args}", *([f"  checkpoint: {checkpoint}"] if checkpoint else []),
             "  input_shape: [1, 1, 28, 28]", "data:", "  dataset: modelzip.testing:synthetic_dataset",
             f"  args: {data_args}", "  batch_size: 64", f"  val_samples: {val_samples}", "passes:",
             passes.rstrip("\n"), f"evaluation: {evaluation}", "output: out"]
    return "\n" + "\n".join(lines) + "\n"
