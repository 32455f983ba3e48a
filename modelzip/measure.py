"""What the pipeline measures on artifacts: accuracy, size, MACs, latency.

Accuracy and static figures are cached per (artifact id, data spec); latency is
measured afresh on every run, baseline and final interleaved so drift cancels.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelzip.cache import StepCache, content_key
from modelzip.console import UI
from modelzip.evaluation import default_threads
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

    def metrics(self, artifact) -> dict[str, Any]:
        """Accuracy on the eval split plus parameters, MACs and size (cached)."""
        key = content_key(artifact=artifact.id, data=self._data_key(), seed=self.recipe.seed, what="metrics")
        found = self.cache.load_metrics(key)
        if found is not None:
            return found
        measured = self._torch_metrics(artifact) if artifact.kind == "torch" else self._onnx_metrics(artifact)
        self.cache.save_metrics(key, measured)
        return measured

    def _accuracy(self, evaluate, backend: str) -> dict[str, Any]:
        data = self._data()
        total = len(data.eval)
        with self.ui.track(total, f"accuracy ({backend}, {total} images)") as advance:
            accuracy = evaluate(data.batches("eval"), progress=advance)
        return {"accuracy": accuracy, "accuracy_backend": backend, "eval_samples": total}

    def _torch_metrics(self, artifact) -> dict[str, Any]:
        from modelzip import evaluation as ev

        total, nonzero = ev.count_params(artifact.module)
        return {**self._accuracy(lambda b, progress: ev.torch_accuracy(artifact.module, b, progress=progress),
                                 "torch"),
                "params_total": total, "params_nonzero": nonzero,
                "macs": ev.torch_macs(artifact.module, artifact.input_shape),
                "size_bytes": ev.state_dict_bytes(artifact.module)}

    def _onnx_metrics(self, artifact) -> dict[str, Any]:
        from modelzip import evaluation as ev

        path = Path(artifact.path)
        total, nonzero = ev.onnx_param_counts(path)
        evaluate = lambda b, progress: ev.onnx_accuracy(path, b, threads=self.threads, progress=progress)  # noqa: E731
        return {**self._accuracy(evaluate, "onnxruntime"),
                "params_total": total, "params_nonzero": nonzero, "macs": ev.onnx_macs(path),
                "size_bytes": path.stat().st_size, "zip_bytes": ev.zip_bytes(path)}

    def final(self, final, baseline, baseline_metrics: dict[str, Any]) -> dict[str, Any]:
        """What the final ONNX is compared with: the fp32 baseline ONNX's sizes (measured with
        its metrics) and the latency of both."""
        latency = self.latency(final, baseline) if self.recipe.evaluation.latency else None
        return {"baseline_size_bytes": baseline_metrics["size_bytes"],
                "baseline_zip_bytes": baseline_metrics["zip_bytes"], "latency": latency,
                "threads": self.threads}

    def latency(self, final, baseline) -> dict[str, Any]:
        """Latency at batch 1 and data.batch_size; cached per (artifacts, settings, CPU).

        A fully cached rerun then costs seconds. `--no-cache` measures again.
        """
        from modelzip.envinfo import cpu_model

        settings = self.recipe.evaluation
        # "latency/2": entries carry the interval and verdict fields; older ones lack them.
        key = content_key(what="latency/2", final=final.id, baseline=baseline.id, threads=self.threads,
                          batch=self.recipe.data.batch_size, settings=settings.model_dump(mode="json"),
                          cpu=cpu_model(), seed=self.recipe.seed)
        found = self.cache.load_metrics(key)
        if found is not None:
            return {**found, "cached": True}
        results: dict[str, Any] = {}
        for batch in sorted({1, self.recipe.data.batch_size}):
            results[f"batch_{batch}"] = self._latency_pair(Path(final.path), Path(baseline.path), batch)
        self.cache.save_metrics(key, results)
        return {**results, "cached": False}

    def _latency_pair(self, final_path: Path, baseline_path: Path, batch: int) -> dict[str, Any]:
        """Both models interleaved at ``batch``, the speedup's 95% interval and the verdict
        (modelzip.latency.compare_latency; a byte-identical final is measured once)."""
        from modelzip.latency import compare_latency

        settings = self.recipe.evaluation
        with self.ui.track(2, f"latency at batch {batch}"):
            baseline, final, comparison = compare_latency(
                baseline_path, final_path, tuple(self.recipe.model.input_shape), batch, threads=self.threads,
                warmup=settings.warmup, repeats=settings.repeats, seed=self.recipe.seed)
        return {"baseline": _latency_json(baseline), "final": _latency_json(final),
                "ratio": round(comparison.ratio, 4), "ci_low": round(comparison.ci_low, 4),
                "ci_high": round(comparison.ci_high, 4), "pairs": comparison.pairs,
                "verdict": comparison.verdict}

    def environment(self) -> dict[str, Any]:
        from modelzip.envinfo import environment

        return environment(self.threads)


def _batches(latency: dict[str, Any]):
    """The per-batch entries of a latency record (skipping flags such as "cached")."""
    return [(k, v) for k, v in latency.items() if k.startswith("batch_")]


def _latency_json(latency) -> dict[str, Any]:
    return {"batch": latency.batch, "median_ms": round(latency.median_ms, 4),
            "p90_ms": round(latency.p90_ms, 4), "mean_ms": round(latency.mean_ms, 4),
            "runs": latency.runs, "threads": latency.threads}


def ratios(final: dict[str, Any], baseline: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """Final vs the fp32 baseline ONNX measured in the same run (>1 means better)."""
    out: dict[str, Any] = {
        "size": final["baseline_size_bytes"] / final["size_bytes"],
        "zip_size": final["baseline_zip_bytes"] / final["zip_bytes"],
        "accuracy_delta": final["accuracy"] - baseline["torch"]["accuracy"],
        "accuracy_delta_vs_onnx": final["accuracy"] - baseline["onnx"]["accuracy"],
    }
    latency = final.get("latency")
    if latency:
        for batch_key, pair in _batches(latency):
            out[f"speedup_{batch_key}"] = pair["ratio"]  # baseline / final median, from the raw times
        out["speedup"] = out[f"speedup_batch_{batch_size}"]
    return out
