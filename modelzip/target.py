"""What a deployment-target plugin implements: a config model, ``convert`` and ``open``.

A target is to ``deploy:`` what a pass is to ``passes:``. Like plugin.py this module is
free of torch and of every converter: `validate` and `modelzip targets` load each target's
config and ask whether its runtime is installed (``importlib.util.find_spec``, which finds a
package without importing it); a target imports its converter inside ``convert`` or ``open``.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from modelzip.plugin import PassConfig

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

Precision = Literal["fp32", "fp16", "int8"]
# Which ONNX a target converts from: "final" = the recipe's model.onnx (e.g. a QDQ int8 file a
# converter reads correctly), "float" = the last float model (the step before the quantizing
# pass, exported), so a target can quantize with its own calibrated tools; "torch" = that same
# float model as a torch module (saved as a torch.export program, ConvertInput.program), for a
# converter that reads PyTorch (litert-torch); ConvertInput.onnx is then its ONNX export.
SourceKind = Literal["final", "float", "torch"]

# Parity defaults, per precision. fp32: converters reorder float sums, which moves logits
# by ~1e-6 relative; 1e-3 absolute leaves room for logits of magnitude ~100. fp16 weights
# (computed in fp32 or fp16) carry ~1e-3 relative error per layer: 0.1 absolute on logits of
# ~10-30 is a few ulps of fp16 past that. int8 changes logits by design: what must hold is
# the predicted class, on at least 97% of real images (int8 vs fp32 agreement measured on the
# Fashion-MNIST CNN is 99%+).
DEFAULT_MAX_ABS_DIFF = {"fp32": 1e-3, "fp16": 0.1}
DEFAULT_MIN_AGREEMENT = 0.97


class TargetConfig(PassConfig):
    """Base of every target's parameters: the precision and the parity bar it must clear."""

    precision: Precision = Field("fp32", description="fp32 | fp16 | int8")
    max_abs_diff: float | None = Field(
        None, gt=0, description="fp32/fp16: the most |target - ONNX| allowed on any output value "
                                "(default 1e-3 for fp32, 0.1 for fp16); raise it to accept a larger difference")
    min_agreement: float | None = Field(
        None, ge=0, le=1, description="int8: the least share of eval images whose top-1 class matches the "
                                      "ONNX it was converted from (default 0.97); lower it to accept less")

    applies_to = {"max_abs_diff": {"precision": ("fp32", "fp16")},
                  "min_agreement": {"precision": ("int8",)}}

    def parity_bar(self) -> tuple[str, float]:
        """("max_abs_diff", limit) for float precisions, ("min_agreement", limit) for int8."""
        if self.precision == "int8":
            return "min_agreement", self.min_agreement if self.min_agreement is not None else DEFAULT_MIN_AGREEMENT
        limit = self.max_abs_diff if self.max_abs_diff is not None else DEFAULT_MAX_ABS_DIFF[self.precision]
        return "max_abs_diff", limit


class CalibratedConfig(TargetConfig):
    """A target whose int8 is calibrated on the recipe's calibration split."""

    calibration_samples: int = Field(300, ge=1, le=100_000,
                                     description="int8: training images the quantizer calibrates on")

    applies_to = {**TargetConfig.applies_to, "calibration_samples": {"precision": ("int8",)}}


@dataclass(frozen=True)
class ConvertInput:
    """What ``Target.convert`` gets: the ONNX file to convert and, for calibrated int8, a .npy
    file of calibration images (float32, batch first, normalized as the model expects). A target
    whose source is "torch" also gets the float model as a torch.export program (``program``, a
    .pt2 file saved with a dynamic batch). ``batches``: the batch sizes the file will be run at
    (1 and data.batch_size), for a format whose batch is fixed at conversion."""

    onnx: Path
    input_shape: tuple[int, ...]
    calibration: Path | None = None
    program: Path | None = None
    batches: tuple[int, ...] = (1,)

    def calibration_batches(self, batch: int = 1) -> Iterator[np.ndarray]:
        """The calibration images in batches of ``batch`` (none without a calibration file)."""
        if self.calibration is None:
            return iter(())
        import numpy as np

        images = np.load(self.calibration)
        return (images[start:start + batch] for start in range(0, len(images), batch))


@dataclass(frozen=True)
class Converted:
    """What ``Target.convert`` reports: the files it wrote (names in its output folder) and facts
    the report shows (e.g. {"inference_precision": "f32", "dynamic_batch": True})."""

    files: tuple[str, ...]
    details: dict[str, Any] = field(default_factory=dict)


class TargetSession:
    """A loaded model in a target's runtime, shaped like an onnxruntime session so the latency
    machinery (modelzip.evaluation.latency) times it exactly as it times onnxruntime.

    Subclasses implement ``predict(x) -> list of outputs`` (in the ONNX model's output order).
    """

    input_name = "input"

    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def get_inputs(self) -> list[Any]:
        from types import SimpleNamespace

        return [SimpleNamespace(name=self.input_name, type="tensor(float)")]

    def run(self, output_names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.predict(feeds[self.input_name])


class Target:
    """Base class of a deployment target plugin.

    Register it under the entry-point group ``modelzip.targets`` with the same name as
    ``Target.name``. ``convert`` writes the deployable files into ``out_dir``; ``open`` loads
    them in the target's runtime. Neither writes the report, touches the cache or decides
    exit codes: modelzip.deploy does. A conversion error is raised as modelzip.errors.TargetError.
    """

    name: ClassVar[str]
    summary: ClassVar[str]  # one line, shown by `modelzip targets`
    Config: ClassVar[type[TargetConfig]]
    version: ClassVar[str] = "1"  # bump when a change in `convert` should invalidate cached files
    runtime: ClassVar[str]  # the package that runs the files, as `modelzip targets` names it
    # Importable modules conversion and the runtime need, looked up (never imported) by `validate`.
    needs: ClassVar[tuple[str, ...]] = ()
    install: ClassVar[str] = ""  # the command that installs them, named by the exit-2 message

    def missing(self, config: TargetConfig) -> list[str]:
        """The modules ``needs_for(config)`` lists that are not installed (found without importing)."""
        return [m for m in self.needs_for(config) if importlib.util.find_spec(m) is None]

    def needs_for(self, config: TargetConfig) -> tuple[str, ...]:
        """What a conversion with ``config`` needs (e.g. nncf only for int8)."""
        return self.needs

    def source(self, config: TargetConfig) -> SourceKind:
        """Which ONNX this conversion starts from (see SourceKind)."""
        return "float"

    def calibrates(self, config: TargetConfig) -> bool:
        """True: ``convert`` reads calibration images (they join the cache key)."""
        return False

    def not_runnable(self) -> str | None:
        """Why the converted files cannot be run and measured on this machine (None: they can)."""
        return None

    def convert(self, source: ConvertInput, config: TargetConfig, out_dir: Path) -> Converted:
        raise NotImplementedError

    def open(self, out_dir: Path, converted: Converted, threads: int) -> TargetSession:
        raise NotImplementedError
