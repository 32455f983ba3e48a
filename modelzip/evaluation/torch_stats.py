"""What a torch module holds and costs: parameters (total / non-zero), checkpoint bytes, MACs.

Conventions are those of modelzip.evaluation (MACs per sample; see its docstring).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from modelzip.evaluation.runtime import module_device

if TYPE_CHECKING:
    from torch import nn


def count_params(module: nn.Module) -> tuple[int, int]:
    """(total, nonzero) elements over the module's parameters (buffers excluded).

    A pruning mask applied with torch.nn.utils.prune lives in ``weight_orig`` +
    a buffer, so count after ``prune.remove`` to see the zeros.
    """
    total = nonzero = 0
    for parameter in module.parameters():
        total += parameter.numel()
        nonzero += int(parameter.detach().count_nonzero())
    return total, nonzero


def state_dict_bytes(module: nn.Module) -> int:
    """Bytes of ``torch.save(module.state_dict())``: the checkpoint a user would ship."""
    import torch

    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def torch_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on ONE sample of ``input_shape``.

    The batch dimension (input_shape[0]) is replaced by 1. Counted with
    torch.utils.flop_counter (convolutions, linear layers, matmuls, attention),
    MACs = FLOPs / 2. Runs in eval mode and restores the module's mode.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sample = torch.zeros((1, *input_shape[1:]), device=module_device(module), dtype=_float_dtype(module))
    was_training = module.training
    module.eval()
    counter = FlopCounterMode(display=False)
    try:
        # Deliberately not under no_grad: in eval mode + no_grad, nn.Transformer
        # layers take a fused "fast path" kernel the flop counter does not know,
        # which would silently count their matmuls as zero.
        with counter:
            module(sample)
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2


def _float_dtype(module: nn.Module) -> Any:
    import torch

    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32
