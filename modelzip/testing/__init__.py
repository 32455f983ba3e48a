"""Helpers shared by modelzip's tests, docs and plugin authors' tests.

``synthetic_dataset`` is a ``<module>:<callable>`` data source: small, seeded,
learnable (the label is the brightest quadrant band), and instant to build.
"""
from __future__ import annotations


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
