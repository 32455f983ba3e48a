"""Model sources: torchvision with a 1-channel stem, user factories, checkpoints."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelzip.errors import InputError
from modelzip.recipe import ModelSpec
from modelzip.sources.models import build_model, load_input_model, model_fingerprint
from modelzip.zoo import tiny_cnn

SHAPE = (1, 1, 28, 28)


def spec(**kwargs) -> ModelSpec:
    return ModelSpec(**{"source": "modelzip.zoo:tiny_cnn", "input_shape": SHAPE, **kwargs})


def test_torchvision_model_with_grayscale_stem():
    model = build_model(spec(source="torchvision:resnet18", args={"num_classes": 10}, in_channels=1), Path("."))
    assert model.conv1.in_channels == 1
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_stem_adaptation_keeps_luminance_response():
    rgb = build_model(spec(source="torchvision:resnet18", args={"num_classes": 10}), Path("."))
    gray = build_model(spec(source="torchvision:resnet18", args={"num_classes": 10}, in_channels=1), Path("."))
    gray.load_state_dict({k: v for k, v in rgb.state_dict().items() if k != "conv1.weight"}, strict=False)
    with torch.no_grad():
        gray.conv1.weight.copy_(rgb.conv1.weight.mean(1, keepdim=True))
        x = torch.rand(1, 1, 32, 32)
        expected = rgb.conv1(x.expand(1, 3, 32, 32)) / 3
        assert torch.allclose(gray.conv1(x), expected, atol=1e-5)


def test_unknown_torchvision_model_suggests():
    with pytest.raises(InputError) as info:
        build_model(spec(source="torchvision:resnet81"), Path("."))
    assert "resnet18" in info.value.fix


def test_factory_argument_errors_are_input_errors():
    with pytest.raises(InputError) as info:
        build_model(spec(args={"classes": 3}), Path("."))
    assert info.value.where == "model.args"


def test_missing_factory_lists_choices():
    with pytest.raises(InputError) as info:
        build_model(spec(source="modelzip.zoo:tiny_cn"), Path("."))
    assert "tiny_cnn" in info.value.fix


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd},
    lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
])
def test_checkpoint_wrappers_load(tmp_path, wrap):
    source = tiny_cnn()
    torch.save(wrap(source.state_dict()), tmp_path / "c.pt")
    model = load_input_model(spec(checkpoint="c.pt"), tmp_path)
    x = torch.randn(3, *SHAPE[1:])
    assert torch.equal(model(x), source.eval()(x))


def test_fingerprint_follows_checkpoint_content(tmp_path):
    torch.save(tiny_cnn().state_dict(), tmp_path / "c.pt")
    first = model_fingerprint(spec(checkpoint="c.pt"), tmp_path)
    assert model_fingerprint(spec(checkpoint="c.pt"), tmp_path) == first
    torch.save(tiny_cnn().state_dict(), tmp_path / "c.pt")  # new random weights
    assert model_fingerprint(spec(checkpoint="c.pt"), tmp_path) != first
