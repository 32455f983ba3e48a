"""Olive's side of scripts/bench_olive.py: modelzip's images (saved as .npy) as an Olive dataset.

Runs inside Olive's own venv (.bench/olive-venv), never modelzip's: Olive imports this file
by path (a data config's ``user_script``) and finds the components through its registry.
"""
from __future__ import annotations

import numpy as np
import torch
from olive.data.registry import Registry


class NpyImages(torch.utils.data.Dataset):
    """(inputs, label) items, inputs a {graph input name: image} dict as Olive's calibration
    reader requires ("Only support dict type batch data")."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, input_name: str) -> None:
        self.images, self.labels, self.input_name = images, labels, input_name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return {self.input_name: torch.from_numpy(self.images[index])}, int(self.labels[index])


@Registry.register_dataset()
def modelzip_npy(images: str, input_name: str, labels: str | None = None, **kwargs):
    """Images (N x C x H x W float32, already normalized by modelzip) and optional int labels."""
    x = np.load(images)
    y = np.load(labels) if labels else np.zeros(len(x), dtype=np.int64)
    return NpyImages(x, y, input_name)


@Registry.register_post_process()
def modelzip_argmax(output, **kwargs):
    """Logits -> predicted class, for Olive's accuracy metric."""
    return output.argmax(dim=-1)
