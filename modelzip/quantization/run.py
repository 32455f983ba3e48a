"""Quantization of a float ONNX model: quantized, checked and timed ONNX out.

Plain inputs only (the float ONNX file, QuantizeSettings, the data, Timing, directories,
Progress); the quantize pass maps its config and context onto them, exports a torch input
beforehand and turns a QuantizeFailure into a PassError.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelzip.evaluation.records import LatencyPair, LatencyResult
from modelzip.quantization import QuantizeFailure, placement, prepare, qat
from modelzip.quantization.layers import Layer, all_aliases, find_layers, load_module_map, match_exclude, suggest_names
from modelzip.quantization.quantizer import Quantizer
from modelzip.quantization.rewrite import matmul_copy
from modelzip.quantization.settings import Progress, QuantizeResult, QuantizeSettings, Timing

if TYPE_CHECKING:  # pragma: no cover - a plain value object; its module reads recipe specs
    from modelzip.sources.data import DataBundle

__all__ = ["OUTPUT_FILE", "Quantizer", "measure_latency", "quantize_onnx"]

OUTPUT_FILE = "model.onnx"


def quantize_onnx(source: Path, settings: QuantizeSettings, *, data: DataBundle,
                  input_shape: tuple[int, ...], timing: Timing, work_dir: Path, scratch: Path, seed: int = 0,
                  progress: Progress | None = None, trained: qat.Trained | None = None) -> QuantizeResult:
    """Quantize the float ONNX ``source`` into ``work_dir``/model.onnx.

    ``scratch`` holds intermediate models (the caller deletes it). ``trained``: mode qat's
    trained model, whose learned ranges the int8 graph uses. The node -> module map beside
    ``source`` (node_modules.json) is copied into ``work_dir``.
    """
    import onnx

    from modelzip.quantization import summary, what_runs

    progress = progress or Progress()
    float_path = prepare.float_onnx(source, scratch, work_dir)
    prepared = scratch / "prepared.onnx"
    preprocess_note = prepare.preprocess(float_path, prepared)
    arranged = _arrange(settings, prepared)
    model = onnx.load(str(prepared))
    module_map = load_module_map(work_dir)
    added = set(arranged.float_nodes) if arranged is not None else set()  # placement's own nodes: not layers
    layers = [layer for layer in find_layers(model, module_map) if layer.node not in added]
    aliases = all_aliases(model, module_map)
    # What the report calls a node: its layer's module, else its exporter module, else itself.
    labels = {node: names[-1] for node, names in aliases.items()}
    labels.update({layer.node: layer.label for layer in layers})
    excluded = _resolve_exclude(settings.exclude, aliases)
    calibration = _Calibration(data, settings, seed, work_dir, scratch)
    quantizer = _make_quantizer(settings, prepared, prepare.graph_input_name(model), calibration, trained,
                                arranged)
    progress.log(f"{settings.mode}: {len(layers)} layers, {len(excluded)} node(s) excluded")

    search = None
    if settings.max_accuracy_drop is None:
        quantized = quantizer.run(excluded, scratch / "quantized.onnx")
    else:
        search = _accuracy_search(settings, data, timing, progress, quantizer, float_path, layers, excluded,
                                  scratch)
        quantized = search.best.path
    if settings.mode in ("static", "qat"):  # QDQ: onnxruntime must fuse the pairs (metadata says how)
        from modelzip.quantization.static import mark_session_needs

        mark_session_needs(quantized)
    agreement = _check_runs(quantized, float_path, data, seed)
    latency = measure_latency(float_path, quantized, input_shape, timing, settings.prefer, seed, progress)
    keep_float = summary.float_is_faster(latency, timing.batch_size) and settings.prefer == "faster"
    output = work_dir / OUTPUT_FILE
    shutil.copyfile(float_path if keep_float else quantized, output)

    nodes = what_runs.summarize(quantized, layers) | {"as_run": what_runs.as_run(quantized)}
    details = summary.record(
        chosen=settings, quantizer=quantizer, preprocess=preprocess_note, nodes=nodes, layers=layers,
        labels=labels, excluded=excluded, search=search, latency=latency, agreement=agreement,
        float_bytes=float_path.stat().st_size, quantized_bytes=quantized.stat().st_size,
        returned_float=keep_float, batch_size=timing.batch_size)
    if trained is not None:
        details = dataclasses.replace(details, **qat.record(trained, quantizer, quantized, details.summary))
    return QuantizeResult(output, details)


class _Calibration:
    """The seeded calibration subset of static and qat mode, and where its ranges go."""

    def __init__(self, data: DataBundle, settings: QuantizeSettings, seed: int, work_dir: Path,
                 scratch: Path) -> None:
        from modelzip.quantization.static import CALIBRATION_FILE

        self.data, self.settings, self.seed = data, settings, seed
        self.work_dir, self.cache, self.scratch = work_dir, work_dir / CALIBRATION_FILE, scratch

    def batches(self):
        from modelzip.quantization import static

        return static.calibration_batches(self.data, self.settings.calibration_samples,
                                          self.settings.calibration_batch_size, self.seed)


def _resolve_exclude(patterns: tuple[str, ...], aliases: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """node -> the pattern that keeps it float. A pattern matching nothing is a mistake."""
    matched, unmatched = match_exclude(patterns, aliases)
    if unmatched:
        pattern = unmatched[0]
        close = suggest_names(pattern, aliases)
        layers = sorted({names[-1] for names in aliases.values()})[:12]
        raise QuantizeFailure(f"exclude pattern {pattern!r} matches no layer or node", got=pattern,
                              expected="a torch module name or ONNX node name glob, e.g. "
                              + ", ".join(layers),
                              fix=f"did you mean {' or '.join(map(repr, close))}?" if close
                              else "check the names above (globs like 'features.*' are allowed)")
    excluded: dict[str, str] = {}
    for pattern, nodes in matched.items():
        for node in nodes:
            excluded.setdefault(node, pattern)  # the first pattern naming a node is the reason shown
    return excluded


def _arrange(settings: QuantizeSettings, prepared: Path) -> placement.Placement | None:
    """Static and qat: the float graph rewritten in place for onnxruntime's int8 kernels on this CPU
    (before calibration, so that tensors it adds get ranges). None for the other modes."""
    from modelzip.envinfo import cpu_flags

    if settings.mode not in ("static", "qat"):
        return None
    return placement.arrange(prepared, enabled=settings.placement == "auto", flags=cpu_flags())


def _make_quantizer(settings: QuantizeSettings, prepared: Path, input_name: str, calibration: _Calibration,
                    trained: qat.Trained | None, arranged: placement.Placement | None) -> Quantizer:
    from modelzip.quantization import choice, dynamic, weight_only

    if settings.mode == "qat":
        return qat.quantizer(settings, prepared, input_name, calibration, trained, arranged)
    if settings.mode == "static":
        return _static_quantizer(settings, prepared, input_name, calibration, arranged)
    if settings.mode == "dynamic":
        reduce_range, reason = choice.reduce_range(settings.reduce_range)
        chosen = dynamic.DynamicSettings(settings.per_channel, reduce_range)
        source = matmul_copy(prepared, calibration.scratch)
        described = {**chosen.describe(), "reduce_range_reason": reason, "cpu": choice.cpu_summary()}
        return Quantizer(described, lambda nodes, out: dynamic.quantize(source, out, chosen, nodes), "int8")
    chosen = weight_only.WeightOnlySettings(settings.bits, settings.block_size, settings.compute)
    source = matmul_copy(prepared, calibration.scratch)
    run = lambda nodes, out: weight_only.quantize(source, out, chosen, nodes)  # noqa: E731
    return Quantizer(chosen.describe(), run, f"int{settings.bits}")


def _static_quantizer(settings: QuantizeSettings, prepared: Path, input_name: str,
                      calibration: _Calibration, arranged: placement.Placement) -> Quantizer:
    """Calibrate once (streamed); every later quantization reuses the saved ranges."""
    from modelzip.quantization import choice, static

    reduce_range, reason = choice.reduce_range(settings.reduce_range)
    chosen = static.StaticSettings(settings.method, settings.percentile, settings.activations == "symmetric",
                                   settings.per_channel, reduce_range)
    cache = calibration.cache
    samples = static.calibrate(prepared, calibration.batches(), input_name, chosen, cache,
                               calibration.scratch)
    described_calibration = {"method": settings.method, "samples": samples,
                             "batch_size": settings.calibration_batch_size}
    if settings.method == "percentile":
        described_calibration["percentile"] = settings.percentile
    described = {**chosen.describe(), "reduce_range_reason": reason,
                 "activations_reason": choice.activations_reason(settings.activations_given),
                 "calibration": described_calibration, "placement": arranged.to_json(),
                 "cpu": choice.cpu_summary()}
    keep_float = arranged.float_nodes
    return Quantizer(described,
                     lambda nodes, out: static.quantize(prepared, out, cache, chosen, {*nodes, *keep_float}),
                     "int8")


def _accuracy_search(settings: QuantizeSettings, data: DataBundle, timing: Timing, progress: Progress,
                     quantizer: Quantizer, float_path: Path, layers: list[Layer], excluded: dict[str, str],
                     scratch: Path):
    from modelzip.evaluation import accuracy as ev
    from modelzip.evaluation.runtime import default_threads
    from modelzip.quantization import sensitivity

    if len(data.validation) == 0:
        raise QuantizeFailure("max_accuracy_drop needs validation images, but the validation split is empty",
                              fix="set data.val_samples > 0")
    threads = timing.threads or default_threads()
    counter = itertools.count()

    def evaluate(path: Path) -> float:
        return ev.onnx_accuracy(path, data.batches("validation"), threads=threads)

    def quantize(float_layers: tuple[str, ...]) -> Path:
        return quantizer.run({*excluded, *float_layers}, scratch / f"try_{next(counter)}.onnx")

    candidates = [layer.node for layer in layers if layer.node not in excluded]
    float_accuracy = evaluate(float_path)
    steps = 1 + len(candidates) + settings.max_float_layers
    track = progress.track or (lambda total, description: contextlib.nullcontext(lambda n=1: None))
    with track(steps, "accuracy-aware quantization") as advance:
        return sensitivity.search(quantize, evaluate, candidates=candidates, float_accuracy=float_accuracy,
                                  budget=settings.max_accuracy_drop,
                                  max_float_layers=settings.max_float_layers,
                                  advance=advance)


def _check_runs(quantized: Path, float_path: Path, data: DataBundle, seed: int) -> dict[str, Any]:
    """onnx.checker, then one real batch through an onnxruntime CPU session, compared with float."""
    import numpy as np

    from modelzip.evaluation.accuracy import onnx_outputs
    from modelzip.onnx_export import checker_problem

    problem = checker_problem(quantized)
    if problem is not None:
        raise QuantizeFailure(f"the ONNX file fails onnx.checker: {problem}")
    batch = next(iter(data.loader(data.calibration(64, seed=seed), 64)), None)
    if batch is None:
        raise QuantizeFailure("no training images to check the quantized model with",
                              fix="use a dataset with a training split")
    images = batch[0].detach().cpu().numpy()
    try:
        got = onnx_outputs(quantized, images)
    except Exception as exc:  # ORT raises its own exception types (Fail, NotImplemented, ...)
        raise QuantizeFailure(f"onnxruntime cannot run the quantized model: {exc}",
                              fix="add the failing layer to `exclude:`, or try another mode") from exc
    expected = onnx_outputs(float_path, images)
    agreement = float((got.argmax(-1) == expected.argmax(-1)).mean())
    return {"samples": len(images), "top1_agreement": agreement,
            "max_abs_diff": float(np.abs(got - expected).max())}


def measure_latency(float_path: Path, quantized: Path, input_shape, timing: Timing, prefer: str, seed: int,
             progress: Progress) -> LatencyResult | None:
    """Float (the baseline) vs quantized (the final model) at batch 1 and the data batch size,
    as the pipeline times its final model: interleaved, with the speedup's 95% interval and
    verdict (latency.compare_latency), when `prefer: faster` chooses by it; else None: the pipeline
    times the final model against the baseline anyway (a quantized ONNX goes on only through ONNX
    passes such as optimize), and timing the pair here as well cost a fifth of a quantize-only run."""
    from modelzip.evaluation.latency import compare_latency
    from modelzip.evaluation.runtime import default_threads

    if prefer != "faster":
        return None
    threads = timing.threads or default_threads()
    track = progress.track or (lambda total, description: contextlib.nullcontext(lambda n=1: None))
    pairs = []
    for batch in sorted({1, timing.batch_size}):
        with track(2, f"quantized vs float latency at batch {batch}"):
            measured = compare_latency(float_path, quantized, tuple(input_shape), batch, threads=threads,
                                       warmup=timing.warmup, repeats=timing.repeats, seed=seed,
                                       tolerance=timing.tolerance)
        pairs.append(LatencyPair.of(batch, *measured))
    return LatencyResult(tuple(pairs))
