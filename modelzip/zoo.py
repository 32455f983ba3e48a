"""Built-in models, named in recipes as ``modelzip.zoo:<name>``.

Layers are named submodules (``features``, ``classifier``, ``layer1``...) so that
pruning passes and reports can point at them. Imports torch: use it at run time,
never from the light path (``modelzip validate``/``passes``).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn


def fashion_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 32, size: int = 28) -> nn.Module:
    """Two conv blocks and a 256-unit MLP head; 824,554 parameters at width 32.

    Takes ``size`` x ``size`` inputs (28: two 2x poolings leave 7x7 maps, which the head is sized
    for); at 36 (``multi-fashion``) it has 1,348,842 parameters, a single-task teacher of ``merge``.

    The head's Linear(64*7*7 -> 256) holds 97% of them, which is what makes
    this model a good subject for pruning and low-rank passes.
    """
    wide, side = 2 * width, size // 4
    return nn.Sequential(
        OrderedDict([
            ("features", nn.Sequential(
                # Convolutions feed BatchNorm, whose shift makes a conv bias redundant.
                nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                nn.ReLU(inplace=True), nn.MaxPool2d(2),
                nn.Conv2d(width, wide, 3, padding=1, bias=False), nn.BatchNorm2d(wide),
                nn.ReLU(inplace=True), nn.MaxPool2d(2),
            )),
            ("classifier", nn.Sequential(
                nn.Flatten(),
                nn.Linear(wide * side * side, 256), nn.ReLU(inplace=True), nn.Dropout(0.25),
                nn.Linear(256, num_classes),
            )),
        ])
    )


def tiny_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """1,922 parameters: the smallest model with conv, BN, pooling and a linear head.

    Reaches about 72% on 2,000 Fashion-MNIST images in 2 epochs (chance: 10%).
    """
    return nn.Sequential(
        OrderedDict([
            ("features", nn.Sequential(
                nn.Conv2d(in_channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                nn.ReLU(inplace=True), nn.MaxPool2d(2),
                nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                # A fixed 2x2 grid makes the head independent of the input size, and
                # keeps enough layout to learn (global pooling stalls near 40%).
                nn.AdaptiveAvgPool2d(2),
            )),
            ("classifier", nn.Sequential(nn.Flatten(), nn.Linear(16 * 2 * 2, num_classes))),
        ])
    )


def projection(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """A residual block's shortcut: a 1x1 conv + BN when the stride or the width changes, else
    None (the identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (a 1x1 conv + BN when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = projection(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, section 4.2): 3 stages, widths w/2w/4w.

    Submodule names follow torchvision's ResNet (conv1, bn1, layer1..3, fc).
    """

    def __init__(self, blocks_per_stage: int, num_classes: int, in_channels: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(width, width, blocks_per_stage, stride=1)
        self.layer2 = self._stage(width, 2 * width, blocks_per_stage, stride=2)
        self.layer3 = self._stage(2 * width, 4 * width, blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # so 28x28 and 32x32 inputs both work
        self.fc = nn.Linear(4 * width, num_classes)

    block: type[nn.Module] = BasicBlock  # the residual block every stage is made of

    @classmethod
    def _stage(cls, in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        first = cls.block(in_channels, out_channels, stride)
        return nn.Sequential(first, *(cls.block(out_channels, out_channels) for _ in range(blocks - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet20(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> nn.Module:
    """ResNet-20: 1 + 3 stages x 3 blocks x 2 convs + 1 linear = 20 layers; ~0.27 M parameters."""
    return ResNet(3, num_classes, in_channels, width)


class SeparableBlock(nn.Module):
    """A depthwise 3x3 and a pointwise 1x1 convolution, each with BN, around a shortcut.

    MobileNet's building block with a residual connection: the shortcut is a 1x1
    conv + BN when the stride or the width changes, the identity otherwise.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = projection(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.depthwise(x)))
        return self.relu(self.bn2(self.pointwise(out)) + shortcut)


class SeparableResNet(ResNet):
    """ResNet's layout (stem conv, 3 stages of widths w/2w/4w, global pooling, a linear head) built
    from SeparableBlocks."""

    block = SeparableBlock


def dsresnet(num_classes: int = 10, in_channels: int = 1, width: int = 32) -> nn.Module:
    """A residual network of depthwise-separable blocks, 2 per stage: 49,802 parameters at width 32.

    The kind of small, mobile-style model modelzip's defaults were not tuned on (issue #13):
    depthwise convolutions tie each channel's input and output, and shortcuts tie widths
    across blocks, so channel pruning has fewer free choices than on a plain CNN.
    """
    return SeparableResNet(2, num_classes, in_channels, width)


ZOO: dict[str, Callable[..., nn.Module]] = {
    "dsresnet": dsresnet,
    "fashion_cnn": fashion_cnn,
    "resnet20": resnet20,
    "tiny_cnn": tiny_cnn,
}


def list_models() -> list[str]:
    return sorted(ZOO)


class MultiTaskCNN(nn.Module):
    """A shared backbone (``features``, then the ``trunk`` MLP layer) and one linear head per task
    (``heads.<task>``); ``forward`` returns ``{task: logits}`` in the order of ``tasks``."""

    def __init__(self, features: nn.Module, trunk: nn.Module, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.features = features
        self.trunk = trunk
        self.heads = nn.ModuleDict(heads)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        shared = self.trunk(self.features(x))
        return {task: head(shared) for task, head in self.heads.items()}


def multitask_cnn(tasks: tuple[str, ...] | list[str] = ("left", "right"), num_classes: int = 10,
                  in_channels: int = 1, width: int = 32, size: int = 36) -> nn.Module:
    """fashion_cnn's two conv blocks and 256-unit layer shared by one linear head per task
    (``multi-fashion``: tasks left and right, 36x36 images); 1,351,412 parameters as built here.

    The trunk's Linear(64*9*9 -> 256) holds 98% of them; the convolutions hold 83% of the
    MACs (6.35 M of 7.68 M per image: 32*9*36² + 64*32*9*18²), which channel pruning removes.
    """
    wide, side = 2 * width, size // 4  # two 2x poolings
    features = nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
        nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(width, wide, 3, padding=1, bias=False), nn.BatchNorm2d(wide),
        nn.ReLU(inplace=True), nn.MaxPool2d(2),
    )
    trunk = nn.Sequential(nn.Flatten(), nn.Linear(wide * side * side, 256), nn.ReLU(inplace=True),
                          nn.Dropout(0.25))
    return MultiTaskCNN(features, trunk, {task: nn.Linear(256, num_classes) for task in tasks})


# Models with one output per task (``model.tasks``), apart from ZOO's single-output classifiers.
TASK_ZOO: dict[str, Callable[..., nn.Module]] = {"multitask_cnn": multitask_cnn}
