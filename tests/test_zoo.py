"""The built-in model zoo: shapes, sizes, layer names, checkpoints, and that they learn."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from modelzip.evaluation.accuracy import torch_accuracy
from modelzip.recipe import DataSpec
from modelzip.sources.data import load_data
from modelzip.training import train_classifier
from modelzip.zoo import ZOO, fashion_cnn, list_models, resnet20

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_system_fashion = pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason="Fashion-MNIST absent: apt-get install dataset-fashion-mnist")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_models_names_the_zoo():
    assert list_models() == sorted(ZOO) and {"fashion_cnn", "resnet20", "tiny_cnn"} <= set(ZOO)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_forward_shape_on_fashion_sized_input(name):
    model = ZOO[name](num_classes=7, in_channels=1).eval()
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 7)


@pytest.mark.parametrize("name", ["dsresnet", "resnet20", "tiny_cnn"])
def test_global_pooling_models_take_cifar_sized_input(name):
    model = ZOO[name](in_channels=3).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_fashion_cnn_size_and_layer_names():
    model = fashion_cnn()
    # 32*9 + 64 (BN) + 64*32*9 + 128 (BN) + (3136*256 + 256) + (256*10 + 10) = 824,554
    assert count_parameters(model) == 824_554
    assert 800_000 <= count_parameters(model) <= 850_000
    assert [name for name, _ in model.named_children()] == ["features", "classifier"]


def test_resnet20_has_twenty_weighted_layers():
    model = resnet20()
    convs = [m for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and "downsample" not in name]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 20
    assert 260_000 < count_parameters(model) < 280_000
    assert {"conv1", "layer1", "layer2", "layer3", "fc"} <= {n for n, _ in model.named_children()}


def test_dsresnet_blocks_are_depthwise_separable():
    model = ZOO["dsresnet"]()
    depthwise = [m for name, m in model.named_modules() if name.endswith("depthwise")]
    assert len(depthwise) == 6 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert 45_000 < count_parameters(model) < 55_000


@pytest.mark.parametrize("name", sorted(ZOO))
def test_state_dict_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = ZOO[name]().eval()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    fresh = ZOO[name]().eval()
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(fresh(x), model(x))


@needs_system_fashion
def test_tiny_cnn_learns_fashion_mnist_deterministically():
    spec = DataSpec(dataset="fashion-mnist", limit_train=2000, limit_eval=500, val_samples=200, batch_size=64)
    bundle = load_data(spec, base_dir=Path.cwd(), seed=0)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = ZOO["tiny_cnn"]()
        history = train_classifier(model, bundle, epochs=2, lr=0.1, seed=0)
        runs.append((history, torch_accuracy(model, bundle.batches("eval"))))
    (history, accuracy), (again, accuracy_again) = runs
    assert [h["loss"] for h in history] == [h["loss"] for h in again] and accuracy == accuracy_again
    assert history[1]["loss"] < history[0]["loss"]
    assert accuracy > 0.6  # chance is 0.1; about 0.72 when written
