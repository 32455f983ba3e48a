"""The machinery behind the `optimize` pass: a leaner ONNX file that computes the same outputs.

Plain inputs only (the ONNX file, :class:`OptimizeSettings`, where to write); the pass maps
its config onto them and turns an :class:`OptimizeFailure` into a PassError.

- ``graph``: edits that change no computation: drop doc strings, shape annotations and
  exporter debug metadata, attributes equal to their defaults, all-zero int32 zero points,
  opset imports no node uses; share identical initializers; remove dead nodes and unused
  initializers.
- ``fold``: constant folding (Constant nodes into initializers; nodes whose inputs are all
  constant computed once with onnx.reference).
- ``scales``: a QDQ layer's int32 bias scale computed from its input and weight scales
  instead of stored (onnxruntime folds it back at load, before fusing the int8 layer).
- ``names``: short names for every tensor and node but the graph's inputs and outputs, and
  the old -> new map written beside the file.
- ``run``: ties these together, measures bytes and graph overhead before and after, and
  checks in onnxruntime that the outputs did not change.

Nothing here imports onnx at module level: the pipeline and the run folder read
``NAME_MAP_FILE`` from this package on paths that must stay light.
"""
from __future__ import annotations

from dataclasses import dataclass

from modelzip.errors import MachineryFailure

# Written beside the optimized model.onnx (in the step's cache entry); the pipeline copies it
# into the run folder as model.names.json.
NAME_MAP_FILE = "names.json"
NAME_MAP_SCHEMA = "modelzip.names/1"


class OptimizeFailure(MachineryFailure):
    """The optimized model is not a correct copy of its input; the pass turns it into a PassError."""


@dataclass(frozen=True)
class OptimizeSettings:
    """Which edits to make, and how the result is checked against the input."""

    shorten_names: bool = True
    remove_unused_domains: bool = True
    fold_constants: bool = True
    dedupe_initializers: bool = True
    strip: bool = True  # doc strings, value_info, debug metadata, default attributes, zero int32 zero points
    derive_bias_scales: bool = True  # an int32 bias's scale as a Mul of its layer's scales (scales.py)
    parity_samples: int = 8  # batch of seeded random inputs both models run on
    parity_rtol: float = 1e-6  # max |diff| allowed, relative to the largest |output|
    seed: int = 0
