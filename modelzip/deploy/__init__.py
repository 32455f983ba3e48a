"""``deploy:``: the final model fanned out to deployment targets, each converted in a process of
its own (offline), cached by content like a step, and measured in its own runtime.

The pipeline calls :class:`Deployer` after the final model is measured. A target that cannot
convert, or whose runtime disagrees with the ONNX beyond its parity bar, is recorded and the
others still run; the pipeline raises DeployFailure (exit 3) once the report is written.
"""
from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelzip.atomic import copy_file
from modelzip.cache import StepCache, content_key, file_record
from modelzip.console import UI
from modelzip.deploy.records import CONVERSION_FAILED, NOT_MEASURED, PARITY_FAILED, PASSED, RUN_FAILED, DeployRecord
from modelzip.errors import TargetError
from modelzip.recipe import DeployStep, Recipe
from modelzip.target import Converted, Target, TargetConfig
from modelzip.target_registry import TargetRegistry

DEPLOY_DIR = "deploy"
CONVERTED = "converted.json"  # beside the files in a cache entry: files, details, refused attempts


@dataclass(frozen=True)
class Source:
    """An ONNX file a target converts from: its path, artifact id and how the report names it;
    ``program``: the same model as a torch.export program (.pt2), for a "torch" source."""

    path: Path
    id: str
    label: str
    program: Path | None = None


@dataclass
class Deployer:
    recipe: Recipe
    targets: TargetRegistry
    cache: StepCache
    ui: UI
    data: Callable[[], Any]  # the DataBundle, loaded on first use
    data_key: Callable[[bool], Any]  # for_eval -> the data's fingerprint (modelzip.inputs)
    threads: int
    cpu: str

    def run(self, final: Source, float_source: Callable[[], Source], final_accuracy: float | None,
            staging: Path, torch_source: Callable[[], Source | None] = lambda: None) -> list[DeployRecord]:
        """Convert and measure every target; their files are staged in ``staging/deploy/<target>/``.
        ``torch_source``: the float model as a torch program (None: the recipe never had one)."""
        records = []
        for step in self.recipe.deploy:
            target = self.targets.get(step.target)()
            kind = target.source(step.config)
            try:
                source = final if kind == "final" else float_source() if kind == "float" else torch_source()
                if source is None:
                    raise TargetError(f"{step.target} converts from a torch model, and this recipe's model never "
                                      "was one", got="an ONNX model source",
                                      fix=f"leave {step.target} out of `deploy:`")
            except TargetError as exc:
                records.append(DeployRecord(
                    status=CONVERSION_FAILED, target=step.target, precision=step.config.precision,
                    runtime=target.runtime, converted_from="none", params=step.params(),
                    error={"what": exc.what, "nodes": [], "got": exc.got, "fix": exc.fix}))
                continue
            records.append(self._one(step, target, source, final, final_accuracy, staging))
        return records

    def _one(self, step: DeployStep, target: Target, source: Source, final: Source, final_accuracy: float | None,
             staging: Path) -> DeployRecord:
        config = step.config
        base = {"target": step.target, "precision": config.precision, "runtime": target.runtime,
                "converted_from": source.label, "params": step.params()}
        key = content_key(what="deploy", target=step.target, params=step.params(), version=target.version,
                          source=source.id, seed=self.recipe.seed, batches=self._batches(),
                          calibration=self.data_key(False) if target.calibrates(config) else None)
        try:
            entry, converted, meta, cached = self._converted(key, step, target, source)
        except TargetError as exc:
            self.ui.log(f"deploy {step.target}: conversion failed")
            return DeployRecord(status=CONVERSION_FAILED, **base, error={
                "what": exc.what, "nodes": [{"name": n, "op": op} for n, op in exc.nodes], "got": exc.got,
                "fix": exc.fix})
        folder = staging / DEPLOY_DIR / step.target
        files = {}
        for name in converted.files:
            copy_file(entry / name, folder / name)
            files[name] = file_record(folder / name)
        sizes = _sizes(folder, converted.files)
        common = {**base, "path": f"{DEPLOY_DIR}/{step.target}", "files": files, "size_bytes": sizes[0],
                  "zip_bytes": sizes[1], "details": converted.details, "blocked": tuple(meta.get("blocked", ())),
                  "wall_time_s": meta.get("wall_time_s"), "cached": cached}
        why_not = target.not_runnable()
        if why_not is not None:
            return DeployRecord(status=NOT_MEASURED, note=_note(why_not, converted), **common)
        try:
            measured = self._measured(key, target, entry, converted, source, final)
        except TargetError as exc:
            self.ui.log(f"deploy {step.target}: its runtime failed")
            return DeployRecord(status=RUN_FAILED, **common, error={"what": exc.what, "nodes": [], "got": exc.got,
                                                                    "fix": exc.fix})
        parity = _parity(config, measured["parity"])
        delta = None if final_accuracy is None else round(measured["accuracy"] - final_accuracy, 6)
        return DeployRecord(status=PASSED if parity["passed"] else PARITY_FAILED, accuracy=measured["accuracy"],
                            accuracy_delta=delta, parity=parity, latency=measured.get("latency"), **common)

    def _converted(self, key: str, step: DeployStep, target: Target, source: Source):
        """(cache entry, Converted, converted.json, cached?): from the cache, else converted now."""
        entry = self.cache.lookup(key)
        cached = entry is not None
        if entry is None:
            self.ui.log(f"deploy {step.target} ({step.config.precision}): converting from the {source.label}")
            from modelzip.deploy.worker import convert_offline

            with tempfile.TemporaryDirectory(prefix="modelzip-deploy-") as scratch, self.cache.store(key) as work:
                calibration = self._calibration(step.config, Path(scratch)) if target.calibrates(step.config) else None
                result = convert_offline(type(target), step.params(), source.path,
                                         tuple(self.recipe.model.input_shape), calibration, work, Path(scratch),
                                         program=source.program, batches=self._batches())
                missing = [name for name in result["files"] if not (work / name).is_file()]
                if missing:
                    raise TargetError(f"the converter reported files it did not write: {missing}",
                                      fix="report this to the target's author")
                (work / CONVERTED).write_text(json.dumps(result, indent=1))
            entry = self.cache.entry(key)
        meta = json.loads((entry / CONVERTED).read_text())
        return entry, Converted(tuple(meta["files"]), meta["details"]), meta, cached

    def _batches(self) -> tuple[int, ...]:
        """The batch sizes every target is measured at: 1 and data.batch_size."""
        return tuple(sorted({1, self.recipe.data.batch_size}))

    def _calibration(self, config: TargetConfig, scratch: Path) -> Path:
        """The calibration split's first ``calibration_samples`` images (seeded) as one .npy file."""
        import numpy as np

        data = self.data()
        subset = data.calibration(config.calibration_samples, seed=self.recipe.seed)
        images = np.concatenate([x.detach().cpu().numpy() for x, _ in data.loader(subset)])
        path = scratch / "calibration.npy"
        np.save(path, images.astype(np.float32))
        return path

    def _measured(self, key: str, target: Target, entry: Path, converted: Converted, source: Source,
                  final: Source) -> dict[str, Any]:
        """Accuracy, parity and latency in the target's runtime (cached like a measurement)."""
        from modelzip.deploy.measure import LatencySettings, measure_target
        from modelzip.offline import offline

        settings = self.recipe.evaluation
        measure_key = content_key(what="deploy-measure/2", converted=key, source=source.id, final=final.id,
                                  data=self.data_key(True), threads=self.threads, cpu=self.cpu,
                                  batch=self.recipe.data.batch_size, timing=settings.timing_settings())
        found = self.cache.load_metrics(measure_key)
        if found is not None:
            return found
        latency = LatencySettings(self.threads, settings.warmup, settings.repeats, settings.latency_tolerance,
                                  self.recipe.seed) if settings.latency else None
        data = self.data()

        def batches(size: int):
            return ((x.detach().cpu().numpy(), y.detach().cpu().numpy()) for x, y in data.batches("eval", size))

        started = time.perf_counter()
        with self.ui.track(1, f"deploy {target.name}: accuracy, parity and latency in {target.runtime}"), offline():
            try:
                measured = measure_target(lambda: target.open(entry, converted, self.threads), source.path,
                                          final.path, batches, batch_size=self.recipe.data.batch_size,
                                          input_shape=tuple(self.recipe.model.input_shape), latency=latency)
            except Exception as exc:  # a runtime that cannot load or run what its converter wrote
                raise TargetError(f"{target.runtime} could not run the converted model ({type(exc).__name__}: "
                                  f"{str(exc)[:500]})", fix="leave this target out of `deploy:`") from exc
        measured["wall_time_s"] = round(time.perf_counter() - started, 3)
        self.cache.save_metrics(measure_key, measured)
        return measured


def _sizes(folder: Path, names: tuple[str, ...]) -> tuple[int, int]:
    """Bytes of the target's files, raw and deflated (level 9), summed."""
    from modelzip.evaluation.onnx_stats import zip_bytes

    return (sum((folder / n).stat().st_size for n in names), sum(zip_bytes(folder / n) for n in names))


def _parity(config: TargetConfig, parity: dict[str, Any]) -> dict[str, Any]:
    """The parity record with its bar: the worst value over batch 1 and data.batch_size, the limit, passed."""
    measure, limit = config.parity_bar()
    checks = [v for k, v in parity.items() if k.startswith("batch_")]
    if measure == "max_abs_diff":
        worst = max(max(c["max_abs_diff"], default=0.0) for c in checks)
        passed = worst <= limit
    else:
        worst = min(c["agreement"] for c in checks)
        passed = worst >= limit
    return {**parity, "measure": measure, "limit": limit, "worst": worst, "passed": passed,
            "against": "the ONNX it was converted from, in onnxruntime"}


def _note(why_not: str, converted: Converted) -> str:
    command = converted.details.get("trtexec")
    return why_not + (f"; build it with: {command}" if command else "")
