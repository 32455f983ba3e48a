"""`torchrun --nproc_per_node 2 -m modelzip run`: data-parallel finetune on CPU (gloo)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from modelzip.zoo import tiny_cnn
from tests.test_pipeline import TINY

FINETUNE = "  - finetune: {epochs: 3, lr: 0.05, augment: none}\n  - export: {}\n"


def _prepare(directory, name: str):
    directory.mkdir()
    torch.manual_seed(0)
    torch.save(tiny_cnn(num_classes=4).state_dict(), directory / "tiny.pt")
    body = TINY.replace("  - export: {}\n", FINETUNE).replace("{train: 256, eval: 128}",
                                                              "{train: 1024, eval: 512, noise: 2.5}")
    (directory / "recipe.yaml").write_text(body)
    return directory / "recipe.yaml"


def _report(recipe) -> dict:
    return json.loads((recipe.parent / "out" / "report.json").read_text())


def test_two_process_finetune_matches_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = _prepare(tmp_path / "single", "single")
    subprocess.run([sys.executable, "-m", "modelzip", "run", str(single), "--quiet"], check=True,
                   env=env, capture_output=True)
    double = _prepare(tmp_path / "double", "double")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node", "2", "-m", "modelzip", "run", str(double), "--quiet"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = _report(single), _report(double)
    # Same artifact format, written once, by rank 0.
    assert (double.parent / "out" / "model.onnx").is_file()
    assert [s["pass"] for s in two["steps"]] == ["finetune", "export", "optimize"]
    curve_one, curve_two = one["steps"][0]["details"]["curve"], two["steps"][0]["details"]["curve"]
    assert len(curve_two) == len(curve_one) == 3
    # batch_size is the global batch: each process trains on its half of every batch, so the
    # loss curve follows the single-process one (BatchNorm statistics per half differ slightly).
    for a, b in zip(curve_one, curve_two):
        assert abs(a["loss"] - b["loss"]) <= 0.02 * a["loss"]
    # Accuracy within 3 points of the single-process run (512 synthetic images, 4 classes).
    assert abs(two["final"]["accuracy"] - one["final"]["accuracy"]) <= 0.03
    assert two["final"]["accuracy"] > two["baseline"]["onnx"]["accuracy"] + 0.2
