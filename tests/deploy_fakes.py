"""Deploy targets for tests: cheap, deterministic, importable by the conversion worker
(modelzip.deploy.worker imports a target by its module path)."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from modelzip.errors import TargetError
from modelzip.target import Converted, ConvertInput, Target, TargetConfig, TargetSession


class ShiftConfig(TargetConfig):
    shift: float = Field(0.0, description="added to every output value (0: exact)")


class ShiftTarget(Target):
    """Copies the ONNX file and runs it in onnxruntime, adding `shift` to the outputs: a target
    whose parity is whatever the test chooses."""

    name = "shift"
    summary = "test target: the ONNX file, run with its outputs shifted"
    Config = ShiftConfig
    runtime = "onnxruntime"

    def convert(self, source: ConvertInput, config: ShiftConfig, out_dir: Path) -> Converted:
        shutil.copyfile(source.onnx, out_dir / "model.onnx")
        return Converted(("model.onnx",), {"shift": config.shift})

    def open(self, out_dir: Path, converted: Converted, threads: int) -> TargetSession:
        return _ShiftSession(out_dir / "model.onnx", converted.details["shift"], threads)


class _ShiftSession(TargetSession):
    def __init__(self, path: Path, shift: float, threads: int) -> None:
        from modelzip.evaluation.runtime import ort_session

        self.session, self.shift = ort_session(path, threads=threads), shift
        self.name = self.session.get_inputs()[0].name

    def predict(self, x):
        return [y + self.shift for y in self.session.run(None, {self.name: x})]


class BrokenTarget(ShiftTarget):
    """Refuses every model, naming the first node, as a converter lacking an op does."""

    name = "broken"
    summary = "test target: cannot convert any model"

    def convert(self, source: ConvertInput, config: ShiftConfig, out_dir: Path) -> Converted:
        raise TargetError("broken cannot convert the model: node 'n0' (op Conv)", nodes=(("n0", "Conv"),),
                          fix="leave broken out of `deploy:`")


class MissingConfig(TargetConfig):
    pass


class MissingTarget(Target):
    name = "missing"
    summary = "test target: its runtime is never installed"
    Config = MissingConfig
    runtime = "nowhere"
    needs: ClassVar[tuple[str, ...]] = ("modelzip_no_such_runtime",)
    install = "pip install modelzip-no-such-runtime"

    def convert(self, source, config, out_dir):  # pragma: no cover - validate refuses it first
        raise AssertionError("never converted")


class PhoneHomeTarget(ShiftTarget):
    """Tries what MNN.tools does on import: pip install, then a connection home; then converts."""

    name = "phone_home"
    summary = "test target: tries the network and pip, then converts"

    def convert(self, source: ConvertInput, config: ShiftConfig, out_dir: Path) -> Converted:
        for attempt in (lambda: subprocess.run([sys.executable, "-m", "pip", "install", "telemetry-sdk"]),
                        lambda: socket.create_connection(("192.0.2.1", 443), timeout=0.5)):
            try:
                attempt()
            except OSError:  # swallowed, as telemetry code does
                pass
        return super().convert(source, config, out_dir)
