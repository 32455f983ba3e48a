"""What the QAT test files share (test_quantize_qat.py, test_quantize_lowbit.py): the noisy synthetic
data, tiny_cnn trained on it, and the quantize pass run on a model outside the pipeline."""
from __future__ import annotations

from pathlib import Path

import torch

from modelzip import load_recipe
from modelzip.artifacts import Artifact
from modelzip.finetuning.loop import TrainSettings, fit
from modelzip.passes.quantize import QuantizeConfig, QuantizePass
from modelzip.recipe import DataSpec
from modelzip.sources.data import load_data
from modelzip.zoo import tiny_cnn
from tests.conftest import pass_context, synthetic_recipe

DATA_ARGS = {"train": 512, "eval": 256, "noise": 2.5}


def qat_recipe(step: str, name: str) -> str:
    """A synthetic recipe over the same data as ``synthetic_data``, latency off, one thread."""
    return synthetic_recipe(step, name=name, data_args="{train: 512, eval: 256, noise: 2.5}", val_samples=64,
                            evaluation="{latency: false, threads: 1}")


def synthetic_data():
    spec = DataSpec(dataset="modelzip.testing:synthetic_dataset", args=DATA_ARGS, batch_size=64, val_samples=64)
    return load_data(spec, base_dir=Path("."), seed=0)


def trained_tiny_cnn(data, epochs: int) -> torch.nn.Module:
    """tiny_cnn trained on the noisy bands: good, far from perfect (noise 2.5)."""
    torch.manual_seed(0)
    model = tiny_cnn(num_classes=4)
    fit(model, data, TrainSettings(epochs=epochs, lr=0.05, seed=0))
    return model.eval()


def torch_artifact(module) -> Artifact:
    return Artifact(kind="torch", input_shape=(1, 1, 28, 28), id="in", module=module)


def run_quantize(tmp_path: Path, registry, data, recipe_text: str, artifact: Artifact, **params):
    """QuantizePass.run on ``artifact`` with ``params``, in a fresh work folder; (produced, details)."""
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(recipe_text)
    recipe = load_recipe(recipe_path, registry=registry)
    work = tmp_path / f"work{len(list(tmp_path.glob('work*')))}"
    work.mkdir()
    ctx = pass_context(recipe, data, pass_name="quantize", work_dir=work, baseline=artifact,
                       build_module=lambda: tiny_cnn(num_classes=4))
    produced = QuantizePass().run(artifact, QuantizeConfig(**params), ctx)
    return produced, ctx.details
