"""The `quantize` pass: float ONNX in, quantized (checked, timed) ONNX out."""
from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelzip.errors import PassError
from modelzip.quantization import prepare
from modelzip.quantization.layers import Layer, all_aliases, find_layers, load_module_map, match_exclude
from modelzip.quantization.layers import suggest_names
from modelzip.quantization.rewrite import matmul_copy

OUTPUT_FILE = "model.onnx"


@dataclass
class Quantizer:
    """One mode's quantizer, ready to run with any set of nodes kept float."""

    settings: dict[str, Any]  # what was chosen and why, for the report
    run: Callable[[Iterable[str], Path], Path]  # (float nodes, output path) -> output path
    label: str  # "int8" / "int4": what the summary calls the quantized model


def run_quantize(artifact, config, ctx, *, pass_name: str):
    scratch = ctx.work_dir / "scratch"
    scratch.mkdir(exist_ok=True)
    try:
        return _run(artifact, config, ctx, pass_name, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # intermediate models: not part of the cache entry


def _run(artifact, config, ctx, pass_name: str, scratch: Path):
    import onnx

    from modelzip.quantization import inspect, summary

    trained = None
    if config.mode == "qat":  # train first; the trained float model is what gets exported
        from modelzip.quantization import qat

        trained = qat.train(artifact, config, ctx, pass_name=pass_name)
        artifact = artifact.evolve(module=trained.module)
    float_path = prepare.float_onnx(artifact, scratch, ctx.work_dir, pass_name=pass_name, step=ctx.step)
    prepared = scratch / "prepared.onnx"
    preprocess_note = prepare.preprocess(float_path, prepared)
    model = onnx.load(str(prepared))
    module_map = load_module_map(ctx.work_dir)
    layers = find_layers(model, module_map)
    aliases = all_aliases(model, module_map)
    # What the report calls a node: its layer's module, else its exporter module, else itself.
    labels = {node: names[-1] for node, names in aliases.items()}
    labels.update({layer.node: layer.label for layer in layers})
    excluded = _resolve_exclude(config.exclude, aliases, pass_name, ctx.step)
    quantizer = _make_quantizer(config, prepared, prepare.graph_input_name(model), ctx, scratch, trained)
    ctx.log(f"{config.mode}: {len(layers)} layers, {len(excluded)} node(s) excluded")

    search = None
    if config.max_accuracy_drop is None:
        quantized = quantizer.run(excluded, scratch / "quantized.onnx")
    else:
        search = _accuracy_search(config, ctx, quantizer, float_path, layers, excluded, scratch)
        quantized = search.best.path
    agreement = _check_runs(quantized, float_path, ctx, pass_name)
    latency = _latency(float_path, quantized, artifact.input_shape, ctx, config)
    keep_float = summary.float_is_faster(latency, ctx.recipe.data.batch_size) and config.prefer == "faster"
    output = ctx.work_dir / OUTPUT_FILE
    shutil.copyfile(float_path if keep_float else quantized, output)

    nodes = inspect.summarize(quantized, layers)
    ctx.record(**summary.record(
        config=config, quantizer=quantizer, preprocess=preprocess_note, nodes=nodes, layers=layers,
        labels=labels, excluded=excluded, search=search, latency=latency, agreement=agreement,
        float_bytes=float_path.stat().st_size, quantized_bytes=quantized.stat().st_size,
        returned_float=keep_float, batch_size=ctx.recipe.data.batch_size))
    if trained is not None:
        ctx.record(**qat.record(trained, quantizer, quantized, ctx.details["summary"]))
    return artifact.evolve(kind="onnx", path=output, module=None)


def _resolve_exclude(patterns: tuple[str, ...], aliases: dict[str, tuple[str, ...]], pass_name: str,
                     step: int) -> dict[str, str]:
    """node -> the pattern that keeps it float. A pattern matching nothing is a mistake."""
    matched, unmatched = match_exclude(patterns, aliases)
    if unmatched:
        pattern = unmatched[0]
        close = suggest_names(pattern, aliases)
        layers = sorted({names[-1] for names in aliases.values()})[:12]
        raise PassError(f"exclude pattern {pattern!r} matches no layer or node", pass_name=pass_name,
                        step=step, got=pattern,
                        expected="a torch module name or ONNX node name glob, e.g. " + ", ".join(layers),
                        fix=f"did you mean {' or '.join(map(repr, close))}?" if close
                        else "check the names above (globs like 'features.*' are allowed)")
    excluded: dict[str, str] = {}
    for pattern, nodes in matched.items():
        for node in nodes:
            excluded.setdefault(node, pattern)  # the first pattern naming a node is the reason shown
    return excluded


def _make_quantizer(config, prepared: Path, input_name: str, ctx, scratch: Path, trained=None) -> Quantizer:
    from modelzip.quantization import choice, dynamic, qat, weight_only

    if config.mode == "qat":
        return qat.quantizer(config, prepared, input_name, ctx, scratch, trained)
    if config.mode == "static":
        return _static_quantizer(config, prepared, input_name, ctx, scratch)
    if config.mode == "dynamic":
        reduce_range, reason = choice.reduce_range(config.reduce_range)
        settings = dynamic.DynamicSettings(config.per_channel, reduce_range)
        source = matmul_copy(prepared, scratch)
        described = {**settings.describe(), "reduce_range_reason": reason, "cpu": choice.cpu_summary()}
        return Quantizer(described, lambda nodes, out: dynamic.quantize(source, out, settings, nodes), "int8")
    settings = weight_only.WeightOnlySettings(config.bits, config.block_size, config.compute)
    source = matmul_copy(prepared, scratch)
    run = lambda nodes, out: weight_only.quantize(source, out, settings, nodes)  # noqa: E731
    return Quantizer(settings.describe(), run, f"int{config.bits}")


def _static_quantizer(config, prepared: Path, input_name: str, ctx, scratch: Path) -> Quantizer:
    """Calibrate once (streamed); every later quantization reuses the saved ranges."""
    from modelzip.quantization import choice, static

    reduce_range, reason = choice.reduce_range(config.reduce_range)
    settings = static.StaticSettings(config.method, config.percentile, config.activations == "symmetric",
                                     config.per_channel, reduce_range)
    cache = ctx.work_dir / static.CALIBRATION_FILE
    batches = static.calibration_batches(ctx.data, config.calibration_samples, config.calibration_batch_size,
                                         ctx.seed)
    samples = static.calibrate(prepared, batches, input_name, settings, cache, scratch)
    calibration = {"method": config.method, "samples": samples, "batch_size": config.calibration_batch_size}
    if config.method == "percentile":
        calibration["percentile"] = config.percentile
    described = {**settings.describe(), "reduce_range_reason": reason,
                 "activations_reason": choice.activations_reason(config), "calibration": calibration,
                 "cpu": choice.cpu_summary()}
    return Quantizer(described, lambda nodes, out: static.quantize(prepared, out, cache, settings, nodes),
                     "int8")


def _accuracy_search(config, ctx, quantizer: Quantizer, float_path: Path, layers: list[Layer],
                     excluded: dict[str, str], scratch: Path):
    from modelzip.evaluation import accuracy as ev
    from modelzip.evaluation.runtime import default_threads
    from modelzip.quantization import sensitivity

    if len(ctx.data.validation) == 0:
        raise PassError("max_accuracy_drop needs validation images, but the validation split is empty",
                        pass_name=ctx.pass_name, step=ctx.step, fix="set data.val_samples > 0")
    threads = ctx.recipe.evaluation.threads or default_threads()
    counter = itertools.count()

    def evaluate(path: Path) -> float:
        return ev.onnx_accuracy(path, ctx.data.batches("validation"), threads=threads)

    def quantize(float_layers: tuple[str, ...]) -> Path:
        return quantizer.run({*excluded, *float_layers}, scratch / f"try_{next(counter)}.onnx")

    candidates = [layer.node for layer in layers if layer.node not in excluded]
    float_accuracy = evaluate(float_path)
    steps = 1 + len(candidates) + config.max_float_layers
    with ctx.track(steps, "accuracy-aware quantization") as advance:
        return sensitivity.search(quantize, evaluate, candidates=candidates, float_accuracy=float_accuracy,
                                  budget=config.max_accuracy_drop, max_float_layers=config.max_float_layers,
                                  advance=advance)


def _check_runs(quantized: Path, float_path: Path, ctx, pass_name: str) -> dict[str, Any]:
    """onnx.checker, then one real batch through an onnxruntime CPU session, compared with float."""
    import numpy as np

    from modelzip.evaluation.accuracy import onnx_outputs
    from modelzip.onnx_export import check_onnx

    check_onnx(quantized, pass_name=pass_name, step=ctx.step)
    batch = next(iter(ctx.data.loader(ctx.data.calibration(64, seed=ctx.seed), 64)), None)
    if batch is None:
        raise PassError("no training images to check the quantized model with", pass_name=pass_name,
                        step=ctx.step, fix="use a dataset with a training split")
    images = batch[0].detach().cpu().numpy()
    try:
        got = onnx_outputs(quantized, images)
    except Exception as exc:  # ORT raises its own exception types (Fail, NotImplemented, ...)
        raise PassError(f"onnxruntime cannot run the quantized model: {exc}", pass_name=pass_name,
                        step=ctx.step,
                        fix="add the failing layer to `exclude:`, or try another mode") from exc
    expected = onnx_outputs(float_path, images)
    agreement = float((got.argmax(-1) == expected.argmax(-1)).mean())
    return {"samples": len(images), "top1_agreement": agreement,
            "max_abs_diff": float(np.abs(got - expected).max())}


def _latency(float_path: Path, quantized: Path, input_shape, ctx, config) -> dict[str, Any] | None:
    """Float vs quantized, interleaved, at batch 1 and the data batch size (None if disabled)."""
    from modelzip.evaluation import latency
    from modelzip.evaluation.runtime import default_threads

    settings = ctx.recipe.evaluation
    if not settings.latency and config.prefer == "smaller":
        return None
    threads = settings.threads or default_threads()
    results = {}
    for batch in sorted({1, ctx.recipe.data.batch_size}):
        measured = latency.measure_latency({"float": float_path, "quantized": quantized}, tuple(input_shape),
                                           batch, threads=threads, warmup=settings.warmup,
                                           repeats=settings.repeats, seed=ctx.seed)
        fp, q = measured["float"], measured["quantized"]
        results[f"batch_{batch}"] = {"batch": batch, "float_ms": round(fp.median_ms, 4),
                                     "quantized_ms": round(q.median_ms, 4),
                                     "speedup": round(fp.median_ms / q.median_ms, 3),
                                     "runs": q.runs, "threads": q.threads}
    return results
