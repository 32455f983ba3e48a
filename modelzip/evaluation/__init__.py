"""Evaluation: what the pipeline measures on artifacts, and the records it reports them in.

- ``runtime``: the onnxruntime CPU session every measurement uses, and the default thread count.
- ``accuracy``: top-1 accuracy of a torch module or an ONNX classifier.
- ``torch_stats``: parameters, checkpoint bytes and MACs of a torch module.
- ``onnx_stats``: stored parameters, MACs and deflated bytes of an ONNX file.
- ``latency``: onnxruntime latency, models interleaved; the speedup interval and verdict.
- ``records``: frozen records of the results (Metrics, LatencyPair, Baseline, Final, Report...);
  their ``to_json()`` is the report.json schema (docs/report.md).
- ``measure``: the pipeline's Measurer, which caches Metrics and LatencyResults.

Data flows one way: runtime <- accuracy, latency; records <- measure. Nothing here imports
the pipeline or a pass.

Everything here *reads* an artifact and returns numbers; nothing here changes a
model (modules are put back in the train/eval mode they came in). Heavy
libraries (torch, onnx, onnxruntime) are imported inside the functions so that
importing this module stays cheap for the CLI's light paths.

Conventions the report relies on:

* MACs are multiply-accumulates for ONE sample (batch 1), counted only for
  Conv/ConvTranspose/Linear/MatMul-like ops: elementwise ops, pooling and
  normalisation are not counted. torch and ONNX counts of the same network agree.
* Parameter counts of an ONNX file count what the file stores (see
  `onnx_param_counts`), so they can differ from the torch module's: exporters
  fold BatchNorm into the conv before it (its weight and bias vanish), the
  legacy exporter stores identical tensors once (e.g. the all-zero biases of an
  untrained net), and 1-element initializers are not counted.
* Latency is onnxruntime on the CPU, models interleaved (see `latency.measure_latency`).
"""
