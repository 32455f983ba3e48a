"""End to end on a real Fashion-MNIST subset: train briefly, run a recipe, check the report.

Real data keeps accuracy claims honest; the subset keeps it to seconds.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from modelzip.recipe import DataSpec
from modelzip.sources.data import load_data
from modelzip.training import train_classifier
from modelzip.zoo import fashion_cnn
from tests.conftest import needs_fashion

pytestmark = [pytest.mark.integration, needs_fashion]

RECIPE = """
version: 1
name: fashion-subset
seed: 0
model:
  source: modelzip.zoo:fashion_cnn
  args: {num_classes: 10}
  checkpoint: fashion_cnn.pt
  input_shape: [1, 1, 28, 28]
data:
  dataset: fashion-mnist
  batch_size: 256
  limit_train: 4000
  limit_eval: 2000
  val_samples: 500
passes:
  - export: {opset: 18}
gates:
  max_accuracy_drop: 0.001   # export must not cost accuracy: 2 of 2,000 images
  min_accuracy: 0.70         # chance is 0.10; one short epoch on 3,500 images reaches ~0.8
evaluation: {warmup: 3, repeats: 20, steps: all}   # all: torch's accuracy too, to check the ONNX against
output: out
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The zoo CNN after one epoch on 3,500 real training images (a few seconds)."""
    directory = tmp_path_factory.mktemp("fashion")
    spec = DataSpec(dataset="fashion-mnist", limit_train=4000, limit_eval=2000, val_samples=500,
                    batch_size=128)
    bundle = load_data(spec, base_dir=directory, seed=0)
    model = fashion_cnn()
    train_classifier(model, bundle, epochs=1, lr=0.05, seed=0)
    torch.save(model.state_dict(), directory / "fashion_cnn.pt")
    (directory / "recipe.yaml").write_text(RECIPE)
    return directory


def _run(directory: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "modelzip", "run", str(directory / "recipe.yaml")],
                            capture_output=True, text=True)
    return result, time.perf_counter() - started


def test_real_recipe_end_to_end_then_cached(trained):
    first, first_s = _run(trained)
    assert first.returncode == 0, first.stderr
    report = json.loads((trained / "out" / "report.json").read_text())
    base, final = report["baseline"], report["final"]
    assert base["torch"]["eval_samples"] == 2000
    assert base["torch"]["accuracy"] > 0.70  # real learning, far above chance (0.10)
    # ONNX in onnxruntime agrees with torch: same predictions on every eval image.
    assert abs(final["accuracy"] - base["torch"]["accuracy"]) <= 0.001
    parity = report["steps"][0]["details"]["parity"]
    assert parity["max_abs_diff"] <= 1e-3 and parity["top1_agreement"] == 1.0
    assert 0.8e6 < base["torch"]["params_total"] < 0.85e6
    assert final["macs"] == base["torch"]["macs"]
    assert final["zip_bytes"] < final["size_bytes"]
    for batch in ("batch_1", "batch_256"):
        assert final["latency"][batch]["final"]["median_ms"] > 0
    assert {g["name"] for g in report["gates"]} == {"max_accuracy_drop", "min_accuracy"}
    assert all(g["passed"] for g in report["gates"])
    assert "## Latency" in (trained / "out" / "report.md").read_text()

    second, second_s = _run(trained)
    assert second.returncode == 0, second.stderr
    again = json.loads((trained / "out" / "report.json").read_text())
    assert [s["cached"] for s in again["steps"]] == [True, True]  # export, the implicit optimize
    assert again["final"]["accuracy"] == final["accuracy"]
