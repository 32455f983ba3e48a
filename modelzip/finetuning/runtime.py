"""Where the training loop meets the process layout: one process today.

Every decision that changes under data-parallel training lives here and
nowhere else in the loop: how the model is wrapped, which batches this
process sees, how per-process sums combine, and who writes files and logs.
A ``DistributedRuntime`` (torchrun, gloo on CPU / nccl on CUDA) would wrap
the model in ``DistributedDataParallel``, keep every ``world_size``-th batch
starting at ``rank`` (the shuffle order is seeded, hence equal in every
process), all-reduce the loss sums and broadcast rank 0's stop decision.
"""
from __future__ import annotations

import torch
from torch import nn


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
