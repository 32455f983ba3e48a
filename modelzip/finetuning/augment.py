"""Batch augmentation on tensors: random crop after padding, and horizontal flips.

Done on whole batches with one gather, not per image through PIL, so it costs
a few percent of a training step even on two CPU cores. Images are already
normalized, so padding uses the normalized value of a black pixel (what
torchvision's ``RandomCrop(padding=p)`` pads with before normalization).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# What `augment: auto` means per built-in dataset: (padding in pixels, flip).
# Digits are not flip-invariant (a mirrored 2 is no digit), and shifting them
# changes little, so MNIST gets none. Datasets not listed get none either:
# we cannot know whether a user's images survive a flip.
AUTO_AUGMENT: dict[str, tuple[int, bool]] = {
    "fashion-mnist": (2, True),  # garments are left-right symmetric; 2 px of 28
    "cifar10": (4, True),  # the classic CIFAR recipe: 4 px of 32 (He et al. 2016)
}


@dataclass(frozen=True)
class Augment:
    """Random ``pad``-pixel shifts (crop of the padded image) and 50% horizontal flips."""

    pad: int = 0
    flip: bool = False
    fill: tuple[float, ...] = (0.0,)  # per channel, in normalized units

    @property
    def active(self) -> bool:
        return self.pad > 0 or self.flip

    def describe(self) -> str:
        parts = ([f"random crop, {self.pad}-px padding"] if self.pad else []) + (
            ["horizontal flip"] if self.flip else [])
        return " + ".join(parts) or "none"

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """A new batch; random draws come from ``generator`` (CPU) so runs repeat."""
        if self.pad:
            images = self._shift(images, generator)
        if self.flip:
            flipped = torch.rand(len(images), generator=generator) < 0.5
            flipped = flipped.to(images.device).view(-1, 1, 1, 1)
            images = torch.where(flipped, images.flip(-1), images)
        return images

    def _shift(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, c, h, w = images.shape
        p = self.pad
        fill = torch.tensor(self.fill, dtype=images.dtype, device=images.device)
        padded = fill.view(1, -1, 1, 1).expand(n, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p:p + h, p:p + w] = images
        offsets = torch.randint(0, 2 * p + 1, (2, n), generator=generator).to(images.device)
        rows = (offsets[0].view(n, 1) + torch.arange(h, device=images.device)).view(n, 1, h, 1)
        cols = (offsets[1].view(n, 1) + torch.arange(w, device=images.device)).view(n, 1, 1, w)
        batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
        channel = torch.arange(c, device=images.device).view(1, c, 1, 1)
        return padded[batch, channel, rows, cols]


def auto_augment(dataset: str, normalize: tuple[tuple[float, ...], tuple[float, ...]] | None) -> Augment:
    """The augmentation `augment: auto` picks for ``dataset`` (see AUTO_AUGMENT)."""
    pad, flip = AUTO_AUGMENT.get(dataset, (0, False))
    if normalize is None:
        return Augment(pad=pad, flip=flip)
    mean, std = normalize
    return Augment(pad=pad, flip=flip, fill=tuple(-m / s for m, s in zip(mean, std)))


def choose_augment(choice: str, dataset: str,
                   normalize: tuple[tuple[float, ...], tuple[float, ...]] | None) -> Augment:
    """``augment: none`` or ``auto`` for ``dataset`` whose images are normalized by ``normalize``."""
    return Augment() if choice == "none" else auto_augment(dataset, normalize)
