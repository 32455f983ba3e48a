"""Re-estimate BatchNorm running statistics on a few batches, without training.

After pruning or factorizing, a BatchNorm layer still normalizes with the mean and variance
of the activations the *original* model produced; the new layers feed it different ones.
A few hundred training images through the model with only the BN layers in train mode (no
gradients, dropout still off) give statistics that match again, and often recover much of a
one-shot accuracy drop for the cost of a few forward passes.

Plain inputs only (a module, batches, a count): no recipe, no pass context.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from modelzip.evaluation.runtime import module_device

if TYPE_CHECKING:
    from torch import Tensor, nn
    from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(module: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``module`` that keep running statistics (the ones recalibration
    changes); a layer with ``track_running_stats=False`` always normalizes by the batch."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [m for m in module.modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None]


def recalibrate_batchnorm(module: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], images: int) -> int:
    """Replace the running statistics of ``module``'s BatchNorm layers (in place) by their average
    over the first ``images`` images of ``batches``; returns the images used.

    Every other module stays in eval mode (dropout off) and nothing gets a gradient; the
    layers' momentum and every module's training flag are restored afterwards. The average
    weighs each image equally (the last batch is cut to what is still needed). A module
    without such layers, ``images`` <= 0, or batches that hold no image leave it unchanged (0).
    """
    import torch

    layers = batchnorm_layers(module)
    if not layers or images <= 0:
        return 0
    device = module_device(module)
    flags = [(m, m.training) for m in module.modules()]
    momenta = [layer.momentum for layer in layers]
    saved = [{name: buffer.clone() for name, buffer in layer.named_buffers(recurse=False)} for layer in layers]
    seen = 0
    try:
        module.eval()
        for layer in layers:
            layer.train()
            layer.reset_running_stats()
        with torch.no_grad():
            for inputs, _ in batches:
                take = min(len(inputs), max(images - seen, 2))
                if take < 2:  # a last batch of one image: it has no variance (BatchNorm1d refuses it)
                    break
                for layer in layers:
                    # running = (1 - m) * running + m * batch: with m = take / (seen + take) the
                    # result is the mean over all images so far, each weighted equally.
                    layer.momentum = take / (seen + take)
                module(inputs[:take].to(device))
                seen += take
                if seen >= images:
                    break
    except BaseException:
        _restore(layers, saved)
        raise
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        for m, training in flags:
            m.training = training
    if seen == 0:  # no data: the reset statistics (mean 0, variance 1) would be worse than the old
        _restore(layers, saved)
    return seen


def _restore(layers: list[_BatchNorm], saved: list[dict[str, Tensor]]) -> None:
    for layer, buffers in zip(layers, saved):
        for name, value in buffers.items():
            getattr(layer, name).copy_(value)
