"""Per-epoch training state, so an interrupted fine-tune resumes where it stopped.

One file, overwritten atomically after every finished epoch: a crash mid-write
leaves the previous epoch's file intact. It holds only tensors and plain data
(model, optimizer and scheduler state dicts, the best weights so far, the
history), so it loads with ``weights_only=True``: no code runs from it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from modelzip.atomic import atomic_path

CHECKPOINT_FILE = "finetune_last.pt"
FORMAT = 1  # bump when the layout written by the loop changes; older files are then ignored


class CheckpointStore:
    """Saves and loads the training state in ``directory`` (a step's resume_dir)."""

    def __init__(self, directory: Path, fingerprint: str = "") -> None:
        self.path = Path(directory) / CHECKPOINT_FILE
        # The resume_dir is already per cache key; this also guards a directory reused by hand.
        self.fingerprint = fingerprint

    def save(self, state: dict[str, Any]) -> None:
        with atomic_path(self.path) as partial:
            torch.save({"format": FORMAT, "fingerprint": self.fingerprint, **state}, partial)

    def load(self, device: torch.device | str = "cpu") -> dict[str, Any] | None:
        """The last saved state, or None when there is none (or it is from another run/format)."""
        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location=device, weights_only=True)
        if state.get("format") != FORMAT or state.get("fingerprint") != self.fingerprint:
            return None
        return state


def snapshot(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached copy of a state dict, which later training steps cannot overwrite."""
    return {k: v.detach().clone() for k, v in state_dict.items()}
