"""Runs a recipe: load the input model, measure the baseline, run each pass
through the cache, measure the final ONNX, check gates, write the report.

Passes only transform artifacts; everything else (caching, lineage,
evaluation, reporting) happens here.

A fully cached rerun imports neither torch nor onnxruntime: cache keys come from file
digests (sources.identity), cached torch artifacts load only when a step must run on them
(artifacts.load_artifact(lazy=True)), and measurements are cached records.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cache, cached_property
from pathlib import Path
from typing import Any

from modelzip import artifacts as art
from modelzip import distributed, inputs, locking
from modelzip.cache import StepCache, content_key
from modelzip.console import UI, SilentUI
from modelzip.context import PassContext
from modelzip.errors import InputError, ModelzipError, PassError
from modelzip.evaluation.latency import timed_once
from modelzip.evaluation.measure import Measurer
from modelzip.evaluation.records import Baseline, Final, GateResult, Metrics, Report, StepRecord
from modelzip.findings import find_problems
from modelzip.gates import check_gates, teacher_accuracy
from modelzip.onnx_optimize import NAME_MAP_FILE
from modelzip.recipe import PassStep, Recipe
from modelzip.registry import PassRegistry, default_registry
from modelzip.report import write_report
from modelzip.report_html import write_html
from modelzip.run_folder import MODEL, NAME_MAP, RESOLVED_RECIPE, RunFolder


@dataclass
class RunOptions:
    out: Path | None = None  # overrides recipe.output
    use_cache: bool = True
    device: str = "auto"  # auto | cpu | cuda
    ui: UI = field(default_factory=SilentUI)
    registry: PassRegistry | None = None
    wait: bool = False  # another run holds the output folder or cache: wait for it (else InputError)


@dataclass
class RunResult:
    output_dir: Path
    report: dict[str, Any]  # report.json as written: record.to_json()
    gates: list[GateResult]
    record: Report

    @property
    def failed_gates(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    @property
    def failed_targets(self) -> list:
        """The deploy records (modelzip.deploy.records) that failed: conversion, runtime or parity."""
        return [d for d in self.record.deploy if d.failed]


def run_recipe(recipe: Recipe, options: RunOptions | None = None) -> RunResult | None:
    """Run ``recipe``. Under torchrun, only rank 0 returns a result (the others return None)."""
    options = options or RunOptions()
    layout = distributed.init(resolve_device(options.device))
    runner = _Runner(recipe, options, layout)
    if not layout.is_main:
        runner.follow()
        distributed.shutdown()
        return None
    try:
        with runner.locked():
            return runner.run()
    finally:
        if layout.active:
            distributed.broadcast({"op": "done"})  # releases the followers, on success or failure
            # An orderly exit: a gloo process group torn down at interpreter exit can abort.
            distributed.shutdown()


def resolve_device(requested: str) -> str:
    if requested == "cpu":
        return requested
    from modelzip.envinfo import cuda_possible

    available = cuda_possible() and _torch_sees_cuda()  # torch is imported only where a GPU may be
    if requested == "auto":
        return "cuda" if available else "cpu"
    if requested == "cuda" and not available:
        raise InputError("--device cuda was requested but CUDA is not available", got="cuda",
                         expected="auto or cpu on this machine", fix="use --device auto")
    return requested


def _torch_sees_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _seed_torch(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


class _Runner:
    def __init__(self, recipe: Recipe, options: RunOptions, layout: distributed.Layout) -> None:
        self.recipe = recipe
        self.options = options
        self.layout = layout
        self.ui = options.ui if layout.is_main else SilentUI()
        # The registry the recipe was validated with, so a custom one is passed once (load_recipe).
        self.registry = options.registry or recipe.registry or default_registry()
        self.out = Path(options.out) if options.out else recipe.output_dir
        cache_root = recipe.resolve(recipe.cache_dir) or self.out / ".cache"
        self.cache = StepCache(cache_root, enabled=options.use_cache, on_damage=self.ui.log)
        self.folder = RunFolder(self.out)
        self.device = resolve_device(options.device)
        self.executed: set[str] = set()  # keys run in this process: not "cached" in the report
        self._fingerprint_memo: dict[Any, Any] = {}
        # The baseline's default export, by the id of the torch artifact it came from (PassContext.exported).
        self._exports: dict[str, tuple[Path, dict[str, Any]]] = {}
        # The artifact entering the first quantizing pass, and that step's label: what a deploy
        # target that quantizes with its own tools converts from (None: no pass quantizes).
        self._float_parent: tuple[art.Artifact, str] | None = None
        # The last torch model before any pass quantized, and how the report names it: what a
        # target whose converter reads PyTorch converts from (None: the model was never torch).
        self._float_torch: tuple[art.Artifact, str] | None = None

    @cached_property
    def data(self):
        from modelzip.sources.data import load_data

        self.ui.log(f"loading data: {self.recipe.data.dataset}")
        return load_data(self.recipe.data, base_dir=self.recipe.base_dir, seed=self.recipe.seed,
                         tasks=self.recipe.model.tasks)

    @cached_property
    def measurer(self) -> Measurer:
        return Measurer(self.recipe, self.cache, lambda: self.data, self.ui,
                        data_key=lambda: self._data_key(for_eval=True))

    def _data_key(self, *, for_eval: bool) -> dict[str, Any]:
        files = self._fingerprints("dataset files", self._dataset_digests)  # hashed once for both keys
        return inputs.data_fingerprint(self.recipe.data, self.recipe.base_dir, for_eval=for_eval, files=files)

    def _dataset_digests(self) -> dict[str, str]:
        spec = self.recipe.data
        digests = inputs.dataset_digests(spec, self.recipe.base_dir, memo=self.cache)
        if not digests and spec.download:
            # The files are not there yet: fetch them first, or this run's keys would lack their
            # digests and the next run (which finds them) would redo every step.
            self.data  # noqa: B018 - loading is what downloads
            digests = inputs.dataset_digests(spec, self.recipe.base_dir, memo=self.cache)
        return digests

    def _fingerprints(self, name, compute):
        """Fingerprints are computed once per run (hashing the dataset files costs ~0.1 s)."""
        if name not in self._fingerprint_memo:
            self._fingerprint_memo[name] = compute()
        return self._fingerprint_memo[name]

    def step_inputs(self, pass_obj, config) -> dict[str, Any]:
        """What a step reads besides its input artifact and params (see Pass.reads_for)."""
        reads = pass_obj.reads_for(config)
        return {
            "device": self.device,
            "data": self._data_key(for_eval=False) if "data" in reads else None,
            "timing": self._fingerprints("timing", lambda: inputs.timing_fingerprint(
                self.recipe, self.measurer.threads)) if "timing" in reads else None,
            "files": inputs.named_files(pass_obj.input_files(config), self.recipe),
            # Only when read: a new key for every pass would turn every cached step into a miss.
            **({"cpu": inputs.cpu_fingerprint()} if "cpu" in reads else {}),
        }

    @contextmanager
    def locked(self):
        """Hold the output folder and the step cache for this run; clean what a killed run left."""
        with locking.hold_all([(self.out, "output folder"), (self.cache.root, "step cache")],
                              wait=self.options.wait, log=self.ui.log):
            for leftover in self.cache.clean_interrupted():
                self.ui.log(f"removed {leftover.name}, left by an interrupted run")
            yield

    def build_module(self):
        from modelzip.sources.models import build_model

        return build_model(self.recipe.model, self.recipe.base_dir)

    def run(self) -> RunResult:
        started = time.perf_counter()
        self.folder.prepare()
        self._stage_resolved_recipe()
        source = self._load_input()
        classes = self._preflight(source)
        with timed_once():  # a pair of files a pass timed is not timed again for the final latency
            baseline = self._baseline(source)
            artifact, steps = self._steps(source)
            final = self._final(artifact, baseline, steps[-1].metrics)
            deployed = self._deploy(source, artifact, final)
        gates = check_gates(self.recipe.gates, final, teacher_accuracy(steps))
        found = find_problems(baseline.reference, steps, classes, final.latency)
        staged = (MODEL, RESOLVED_RECIPE) + ((NAME_MAP,) if final.name_map else ())
        record = Report(self.recipe.name, self.recipe.seed, time.perf_counter() - started, baseline, tuple(steps),
                        final, tuple(gates), self.measurer.environment(),
                        files=self.folder.digests(*staged), warnings=found.warnings,
                        unchecked=found.unchecked, evaluation=self.recipe.evaluation.model_dump(mode="json"),
                        deploy=tuple(deployed))
        report = record.to_json()
        write_report(self.folder.staging, report)
        write_html(self.folder.staging, report, charts=self.cache)
        self.folder.commit()  # model, resolved recipe and reports appear together
        return RunResult(self.out, report, gates, record)

    def _steps(self, source: art.Artifact) -> tuple[art.Artifact, list[StepRecord]]:
        """Every pass of the recipe, then an export if the last one left a torch model, and an
        optimize unless the recipe ends with one or says `optimize: false`. Accuracy is evaluated
        after each step under ``evaluation.steps: all``, else after the last one only."""
        every = self.recipe.evaluation.steps == "all"
        artifact, steps = source, []
        for index, step in enumerate(self.recipe.passes):
            if self._float_parent is None and artifact.kind == "torch":
                self._float_torch = artifact, f"the input of passes[{index}].{step.name}"
            if self._float_parent is None and self.registry.get(step.name).quantizes:
                self._float_parent = artifact, f"passes[{index}].{step.name}"
            artifact, record = self._step(index, step, artifact, baseline_model=source, evaluate=every)
            steps.append(record)
        if artifact.kind == "torch":  # every run ends in an ONNX file
            if self._float_parent is None:
                self._float_torch = artifact, "the output of the last pass"
            self.ui.log("the last pass left a torch model: exporting it with default settings")
            implicit = PassStep(name="export", config=self.registry.get("export").Config())
            artifact, record = self._step(len(steps), implicit, artifact, baseline_model=source, evaluate=every)
            steps.append(replace(record, implicit=True))
        if self.recipe.optimize and steps[-1].pass_name != "optimize":  # the written file is lean
            artifact, record = self._step(len(steps), self._optimize_step(), artifact, baseline_model=source,
                                          evaluate=every)
            steps.append(replace(record, implicit=True))
        if not steps[-1].metrics.evaluated:  # the final model is always evaluated
            steps[-1] = replace(steps[-1], metrics=self.measurer.metrics(artifact))
        return artifact, steps

    def _deploy(self, source: art.Artifact, artifact: art.Artifact, final: Final) -> list:
        """Every `deploy:` target converted and measured (modelzip.deploy); files staged with the model."""
        if not self.recipe.deploy:
            return []
        from modelzip.deploy import Deployer, Source
        from modelzip.envinfo import cpu_model
        from modelzip.target_registry import default_targets

        final_source = Source(Path(artifact.path), artifact.id, "final ONNX")

        def float_source() -> Source:
            if self._float_parent is None:  # nothing quantized: the final model is the float one
                return final_source
            parent, label = self._float_parent
            if parent.kind == "torch":
                parent = self._float_onnx(parent, source)
            return Source(Path(parent.path), parent.id, f"float ONNX (the input of {label})")

        def torch_source() -> Source | None:
            if self._float_torch is None:
                return None
            from modelzip.deploy.program import torch_program

            parent, label = self._float_torch
            parent = parent.loaded()
            onnx = Path(self._float_onnx(parent, source).path)
            program = torch_program(self.cache, parent.id, parent.module, tuple(self.recipe.model.input_shape))
            return Source(onnx, parent.id, f"float torch model ({label})", program=program)

        deployer = Deployer(self.recipe, self.recipe.targets or default_targets(), self.cache, self.ui,
                            lambda: self.data, lambda for_eval: self._data_key(for_eval=for_eval),
                            self.measurer.threads, cpu_model())
        return deployer.run(final_source, cache(float_source), final.metrics.accuracy, self.folder.staging,
                            cache(torch_source))

    def _float_onnx(self, parent: art.Artifact, source: art.Artifact) -> art.Artifact:
        """``parent`` (a torch artifact) exported and optimized as the baseline is (cached steps):
        the float ONNX a target converts from, or measures its parity against."""
        export = PassStep(name="export", config=self.registry.get("export").Config())
        exported = self._produce(-1, export, parent, baseline_model=source, label="deploy")[0]
        return self._produce(-1, self._optimize_step(), exported, baseline_model=source, label="deploy")[0]

    def _preflight(self, source: art.Artifact) -> int | None:
        """Input mistakes (shapes, classes, NaN weights) are exit 2 before any pass runs.

        A passed check is cached like a measurement (same model, same data), so a fully
        cached rerun does not load the data just for it. Returns the classes the labels
        need (for the at-chance warning), None from a cache entry without them.
        """
        key = content_key(what="preflight", model=source.id, data=self._data_key(for_eval=True),
                          seed=self.recipe.seed)
        seen = self.cache.load_metrics(key)
        if seen is None:
            from dataclasses import asdict

            from modelzip.preflight import preflight

            seen = asdict(preflight(self._preflight_module(source), self.data, self.recipe.model))
            self.cache.save_metrics(key, seen)
        return seen.get("label_classes")

    @staticmethod
    def _preflight_module(source: art.Artifact):
        if source.kind == "torch":
            return source.loaded().module
        from modelzip.sources.onnx_model import OnnxModule

        return OnnxModule(Path(source.path))

    def _stage_resolved_recipe(self) -> None:
        import yaml

        self.folder.stage_text(RESOLVED_RECIPE, yaml.safe_dump(self.recipe.to_data(), sort_keys=False))

    def _load_input(self) -> art.Artifact:
        """The input model, loaded when first needed (its id comes from file digests)."""
        from modelzip.sources.identity import model_fingerprint

        spec = self.recipe.model
        model_id = model_fingerprint(spec, self.recipe.base_dir, memo=self.cache)
        if spec.onnx_file is not None:
            from modelzip.sources.locations import resolve_onnx_model

            return art.Artifact(kind="onnx", input_shape=tuple(spec.input_shape), id=model_id,
                                path=resolve_onnx_model(spec.onnx_file, self.recipe.base_dir))
        return art.Artifact(kind="torch", input_shape=tuple(spec.input_shape), id=model_id,
                            loader=cache(self._load_input_module))

    def _load_input_module(self):
        from modelzip.sources.models import load_input_model

        spec = self.recipe.model
        self.ui.log(f"loading model: {spec.source}" + (f" + {spec.checkpoint}" if spec.checkpoint else ""))
        return load_input_model(spec, self.recipe.base_dir)

    def _baseline(self, source: art.Artifact) -> Baseline:
        """The input model in torch, and as an fp32 ONNX in onnxruntime (the reference for ratios),
        written as this recipe writes its final file: optimized unless `optimize: false`.

        Under ``evaluation.steps: final`` the torch model's accuracy is not evaluated: the export's
        parity check has tied its logits to the ONNX file's, whose accuracy is then the reference
        (the same number in every run measured here, at a third of the cost or less)."""
        self.ui.log("measuring the baseline")
        if source.kind == "onnx":
            return self._onnx_baseline(source)
        export = PassStep(name="export", config=self.registry.get("export").Config())
        measure = self.measurer.metrics if self.recipe.evaluation.steps == "all" else self.measurer.stats
        if not self.recipe.optimize:
            onnx_artifact, record = self._step(-1, export, source, baseline_model=source, label="baseline",
                                               evaluate=True)
            self._exports[source.id] = (Path(onnx_artifact.path), record.details)
            return Baseline(torch=measure(source), onnx=record.metrics, export=record.details,
                            onnx_artifact=onnx_artifact)
        exported, meta, _, _ = self._produce(-1, export, source, baseline_model=source, label="baseline")
        self._exports[source.id] = (Path(exported.path), meta["details"])
        onnx_artifact, record = self._step(-1, self._optimize_step(), exported, baseline_model=source,
                                           label="baseline", evaluate=True)
        return Baseline(torch=measure(source), onnx=record.metrics, export=meta["details"],
                        optimize=record.details, onnx_artifact=onnx_artifact)

    def _onnx_baseline(self, source: art.Artifact) -> Baseline:
        """An ONNX input ("onnx:<file>") is the fp32 file already: nothing is exported, and the
        reference is the file optimized as the final one is (or the file itself)."""
        if not self.recipe.optimize:
            return Baseline(torch=self.measurer.stats(source), onnx=self.measurer.metrics(source), export=None,
                            onnx_artifact=source)
        onnx_artifact, record = self._step(-1, self._optimize_step(), source, baseline_model=source,
                                           label="baseline", evaluate=True)
        return Baseline(torch=self.measurer.stats(source), onnx=record.metrics, export=None,
                        optimize=record.details, onnx_artifact=onnx_artifact)

    def _optimize_step(self) -> PassStep:
        """The recipe's final `optimize` (so the baseline is optimized alike), else one with defaults."""
        passes = self.recipe.passes
        if passes and passes[-1].name == "optimize":
            return passes[-1]
        return PassStep(name="optimize", config=self.registry.get("optimize").Config())

    def _step(self, index: int, step: PassStep, parent: art.Artifact, *, baseline_model: art.Artifact,
              evaluate: bool, label: str | None = None) -> tuple[art.Artifact, StepRecord]:
        artifact, meta, key, cached = self._produce(index, step, parent, baseline_model=baseline_model, label=label)
        metrics = self.measurer.metrics(artifact) if evaluate else self.measurer.stats(artifact)
        record = StepRecord(index, step.name, step.params(), key, cached, artifact.kind, meta["wall_time_s"],
                            meta["details"], metrics)
        return artifact, record

    def _produce(self, index: int, step: PassStep, parent: art.Artifact, *, baseline_model: art.Artifact,
                 label: str | None = None) -> tuple[art.Artifact, dict[str, Any], str, bool]:
        """Run one step through the cache, unmeasured: (artifact, step.json, key, cached)."""
        pass_obj = self.registry.get(step.name)()
        params = step.params()
        key = content_key(parent=parent.id, pass_name=step.name, params=params, version=pass_obj.version,
                          seed=self.recipe.seed, inputs=self.step_inputs(pass_obj, step.config))
        loaded = self._load_cached(key)
        cached = loaded is not None and key not in self.executed
        if loaded is None:
            self.ui.log(f"[{label or index}] {step.name}: running")
            entry = self._execute(index, step, pass_obj, parent, key, baseline_model)
            self.executed.add(key)
            loaded = self._lazy_artifact(key, entry), _read_json(entry / "step.json")
        elif cached:
            self.ui.log(f"[{label or index}] {step.name}: cached")
        artifact, meta = loaded
        return artifact, meta, key, cached

    def _load_cached(self, key: str) -> tuple[art.Artifact, dict[str, Any]] | None:
        """The artifact and step record of a verified cache entry; a damaged one is a miss."""
        if key in self.executed:  # run earlier in this process (e.g. the baseline export again)
            entry = self.cache.entry(key)
        else:
            entry = self.cache.lookup(key)
            if entry is None:
                return None
        try:
            return self._lazy_artifact(key, entry), _read_json(entry / "step.json")
        except (OSError, ValueError, KeyError, RuntimeError) as exc:  # intact files that do not load
            self.cache.discard(key, f"{type(exc).__name__}: {exc}")
            return None

    def _lazy_artifact(self, key: str, entry: Path) -> art.Artifact:
        """The artifact in cache entry ``entry``; a torch module loads when first needed."""
        artifact = art.load_artifact(entry, self.build_module, lazy=True)
        if artifact.loader is None:
            return artifact

        def load():
            try:
                return artifact.loader()
            except (OSError, ValueError, KeyError, RuntimeError) as exc:  # intact files that do not load
                self.cache.discard(key, f"{type(exc).__name__}: {exc}")
                raise ModelzipError(f"a cached step's model could not be loaded ({type(exc).__name__}: {exc})",
                                    where=f"cache entry {key}", fix="run again: the entry was removed") from exc
        return replace(artifact, loader=cache(load))

    def _context(self, index: int, step: PassStep, work_dir: Path, baseline_model, resume_dir: Path,
                 key: str):
        return PassContext(step=index, pass_name=step.name, work_dir=work_dir, seed=self.recipe.seed,
                           device=self.device, recipe=self.recipe, ui=self.ui, baseline=baseline_model.loaded(),
                           load_data=lambda: self.data, build_module=self.build_module,
                           resume_dir=resume_dir, key=key, default_export=lambda a: self._exports.get(a.id))

    def _execute(self, index, step, pass_obj, parent, key, baseline_model) -> Path:
        parent = parent.loaded()
        with self.cache.store(key) as work_dir:
            ctx = self._context(index, step, work_dir, baseline_model, self.cache.resume_dir(key), key)
            if self.layout.active and pass_obj.distributed:
                distributed.broadcast({"op": "run", "index": index, "name": step.name, "params": step.params(),
                                       "key": key, "parent": None if not parent.lineage else
                                       str(self.cache.entry(parent.id))})
            _seed_torch(self.recipe.seed + max(index, 0))
            started = time.perf_counter()
            produced = _run_pass(pass_obj, parent, step, ctx)
            wall = time.perf_counter() - started
            lineage = art.LineageEntry(step.name, step.params(), parent.id, key, wall)
            produced = produced.evolve(id=key, lineage=parent.lineage + (lineage,))
            art.save_artifact(produced, work_dir)
            _write_json(work_dir / "step.json", {"wall_time_s": wall, "details": ctx.details})
        return self.cache.entry(key)

    def follow(self) -> None:
        """A non-zero rank: run the distributed passes rank 0 announces, until it is done."""
        import tempfile

        source = None
        while (message := distributed.broadcast())["op"] == "run":
            source = source or self._load_input().loaded()
            parent = source if message["parent"] is None else art.load_artifact(
                Path(message["parent"]), self.build_module)
            pass_obj = self.registry.get(message["name"])()
            step = PassStep(name=message["name"], config=pass_obj.Config.model_validate(message["params"]))
            with tempfile.TemporaryDirectory() as scratch:  # the follower's output is discarded
                ctx = self._context(message["index"], step, Path(scratch), source,
                                    self.cache.root / "partial" / message["key"], message["key"])
                _seed_torch(self.recipe.seed + max(message["index"], 0))
                _run_pass(pass_obj, parent, step, ctx)

    def _final(self, artifact: art.Artifact, baseline: Baseline, metrics: Metrics) -> Final:
        self.folder.stage_copy(MODEL, artifact.path)
        # An `optimize` step leaves its name map beside the file it wrote (passed through unchanged
        # by a later export); nothing else writes one there.
        name_map = Path(artifact.path).parent / NAME_MAP_FILE
        staged_map = None
        if name_map.is_file():
            self.folder.stage_copy(NAME_MAP, name_map)
            staged_map = NAME_MAP
        return self.measurer.final(artifact, metrics, baseline, name=MODEL, name_map=staged_map,
                                   lineage=tuple(e.to_json() for e in artifact.lineage))


def _run_pass(pass_obj, parent: art.Artifact, step: PassStep, ctx: PassContext) -> art.Artifact:
    """Run one pass; anything but a modelzip error becomes a PassError naming the step."""
    try:
        produced = pass_obj.run(parent, step.config, ctx)
    except ModelzipError:
        raise
    except Exception as exc:
        raise PassError(f"{type(exc).__name__}: {exc}", pass_name=step.name,
                        step=ctx.step if ctx.step >= 0 else None,
                        fix="run again with --debug to see the traceback") from exc
    if not isinstance(produced, art.Artifact):
        raise PassError(f"the pass returned {type(produced).__name__}, not an Artifact",
                        pass_name=step.name, step=ctx.step)
    return produced


def _read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text())


def _write_json(path: Path, data: Any) -> None:
    import json

    path.write_text(json.dumps(data, indent=1, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (Path, os.PathLike)):
        return str(value)
    raise TypeError(f"cannot record {type(value).__name__} in the report")
