"""The float torch model saved as a torch.export program (.pt2) for a target whose converter reads
PyTorch (TFLite's litert-torch), cached by the artifact's id.

The converter runs in a venv of its own with the same torch version, so the module crosses the
process boundary as an exported program: it needs neither modelzip nor the model's source code
there. The batch dimension is exported dynamic (a batch of 2 as the example: torch.export
specializes sizes 0 and 1) so the converter can trace it at every batch it is measured at.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from modelzip.cache import StepCache, content_key
from modelzip.errors import TargetError

PROGRAM = "model.pt2"
VERSION = "1"  # bump when the saved program changes


def torch_program(cache: StepCache, artifact_id: str, module: Any, input_shape: tuple[int, ...]) -> Path:
    """The .pt2 of ``module`` (the artifact ``artifact_id``), from the cache or exported now."""
    key = content_key(what="torch-program", artifact=artifact_id, version=VERSION)
    entry = cache.lookup(key)
    if entry is None:
        import torch

        example = torch.zeros((2, *input_shape[1:]))
        try:
            program = torch.export.export(module.eval(), (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
        except Exception as exc:  # data-dependent control flow and friends: that target fails, the others run
            raise TargetError("the float torch model cannot be saved as a torch.export program",
                              got=f"{type(exc).__name__}: {str(exc)[:1000]}",
                              fix="make the model torch.export-able, or leave this target out of `deploy:`") from exc
        with cache.store(key) as work:
            torch.export.save(program, str(work / PROGRAM))
        entry = cache.entry(key)
    return entry / PROGRAM
