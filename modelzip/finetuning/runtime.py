"""Where the training loop meets the process layout: one process, or DDP under torchrun.

Every decision that changes under data-parallel training lives here and
nowhere else in the loop: how the model is wrapped, which batches this
process sees, how per-process sums combine, and who writes files and logs.
"""
from __future__ import annotations

import torch
from torch import nn

from modelzip import tasks


class LocalRuntime:
    """A single process: identity wrapping, every batch, and it is the main process."""

    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        """Only the main process saves checkpoints, validates and logs."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def shard(self, batches):
        return batches

    def batches_per_epoch(self, total_batches: int) -> int:
        return total_batches

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def agree(self, flag: bool) -> bool:
        """The main process's decision (e.g. early stopping), shared by all."""
        return flag


class DistributedRuntime(LocalRuntime):
    """DistributedDataParallel across torchrun's processes (gloo on CPU, nccl on CUDA).

    ``batch_size`` stays the *global* batch: every process draws the same seeded shuffle and
    takes its slice of each batch, so a run with N processes makes the same optimizer steps
    on the same samples as one process (DDP averages the slices' gradients), only faster.
    """

    def __init__(self) -> None:
        import torch.distributed as dist

        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    def shard(self, batches):
        for images, labels in batches:
            if tasks.batch_size(labels) < self.world_size:  # too small to split: every rank skips it alike
                continue
            yield images.chunk(self.world_size)[self.rank], tasks.chunk(labels, self.world_size)[self.rank]

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value)
        return value

    def agree(self, flag: bool) -> bool:
        from modelzip.distributed import broadcast

        return bool(broadcast(flag))


def current_runtime() -> LocalRuntime:
    """DDP when this process is part of a torchrun process group, else a single process."""
    from modelzip.distributed import current

    return DistributedRuntime() if current().active else LocalRuntime()
