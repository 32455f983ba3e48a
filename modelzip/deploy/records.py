"""What report.json's ``deploy`` list holds: one record per target (docs/report.md)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A record's status: measured and within its parity bar; measured and beyond it; not converted;
# converted but its runtime could not run the file; converted but not run here (no runtime or
# hardware on this machine: the note says why).
PASSED, PARITY_FAILED, CONVERSION_FAILED = "passed", "parity_failed", "conversion_failed"
RUN_FAILED, NOT_MEASURED = "run_failed", "not_measured"
FAILED = (PARITY_FAILED, CONVERSION_FAILED, RUN_FAILED)


@dataclass(frozen=True)
class DeployRecord:
    target: str
    precision: str
    status: str
    runtime: str
    converted_from: str  # "final ONNX" or "float ONNX (the input of passes[i].quantize)"
    params: dict[str, Any]
    path: str | None = None  # deploy/<target>, relative to the output folder
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"size", "sha256"}
    size_bytes: int | None = None
    zip_bytes: int | None = None
    accuracy: float | None = None
    accuracy_delta: float | None = None  # target - final ONNX (absolute)
    parity: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None  # "batch_<N>" -> LatencyPair JSON: baseline = final ONNX in onnxruntime
    details: dict[str, Any] = field(default_factory=dict)
    blocked: tuple[str, ...] = ()  # network connections / installers refused during conversion
    error: dict[str, Any] | None = None
    note: str | None = None
    wall_time_s: float | None = None
    cached: bool = False

    @property
    def failed(self) -> bool:
        return self.status in FAILED

    def problem(self) -> str:
        """One line naming the target and what failed (DeployFailure's message)."""
        if self.error is not None:
            return f"deploy {self.target} ({self.precision}): {self.error['what']}"
        bar = self.parity or {}
        return (f"deploy {self.target} ({self.precision}): parity {bar.get('measure')} is {bar.get('worst')}, "
                f"the bar is {bar.get('limit')} (against the {self.converted_from})")

    def to_json(self) -> dict[str, Any]:
        out = {"target": self.target, "precision": self.precision, "status": self.status, "runtime": self.runtime,
               "converted_from": self.converted_from, "params": self.params, "path": self.path,
               "files": self.files, "size_bytes": self.size_bytes, "zip_bytes": self.zip_bytes,
               "accuracy": self.accuracy, "accuracy_delta": self.accuracy_delta, "parity": self.parity,
               "latency": self.latency, "details": self.details, "blocked": list(self.blocked),
               "error": self.error, "note": self.note, "wall_time_s": self.wall_time_s, "cached": self.cached}
        return out
