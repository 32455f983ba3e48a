"""Saving modules whose shapes or layers changed, without pickles, into a fresh process."""
from __future__ import annotations

import json
import subprocess
import sys

import torch
from torch import nn

from modelzip import artifacts
from modelzip.structure import describe, rebuild
from modelzip.zoo import tiny_cnn


def shrink_and_factorize(model: nn.Module) -> nn.Module:
    """What channel pruning and low-rank factorization do to a module tree."""
    conv = model.features[0]
    model.features[0] = nn.Conv2d(1, 4, 3, padding=conv.padding, bias=conv.bias is not None)
    model.features[1] = nn.BatchNorm2d(4)
    old = model.features[4]
    model.features[4] = nn.Conv2d(4, old.out_channels, 3, padding=old.padding, bias=old.bias is not None)
    linear = model.classifier[-1]
    model.classifier[-1] = nn.Sequential(nn.Linear(linear.in_features, 3, bias=False),
                                         nn.Linear(3, linear.out_features))
    return model


def test_rebuild_restores_changed_structure():
    changed = shrink_and_factorize(tiny_cnn())
    fresh = rebuild(tiny_cnn(), describe(changed))
    fresh.load_state_dict(changed.state_dict())  # strict: every shape fits
    assert describe(fresh) == describe(changed)


RELOAD = """
import sys, json, torch
from pathlib import Path
from modelzip import artifacts
from modelzip.zoo import tiny_cnn
artifact = artifacts.load_artifact(Path(sys.argv[1]), tiny_cnn)
x = torch.load(sys.argv[2], weights_only=True)
print(json.dumps(artifact.module(x).tolist()))
"""


def test_saved_artifact_reloads_in_a_fresh_process(tmp_path):
    changed = shrink_and_factorize(tiny_cnn()).eval()
    artifact = artifacts.Artifact(kind="torch", input_shape=(1, 1, 28, 28), id="x", module=changed)
    artifacts.save_artifact(artifact, tmp_path)
    x = torch.randn(2, 1, 28, 28)
    torch.save(x, tmp_path / "x.pt")
    out = subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path), str(tmp_path / "x.pt")],
                         capture_output=True, text=True, check=True).stdout
    with torch.no_grad():
        assert torch.allclose(torch.tensor(json.loads(out)), changed(x), atol=1e-6)
