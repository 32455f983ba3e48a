"""One mode's quantizer, as the accuracy search and the report see it."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Quantizer:
    """One mode's quantizer, ready to run with any set of nodes kept float."""

    settings: dict[str, Any]  # what was chosen and why, for the report
    run: Callable[[Iterable[str], Path], Path]  # (float nodes, output path) -> output path
    label: str  # "int8" / "int4": what the summary calls the quantized model
