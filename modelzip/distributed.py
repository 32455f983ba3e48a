"""Multi-process runs under torchrun: rank 0 drives the pipeline, other ranks follow.

`torchrun --nproc_per_node N -m modelzip run recipe.yaml` starts N copies. Rank 0 runs
the recipe as usual and owns every write (cache, artifacts, report). Passes that can
train data-parallel (``Pass.distributed = True``, e.g. finetune) are announced to the
other ranks, which load the same input artifact and run the same pass inside the
same process group; their results are discarded. Everything else runs on rank 0 only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Layout:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str) -> Layout:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA); a single process otherwise."""
    if not launched_by_torchrun():
        return Layout()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Layout(rank=dist.get_rank(), world_size=dist.get_world_size())


def current() -> Layout:
    """The layout of the process group this process belongs to (single process if none)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Layout(rank=dist.get_rank(), world_size=dist.get_world_size())
    return Layout()


def broadcast(message: Any = None) -> Any:
    """Rank 0 sends ``message``; every rank returns it."""
    import torch.distributed as dist

    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def shutdown() -> None:
    """Leave the process group together: every rank waits at a barrier, then tears it down.

    Without the barrier a rank could close its connections while another is still
    receiving the last message, and gloo aborts that process (SIGABRT at exit).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
