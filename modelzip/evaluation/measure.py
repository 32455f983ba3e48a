"""What the pipeline measures on artifacts: Metrics after each step, latency of the final model.

``stats`` are the cheap part of Metrics (parameters, MACs, sizes: a tenth of a second), ``metrics``
adds accuracy on the eval split (seconds). Stats are cached per artifact id, metrics per (artifact
id, data spec); latency per (both artifacts, settings, CPU), baseline and final interleaved so
drift cancels. All are stored as their records' JSON, and kept in memory for the run (so
``--no-cache`` does not measure one artifact twice).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelzip.cache import StepCache, content_key
from modelzip.console import UI
from modelzip.evaluation.records import Baseline, Final, LatencyPair, LatencyResult, Metrics, Ratios
from modelzip.evaluation.runtime import default_threads
from modelzip.recipe import Recipe


class Measurer:
    def __init__(self, recipe: Recipe, cache: StepCache, data: Callable[[], Any], ui: UI, *,
                 data_key: Callable[[], Any]) -> None:
        self.recipe = recipe
        self.cache = cache
        self._data = data
        self._data_key = data_key  # the eval data's spec and file digests (modelzip.inputs)
        self.ui = ui
        self.threads = recipe.evaluation.threads or default_threads()
        self._memo: dict[str, Any] = {}  # key -> record, this run

    def metrics(self, artifact) -> Metrics:
        """Accuracy on the eval split plus parameters, MACs and size (cached)."""
        key = content_key(artifact=artifact.id, data=self._data_key(), seed=self.recipe.seed, what="metrics")
        return self._recalled(key, Metrics.from_json, lambda: self._with_accuracy(artifact))

    def stats(self, artifact) -> Metrics:
        """Parameters, MACs and size without accuracy (``accuracy`` None; cached)."""
        key = content_key(artifact=artifact.id, what="stats")
        return self._recalled(key, Metrics.from_json, lambda: self._stats(artifact))

    def _recalled(self, key: str, from_json, measure):
        """The record under ``key``: from this run, else the cache, else ``measure()`` (then stored)."""
        found = self._memo.get(key)
        if found is None:
            found = _cached(self.cache, key, from_json)
        if found is None:
            found = measure()
            self.cache.save_metrics(key, found.to_json())
        self._memo[key] = found
        return found

    def _with_accuracy(self, artifact) -> Metrics:
        from modelzip.evaluation.accuracy import onnx_task_accuracies, torch_task_accuracies

        stats = self.stats(artifact)
        if artifact.kind == "torch":
            module = artifact.loaded().module
            evaluate = lambda b, progress: torch_task_accuracies(module, b, progress=progress)  # noqa: E731
        else:
            evaluate = lambda b, progress: onnx_task_accuracies(  # noqa: E731
                Path(artifact.path), b, threads=self.threads, progress=progress)
        data = self._data()
        total = len(data.eval)
        with self.ui.track(total, f"accuracy ({stats.accuracy_backend}, {total} images)") as advance:
            accuracy = evaluate(data.batches("eval"), progress=advance)
        return stats.with_accuracy(accuracy.mean, total, accuracy.named)

    def _stats(self, artifact) -> Metrics:
        if artifact.kind == "torch":
            from modelzip.evaluation import torch_stats

            module = artifact.loaded().module
            total, nonzero = torch_stats.count_params(module)
            return Metrics(None, "torch", None, params_total=total, params_nonzero=nonzero,
                           macs=torch_stats.torch_macs(module, artifact.input_shape),
                           size_bytes=torch_stats.state_dict_bytes(module))
        from modelzip.evaluation import onnx_stats

        path = Path(artifact.path)
        total, nonzero = onnx_stats.onnx_param_counts(path)
        return Metrics(None, "onnxruntime", None, params_total=total, params_nonzero=nonzero,
                       macs=onnx_stats.onnx_macs(path), size_bytes=path.stat().st_size,
                       zip_bytes=onnx_stats.zip_bytes(path))

    def final(self, final, metrics: Metrics, baseline: Baseline, *, lineage: tuple, name: str,
              name_map: str | None = None) -> Final:
        """The final ONNX compared with the fp32 baseline ONNX: sizes (measured with its metrics),
        the latency of both, and the ratios. ``name_map``: the file beside it mapping names."""
        latency = self.latency(final, baseline.onnx_artifact) if self.recipe.evaluation.latency else None
        return Final(artifact=name, id=final.id, metrics=metrics, lineage=lineage, name_map=name_map,
                     baseline_size_bytes=baseline.onnx.size_bytes, baseline_zip_bytes=baseline.onnx.zip_bytes,
                     latency=latency, threads=self.threads,
                     ratios=Ratios.between(metrics, baseline, latency, self.recipe.data.batch_size))

    def latency(self, final, baseline) -> LatencyResult:
        """Latency at batch 1 and data.batch_size; cached per (artifacts, settings, CPU).

        A fully cached rerun then costs seconds. `--no-cache` measures again.
        """
        from modelzip.envinfo import cpu_model
        from modelzip.evaluation.runtime import TIMING_METHOD

        settings = self.recipe.evaluation
        # "latency/3": entries carry the interval, verdict and stop fields; older ones lack them.
        # "method": how the timed sessions were set up and taken in turns (entries from before lack
        # it: a rerun times again).
        key = content_key(what="latency/3", final=final.id, baseline=baseline.id, threads=self.threads,
                          batch=self.recipe.data.batch_size, settings=settings.timing_settings(),
                          cpu=cpu_model(), seed=self.recipe.seed, method=TIMING_METHOD)
        found = _cached(self.cache, key, lambda d: LatencyResult.from_json(d, cached=True))
        if found is not None:
            return found
        measured = LatencyResult(tuple(self._latency_pair(Path(final.path), Path(baseline.path), batch)
                                       for batch in sorted({1, self.recipe.data.batch_size})), cached=False)
        self.cache.save_metrics(key, measured.to_json(with_cached=False))
        return measured

    def _latency_pair(self, final_path: Path, baseline_path: Path, batch: int) -> LatencyPair:
        """Both models interleaved at ``batch``, the speedup's 95% interval and the verdict
        (latency.compare_latency; a byte-identical final is measured once)."""
        from modelzip.evaluation.latency import compare_latency

        settings = self.recipe.evaluation
        with self.ui.track(2, f"latency at batch {batch}"):
            baseline, final, comparison = compare_latency(
                baseline_path, final_path, tuple(self.recipe.model.input_shape), batch, threads=self.threads,
                warmup=settings.warmup, repeats=settings.repeats, seed=self.recipe.seed,
                tolerance=settings.latency_tolerance)
        return LatencyPair.of(batch, baseline, final, comparison)

    def environment(self) -> dict[str, Any]:
        from modelzip.envinfo import environment

        return environment(self.threads, memo=self.cache)


def _cached(cache: StepCache, key: str, from_json):
    """The record stored under ``key``, or None: missing, or (an intact file of) another shape."""
    found = cache.load_metrics(key)
    if found is None:
        return None
    try:
        return from_json(found)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
