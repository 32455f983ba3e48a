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


@pytest.fixture
def one_torch_thread():
    """Two busy shared cores: one torch thread is both faster and steadier here."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def finetune_harness(recipe_path: Path, registry):
    """``run(params, artifact=None, resume_dir=None) -> (artifact, ctx)``: the finetune pass run
    directly (no export, no measurement) on a seeded tiny_cnn with 4 classes, on the recipe's data;
    ``run.bundle`` and ``run.baseline`` are that data and model."""
    import torch

    from modelzip.artifacts import Artifact
    from modelzip.passes.finetune import FinetunePass
    from modelzip.recipe import load_recipe
    from modelzip.sources.data import load_data
    from modelzip.zoo import tiny_cnn

    recipe = load_recipe(recipe_path, registry=registry)
    bundle = load_data(recipe.data, base_dir=recipe.base_dir, seed=recipe.seed)
    torch.manual_seed(1)
    baseline = Artifact(kind="torch", input_shape=(1, 1, 28, 28), id="base", module=tiny_cnn(num_classes=4).eval())

    def run(params: dict, artifact: Artifact | None = None, resume_dir: Path | None = None):
        config = FinetunePass.Config.model_validate(params)
        ctx = pass_context(recipe, bundle, pass_name="finetune", work_dir=recipe.base_dir, baseline=baseline,
                           build_module=lambda: tiny_cnn(num_classes=4), resume_dir=resume_dir)
        return FinetunePass().run(artifact or baseline, config, ctx), ctx

    run.bundle, run.baseline = bundle, baseline
    return run


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
