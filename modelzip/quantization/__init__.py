"""The machinery behind the `quantize` pass (imported only when the pass runs).

- ``settings``: what the quantize pass asks for (frozen dataclasses; no recipe, no context).
- ``prepare``: the float ONNX to start from (the pass exports a torch input), ORT's pre-processing.
- ``layers``: which nodes are layers, their torch module names, what `exclude:` matches.
- ``static`` / ``dynamic`` / ``weight_only``: one quantizer per mode, each a callable
  ``quantize(float_nodes, out_path)`` so the accuracy search can re-run it cheaply.
- ``sensitivity``: the accuracy-aware search that keeps the most sensitive layers float.
- ``what_runs``: what runs quantized in a finished model (node counts, initializer types).
- ``summary``: the step's report details (``QuantizeDetails``) and its one-line summary.
- ``run``: ties these together, measures latency and returns the output file with the
  report's details. Failures are ``QuantizeFailure``s; the pass turns them into PassErrors.
"""
from __future__ import annotations

from modelzip.errors import MachineryFailure


class QuantizeFailure(MachineryFailure):
    """Quantization cannot give a correct model; the quantize pass turns it into a PassError."""
