"""The machinery behind the `quantize` pass (imported only when the pass runs).

- ``prepare``: the float ONNX to start from (exporting a torch input), ORT's pre-processing.
- ``layers``: which nodes are layers, their torch module names, what `exclude:` matches.
- ``static`` / ``dynamic`` / ``weight_only``: one quantizer per mode, each a callable
  ``quantize(float_nodes, out_path)`` so the accuracy search can re-run it cheaply.
- ``sensitivity``: the accuracy-aware search that keeps the most sensitive layers float.
- ``inspect``: what runs quantized in a finished model (node counts, initializer types).
- ``run``: the pass itself, tying these together, measuring latency and recording the report.
"""
