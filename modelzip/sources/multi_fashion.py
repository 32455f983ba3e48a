"""``multi-fashion``: two Fashion-MNIST items on one 36x36 canvas, a two-task dataset.

In the style of MultiMNIST (Sener and Koltun 2018, "Multi-Task Learning as Multi-Objective
Optimization"): item A at the top-left (rows and columns 0-27), item B at the bottom-right (8-35),
overlapping in the middle 20x20, where the brighter pixel wins (pixel-wise max). The tasks are
``left`` (A's class) and ``right`` (B's), 10 classes each. Every item of a split is A once, in
file order; B is drawn by a seeded permutation of the same split, so the dataset is a function of
the Fashion-MNIST files and the recipe's seed: 60,000 training canvases from the training files,
10,000 evaluation canvases from the test files (no image crosses splits).
"""
from __future__ import annotations

import numpy as np
import torch

TASKS = ("left", "right")
CANVAS = 36
ITEM = 28
OFFSET = CANVAS - ITEM  # where item B starts, in both axes
_PAIRS_STREAM = 3  # the seed stream of the B permutation (sources.data streams 0-2)


def compose(images: np.ndarray, labels: np.ndarray, seed: int, split: int) -> tuple[np.ndarray, np.ndarray]:
    """(canvases uint8 N x 36 x 36, labels int64 N x 2) from uint8 N x 28 x 28 items and labels;
    ``split`` (0 train, 1 eval) gives each split its own permutation."""
    entropy = [seed & 0xFFFF_FFFF_FFFF_FFFF, _PAIRS_STREAM, split]
    generator = np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))
    partner = generator.permutation(len(images))
    canvases = np.zeros((len(images), CANVAS, CANVAS), dtype=np.uint8)
    canvases[:, :ITEM, :ITEM] = images
    lower = canvases[:, OFFSET:, OFFSET:]
    np.maximum(lower, images[partner], out=lower)
    return canvases, np.stack([labels, labels[partner]], axis=1).astype(np.int64)


def to_tensors(canvases: np.ndarray, labels: np.ndarray, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized float32 N x 1 x 36 x 36 images and int64 N x 2 labels."""
    x = torch.from_numpy(canvases[:, None]).float().div_(255)
    return x.sub_(mean[0]).div_(std[0]), torch.from_numpy(labels)
