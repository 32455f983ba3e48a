"""The pieces a pass test needs: synthetic data, a tiny model as an artifact, a recipe and a
context (re-exported by :mod:`modelzip.testing`)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from modelzip.artifacts import Artifact
    from modelzip.context import PassContext
    from modelzip.plugin import ArtifactKind
    from modelzip.recipe import Recipe
    from modelzip.sources.data import DataBundle

INPUT_SHAPE = (1, 1, 28, 28)  # what tiny_artifact and make_context's recipe use
NUM_CLASSES = 4  # synthetic_dataset's default

# The recipe make_context builds when given none: tiny_cnn on synthetic data, a few seconds at most.
_RECIPE = """\
version: 1
name: contract
seed: 0
model:
  source: modelzip.zoo:tiny_cnn
  args: {num_classes: 4}
  input_shape: [1, 1, 28, 28]
data:
  dataset: modelzip.testing:synthetic_dataset
  args: {train: 256, eval: 128}
  batch_size: 64
  val_samples: 32
evaluation: {warmup: 1, repeats: 5}
"""


def synthetic_dataset(train: int = 512, eval: int = 256, channels: int = 1, size: int = 28,
                      classes: int = 4, seed: int = 0, noise: float = 0.3):
    """(train, eval) TensorDatasets of noise images whose class is a brightened horizontal band.

    ``noise`` sets how hard it is: 0.3 is learned perfectly in an epoch, 3.0 is not.
    """
    import torch
    from torch.utils.data import TensorDataset

    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> TensorDataset:
        labels = torch.randint(0, classes, (n,), generator=generator)
        images = noise * torch.randn((n, channels, size, size), generator=generator)
        band = size // classes
        for c in range(classes):
            images[labels == c, :, c * band:(c + 1) * band, :] += 1.0
        return TensorDataset(images, labels)

    return split(train), split(eval)


def tiny_artifact(kind: ArtifactKind = "torch", *, work_dir: str | Path | None = None, seed: int = 0,
                  artifact_id: str = "tiny") -> Artifact:
    """A seeded, untrained ``modelzip.zoo.tiny_cnn`` (4 classes, 1x28x28 input) as a torch
    artifact, or exported to ``<work_dir>/tiny.onnx`` (dynamic batch) as an ONNX artifact."""
    import torch

    from modelzip.artifacts import Artifact
    from modelzip.zoo import tiny_cnn

    torch.manual_seed(seed)
    module = tiny_cnn(num_classes=NUM_CLASSES).eval()
    if kind == "torch":
        return Artifact(kind="torch", input_shape=INPUT_SHAPE, id=artifact_id, module=module)
    if kind != "onnx":
        raise ValueError(f"kind is 'torch' or 'onnx', got {kind!r}")
    from modelzip.onnx_export import export_onnx

    directory = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="modelzip-"))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{artifact_id}.onnx"
    export_onnx(module, INPUT_SHAPE, path, opset=18, exporter="torchscript", dynamic_batch=True,
                pass_name="tiny_artifact", step=None)
    return Artifact(kind="onnx", input_shape=INPUT_SHAPE, id=artifact_id, path=path)


def tiny_recipe(base_dir: str | Path | None = None, **kwargs: Any) -> Recipe:
    """The recipe :func:`make_context` uses by default (``parse_recipe`` keywords pass through)."""
    from modelzip.recipe import parse_recipe

    return parse_recipe(_RECIPE, base_dir=Path(base_dir or "."), **kwargs)


def make_context(pass_name: str = "custom", *, work_dir: str | Path | None = None,
                 recipe: Recipe | None = None, data: DataBundle | None = None,
                 baseline: Artifact | None = None, build_module: Any = None, step: int = 0,
                 resume_dir: Path | None = None) -> PassContext:
    """The :class:`~modelzip.PassContext` the pipeline would give a step, for calling a pass's
    ``run`` directly (no cache, no measurement): fast, and ``ctx.details`` is inspectable.

    Defaults: :func:`tiny_recipe` (tiny_cnn, :func:`synthetic_dataset` loaded on first use),
    a fresh temporary ``work_dir``, CPU, seed 0, and :func:`tiny_artifact` as the baseline.
    """
    from modelzip.console import SilentUI
    from modelzip.context import PassContext

    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="modelzip-"))
    work.mkdir(parents=True, exist_ok=True)
    recipe = recipe or tiny_recipe(work)
    if build_module is None:
        def build_module() -> Any:
            from modelzip.sources.models import build_model

            return build_model(recipe.model, recipe.base_dir)
    loaded: list[DataBundle] = [data] if data is not None else []

    def load_data() -> DataBundle:
        if not loaded:
            from modelzip.sources.data import load_data as load

            loaded.append(load(recipe.data, base_dir=recipe.base_dir, seed=recipe.seed))
        return loaded[0]

    return PassContext(step=step, pass_name=pass_name, work_dir=work, seed=recipe.seed, device="cpu",
                       recipe=recipe, ui=SilentUI(), baseline=baseline or tiny_artifact(),
                       load_data=load_data, build_module=build_module, resume_dir=resume_dir)
