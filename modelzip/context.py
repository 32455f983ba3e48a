"""What a pass receives besides its artifact and config."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from modelzip.artifacts import Artifact
    from modelzip.console import UI
    from modelzip.recipe import Recipe
    from modelzip.sources.data import DataBundle


@dataclass
class PassContext:
    """Device, data, scratch directory, logging and a place to record report details.

    ``work_dir`` is a fresh directory that becomes the step's cache entry: write
    files a pass produces (an ONNX file, say) there. ``resume_dir`` survives a
    failed or interrupted attempt of the same step (same cache key) and is
    deleted once the step finishes: keep per-epoch checkpoints there.
    """

    step: int
    pass_name: str
    work_dir: Path
    seed: int
    device: str
    recipe: Recipe
    ui: UI
    baseline: Artifact  # the model as it entered the pipeline
    load_data: Callable[[], DataBundle]
    build_module: Callable[[], Any]  # a fresh, untrained architecture from model.source
    resume_dir: Path | None = None
    # The step's cache key: a digest of everything the step reads (input artifact, params, data,
    # named files, device). State kept across attempts (resume_dir) is tied to it.
    key: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    # The pipeline's export of a torch artifact with the export pass's defaults, when it has
    # made one (the baseline's): (path of the ONNX file, the export's details), else None.
    default_export: Callable[[Any], tuple[Path, dict[str, Any]] | None] = lambda artifact: None

    def exported(self, artifact) -> tuple[Path, dict[str, Any]] | None:
        """A default-settings ONNX export of ``artifact`` the pipeline already made, to read (never
        to modify: it is a cache entry), so a pass that needs one does not export again."""
        return self.default_export(artifact)

    @property
    def data(self) -> DataBundle:
        return self.load_data()

    def record(self, **items: Any) -> None:
        """Add JSON-serializable facts to this step's entry in the report.

        A ``summary`` string (one line) is shown in report.md's step table.
        """
        self.details.update(items)

    def record_table(self, title: str, header: list[str], rows: list[list[Any]]) -> None:
        """A table for report.md (a per-layer breakdown, say), kept in ``details["tables"]``."""
        table = {"title": title, "header": list(header), "rows": [[str(cell) for cell in row] for row in rows]}
        self.details.setdefault("tables", []).append(table)

    def log(self, message: str) -> None:
        self.ui.log(f"  [{self.pass_name}] {message}")

    def track(self, total: int, description: str):
        return self.ui.track(total, description)
