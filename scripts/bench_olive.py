"""`make bench-olive`: modelzip's quantize-only run against Olive's OnnxStaticQuantization (issue #18).

Per model (the zoo Fashion-MNIST CNN and the depthwise residual net):

1. the fp32 ONNX modelzip exports for the recipe (recipes/bench/fp32.yaml) is Olive's input;
   modelzip runs twice: from the checkpoint ("modelzip", exporting that same file itself within
   its run) and from the very file Olive gets ("modelzip onnx": `model.source: onnx:<file>`),
   the like-for-like comparison;
2. the calibration images are modelzip's own: the seeded 512-image training subset that
   `quantize: {mode: static}` streams (modelzip.quantization.static.calibration_batches with
   the recipe's data, seed and batch size), saved as .npy, read by Olive through
   scripts/olive_user_script.py;
3. Olive runs `olive run` in its own venv (scripts/olive_env.sh) twice per round: with the
   settings modelzip's static mode uses (QDQ, per-channel int8 symmetric weights, uint8
   asymmetric activations, MinMax, reduce_range as modelzip picks it for this CPU) and with
   Olive's defaults; its evaluator does the evaluation a quantize-only modelzip run does
   (accuracy on the 10,000 test images for input and output, latency at batch 1 and 256);
4. modelzip runs recipes/bench/quantize_static.yaml with --no-cache on the same model;
5. the tools take turns, --rounds times (the first tool rotating each round), each process
   timed end to end;
6. the fp32 and every int8 artifact are then measured together: accuracy on the full test
   set in onnxruntime, sizes, latency interleaved at batch 1 and 256 (one process);
7. one more modelzip run under cProfile says where its time goes.

Writes bench-olive.json and the olive section of BENCHMARKS.md. Without .bench/olive-venv it
says how to create it (`make olive-env`) and exits 0, so `make bench` works without Olive.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".bench" / "olive"
OLIVE_VENV = REPO / ".bench" / "olive-venv"
sys.path.insert(0, str(REPO / "scripts"))

from bench import run_recipe  # noqa: E402
from bench_olive_report import markdown  # noqa: E402
from bench_report import write_section  # noqa: E402

RECIPE = REPO / "recipes" / "bench" / "quantize_static.yaml"
FP32_RECIPE = REPO / "recipes" / "bench" / "fp32.yaml"
USER_SCRIPT = REPO / "scripts" / "olive_user_script.py"
# name -> (model.source, default checkpoint: `make demo`'s, and bench_unseen.py's dsresnet baseline)
MODELS = {"fashion_cnn": ("modelzip.zoo:fashion_cnn", REPO / "checkpoints" / "fashion_cnn.pt"),
          "dsresnet": ("modelzip.zoo:dsresnet", REPO / ".bench" / "checkpoints" / "dsresnet-6ep-all.pt")}
TOOLS = ("modelzip", "modelzip onnx", "olive", "olive default")
# Olive's latency metric per batch: (warmup, timed runs). Batch 1 as modelzip's
# evaluation.repeats default (200); batch 256 Olive's own default (modelzip caps its batch-256
# runs at ~3 s per model, 5-30 runs here).
OLIVE_LATENCY = {1: (10, 200), 256: (10, 20)}
# A quantize-only run's own profile: (label, modelzip file, function), each row that function's
# cumulative time. Rows nest ("baseline: ..." lies within "baseline") and the last row overlaps
# the others (the baseline, the accuracy search and the step's measurement all call onnx_accuracy).
PHASES = [
    ("whole pipeline", "pipeline.py", "run_recipe"),
    ("baseline (input model in torch, its export, the export in onnxruntime)", "pipeline.py", "_baseline"),
    ("baseline: accuracy in torch", "evaluation/accuracy.py", "torch_accuracy"),
    ("export with parity check (baseline, then again in the pass)", "passes/export.py", "export_checked"),
    ("quantize pass", "passes/_quantize_run.py", "run_quantize"),
    ("quantize: its own export of the torch input", "passes/_quantize_run.py", "_float_source"),
    ("quantize: quant_pre_process", "quantization/prepare.py", "preprocess"),
    ("quantize: calibration", "quantization/static.py", "calibrate"),
    ("quantize: ORT quantize_static", "quantization/static.py", "quantize"),
    ("quantize: accuracy check on validation (max_accuracy_drop)", "quantization/run.py", "_accuracy_search"),
    ("quantize: int8 vs float latency (prefer: faster only)", "quantization/run.py", "measure_latency"),
    ("final measurement (latency, baseline vs final; accuracy is measured after the pass)", "pipeline.py",
     "_final"),
    ("final: latency", "evaluation/measure.py", "latency"),
    ("onnxruntime accuracy, every call", "evaluation/accuracy.py", "onnx_accuracy"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=sorted(MODELS), help="only these (default: both)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="MODEL=PATH",
                        help="another checkpoint for a model, e.g. dsresnet=/path/dsresnet-6ep-all.pt")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each tool, taking turns")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run of modelzip")
    parser.add_argument("--olive-venv", type=Path, default=OLIVE_VENV)
    parser.add_argument("--render", action="store_true", help="only rewrite the section from --json")
    parser.add_argument("--remeasure", action="store_true",
                        help="measure the artifacts of the last run (--json) again, then rewrite the section")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=REPO / "bench-olive.json")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- inputs


def calibration_and_test_data(work: Path) -> dict:
    """modelzip's calibration stream for the recipe, and the test split, as .npy files."""
    import hashlib

    import numpy as np

    from modelzip.quantization.static import calibration_batches
    from modelzip.recipe import load_recipe
    from modelzip.sources.data import load_data

    recipe = load_recipe(RECIPE)
    params = recipe.passes[0].params()
    bundle = load_data(recipe.data, base_dir=RECIPE.parent, seed=recipe.seed)
    calibration = np.concatenate([images.numpy() for images, _ in calibration_batches(
        bundle, params["calibration_samples"], params["calibration_batch_size"], recipe.seed)])
    test = list(bundle.batches("eval"))
    arrays = {"calibration": calibration, "test_images": np.concatenate([x.numpy() for x, _ in test]),
              "test_labels": np.concatenate([y.numpy() for _, y in test])}
    work.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, array in arrays.items():
        np.save(work / f"{name}.npy", array)
        files[name] = {"path": str(work / f"{name}.npy"), "shape": list(array.shape),
                       "sha256": hashlib.sha256(array.tobytes()).hexdigest()}
    return {"files": files, "params": params, "seed": recipe.seed, "batch_size": recipe.data.batch_size,
            "bundle": bundle}


def fp32_onnx(model: str, source: str, checkpoint: Path) -> Path:
    """The baseline export modelzip makes for the recipe (cached across bench runs)."""
    out = WORK / model / "fp32"
    run_recipe(FP32_RECIPE, [f"model.source={source}", f"model.checkpoint={checkpoint}", f"output={out}",
                             f"cache_dir={WORK / 'cache'}"])
    return out / "model.onnx"


def matched_settings(params: dict) -> dict:
    """OnnxStaticQuantization parameters for what modelzip's static mode does with ``params``."""
    from modelzip.quantization.choice import reduce_range

    symmetric = params["activations"] == "symmetric"
    return {"quant_format": "QDQ", "precision": "int8", "weight_symmetric": True,
            "activation_type": "int8" if symmetric else "uint8", "activation_symmetric": symmetric,
            "per_channel": params["per_channel"], "reduce_range": reduce_range(params["reduce_range"])[0],
            "calibrate_method": {"minmax": "MinMax", "entropy": "Entropy",
                                 "percentile": "Percentile"}[params["method"]]}


def olive_config(fp32: Path, data: dict, settings: dict, out: Path, cache: Path) -> dict:
    """An `olive run` config: the pass, and an evaluator doing a quantize-only run's evaluation."""
    import onnx

    input_name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name
    files = data["files"]

    def data_config(name: str, images: str, labels: str | None, batch: int) -> dict:
        dataset = {"type": "modelzip_npy", "images": files[images]["path"], "input_name": input_name}
        if labels:
            dataset["labels"] = files[labels]["path"]
        return {"name": name, "user_script": str(USER_SCRIPT), "load_dataset_config": dataset,
                "post_process_data_config": {"type": "modelzip_argmax"},
                "dataloader_config": {"batch_size": batch}}

    batch = data["batch_size"]
    metrics = [{"name": "accuracy", "type": "accuracy", "data_config": f"test_b{batch}", "sub_types": [
        {"name": "accuracy_score", "priority": 1, "metric_config": {"task": "multiclass", "num_classes": 10}}]}]
    for priority, (size, (warmup, runs)) in enumerate(sorted(OLIVE_LATENCY.items()), start=2):
        metrics.append({"name": f"latency_b{size}", "type": "latency", "data_config": f"test_b{size}",
                        "sub_types": [{"name": "avg", "priority": priority,
                                       "metric_config": {"warmup_num": warmup, "repeat_test_num": runs}}]})
    return {
        "input_model": {"type": "ONNXModel", "model_path": str(fp32)},
        "systems": {"local": {"type": "LocalSystem", "accelerators": [
            {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [data_config("calibration", "calibration", None, data["params"]["calibration_batch_size"]),
                         *(data_config(f"test_b{size}", "test_images", "test_labels", size)
                           for size in sorted({batch, *OLIVE_LATENCY}))],
        # "type": Olive picks OnnxEvaluator for an ONNX model anyway; left None, Olive 0.13's
        # find_all_resources() calls ResourceType(None) on this dict and dies with an
        # AttributeError ('NoneType' object has no attribute 'lower') it does not catch.
        "evaluators": {"common": {"type": "OnnxEvaluator", "metrics": metrics}},
        "passes": {"quantize": {"type": "OnnxStaticQuantization", "data_config": "calibration", **settings}},
        "evaluator": "common", "host": "local", "target": "local", "evaluate_input_model": True,
        "output_dir": str(out), "cache_dir": str(cache), "log_severity_level": 1,
    }


# --------------------------------------------------------------------------- timed runs


def timed(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` to the end; each output line goes to ``log`` with its seconds since start."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=REPO) as proc, log.open("w") as out:
        for line in proc.stdout:
            out.write(f"{time.perf_counter() - started:8.2f} {line}")
    return {"wall_s": round(time.perf_counter() - started, 2), "rc": proc.returncode, "log": str(log)}


def olive_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # modelzip's path stays out
    return {**env, "OLIVE_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


# Olive's OnnxStaticQuantization checks no accuracy budget; the recipe's pass-level one (a validation-
# split check of float and int8, and the search it may start) is turned off for the same work. The
# recipe's gate, computed from the final figures both tools measure, stays.
SAME_WORK = ["--set", "passes.0.quantize.max_accuracy_drop=null"]


def modelzip_command(source: str, checkpoint: Path, out: Path, profile: Path | None = None) -> list[str]:
    prefix = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else [])
    return [*prefix, "-m", "modelzip", "run", str(RECIPE), "--no-cache", "--set", f"model.source={source}",
            "--set", f"model.checkpoint={checkpoint}", "--set", f"output={out}", *SAME_WORK]


def modelzip_onnx_command(fp32: Path, out: Path) -> list[str]:
    """The same recipe started from the fp32 ONNX Olive is given (no checkpoint, no export)."""
    return [sys.executable, "-m", "modelzip", "run", str(RECIPE), "--no-cache", "--set", f"model.source=onnx:{fp32}",
            "--set", "model.checkpoint=null", "--set", "model.args={}", "--set", f"output={out}", *SAME_WORK]


def run_once(tool: str, model_dir: Path, commands: dict, round_index: int) -> dict:
    log = model_dir / "logs" / f"{tool.replace(' ', '_')}-{round_index}.log"
    if tool.startswith("modelzip"):
        result = timed(commands[tool], log, {**os.environ, "PYTHONUNBUFFERED": "1"})
        ok = result["rc"] in (0, 1)  # 1: a gate failed (dsresnet is not 3.9x smaller); the artifact exists
    else:
        config = commands[tool]
        shutil.rmtree(config["cache_dir"], ignore_errors=True)  # Olive's --no-cache
        shutil.rmtree(config["output_dir"], ignore_errors=True)
        path = model_dir / f"{tool.replace(' ', '_')}.json"
        path.write_text(json.dumps(config, indent=1))
        result = timed([str(commands["olive_bin"]), "run", "--config", str(path)], log, olive_env())
        ok = result["rc"] == 0
    if not ok:
        tail = "".join(Path(result["log"]).read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{tool} failed (exit {result['rc']}); {log}:\n{tail}")
    print(f"  {tool}: {result['wall_s']:.1f} s", flush=True)
    return result


def take_turns(model_dir: Path, commands: dict, rounds: int) -> dict[str, list[dict]]:
    """Each tool ``rounds`` times; round r starts with tool r mod 3, so none always goes first."""
    walls: dict[str, list[dict]] = {tool: [] for tool in TOOLS}
    for r in range(rounds):
        for tool in TOOLS[r % len(TOOLS):] + TOOLS[:r % len(TOOLS)]:
            walls[tool].append({"round": r, **run_once(tool, model_dir, commands, r)})
    return walls


def wall_summary(walls: dict[str, list[dict]]) -> dict:
    summary = {}
    for tool, runs in walls.items():
        seconds = [run["wall_s"] for run in runs]
        summary[tool] = {"runs_s": seconds, "median_s": statistics.median(seconds), "min_s": min(seconds),
                         "max_s": max(seconds)}
    # Within a round the tools ran back to back: their ratio drifts less than either time does.
    for tool in ("modelzip", "modelzip onnx"):
        pairs = [m["wall_s"] / o["wall_s"] for m, o in zip(walls[tool], walls["olive"], strict=True)]
        summary[f"{tool.replace(' ', '_')}_over_olive"] = {
            "per_round": [round(p, 3) for p in pairs], "median": statistics.median(pairs), "min": min(pairs),
            "max": max(pairs)}
    return summary


# --------------------------------------------------------------------------- measuring the artifacts


def measure(artifacts: dict[str, Path], bundle, input_shape: tuple[int, ...]) -> dict:
    """Accuracy on the full test set, sizes, and latency of all artifacts interleaved at 1 and 256."""
    from modelzip.evaluation import accuracy, onnx_stats
    from modelzip.evaluation.latency import MIN_TIMED_S, SESSIONS, compare_latency, measure_latency
    from modelzip.evaluation.runtime import default_threads

    threads = default_threads()
    rows = {name: {"path": str(path), "accuracy": accuracy.onnx_accuracy(path, bundle.batches("eval"),
                                                                          threads=threads),
                   "size_bytes": path.stat().st_size, "zip_bytes": onnx_stats.zip_bytes(path)}
            for name, path in artifacts.items()}
    comparisons: dict[str, dict] = {}
    for batch in (1, 256):
        lat = measure_latency(artifacts, input_shape, batch, threads=threads, warmup=20, repeats=200,
                              min_timed_s=MIN_TIMED_S, sessions=SESSIONS)
        for name, one in lat.items():
            rows[name][f"batch_{batch}"] = {"median_ms": one.median_ms, "p90_ms": one.p90_ms, "runs": one.runs}
        pairs = ([("fp32", name) for name in artifacts if name != "fp32"]
                 + [("olive", name) for name in ("modelzip", "modelzip onnx") if name in artifacts])
        for base, final in pairs:
            # Each pair head to head, the way a run times its baseline against its final model: in a
            # five-way rotation, sub-0.1 ms runs at batch 1 came out up to 1.5x off their lone times.
            _, _, c = compare_latency(artifacts[base], artifacts[final], input_shape, batch, threads=threads,
                                      warmup=20, repeats=200, tolerance=0.02)
            comparisons.setdefault(f"{final} vs {base}", {})[f"batch_{batch}"] = {
                "speedup": c.ratio, "ci": [c.ci_low, c.ci_high], "verdict": c.verdict, "pairs": c.pairs}
    return {"threads": threads, "artifacts": rows, "comparisons": comparisons}


def tools_own_figures(model_dir: Path, report: dict) -> dict:
    """What each tool reported about its own run (its accuracy, its latency)."""
    own = {"modelzip": {"accuracy": report["final"]["accuracy"],
                        "settings": report["steps"][0]["details"].get("settings"),
                        "latency": {k: {"speedup": v.get("ratio"), "verdict": v.get("verdict")}
                                    for k, v in (report["final"].get("latency") or {}).items()
                                    if k.startswith("batch_")}}}
    for tool in ("olive", "olive default"):
        out = model_dir / tool.replace(" ", "_")
        footprint = json.loads((out / "footprint.json").read_text())
        output = next(node for node in footprint.values() if node.get("from_pass"))
        own[tool] = {"input_metrics": json.loads((out / "input_model_metrics.json").read_text()),
                     "output_metrics": json.loads((out / "metrics.json").read_text()),
                     "pass_config": {k: v for k, v in output["pass_run_config"].items() if k != "data_config"}}
    return own


def settings_match(report: dict, settings: dict) -> list[str]:
    """Differences between what modelzip's run used and the Olive settings meant to match it."""
    used = report["steps"][0]["details"].get("settings") or {}
    wanted = {"format": settings["quant_format"], "per_channel": settings["per_channel"],
              "reduce_range": settings["reduce_range"]}
    problems = [f"{key}: modelzip {used.get(key)!r}, olive {value!r}" for key, value in wanted.items()
                if used.get(key) != value]
    if not str(used.get("activations", "")).startswith(settings["activation_type"]):
        problems.append(f"activations: modelzip {used.get('activations')!r}, olive {settings['activation_type']!r}")
    return problems


# --------------------------------------------------------------------------- profile


def profile(model_dir: Path, source: str, checkpoint: Path) -> dict:
    """One modelzip run under cProfile: wall time, the PHASES, and the 25 costliest modelzip functions."""
    prof = model_dir / "modelzip.prof"
    run = timed(modelzip_command(source, checkpoint, model_dir / "modelzip-profiled", prof),
                model_dir / "logs" / "modelzip-profiled.log", {**os.environ, "PYTHONUNBUFFERED": "1"})
    return {"wall_s": run["wall_s"], "prof": str(prof), **profile_phases(prof)}


def profile_phases(prof: Path) -> dict:
    import pstats

    stats = pstats.Stats(str(prof)).stats  # (file, line, function) -> (calls, _, own s, cumulative s, callers)
    package = str(REPO / "modelzip") + os.sep
    ours = {(file.removeprefix(package), func): (calls, cumulative)
            for (file, _, func), (_, calls, _, cumulative, _) in stats.items() if file.startswith(package)}
    phases = [{"phase": label, "function": f"{file}:{func}", "calls": ours[(file, func)][0],
               "s": round(ours[(file, func)][1], 2)} for label, file, func in PHASES if (file, func) in ours]
    top = sorted(ours.items(), key=lambda item: -item[1][1])[:25]
    return {"phases": phases,
            "top": [{"function": f"{f}:{fn}", "calls": c, "s": round(s, 2)} for (f, fn), (c, s) in top]}


# --------------------------------------------------------------------------- one model


def bench_model(model: str, checkpoint: Path, data: dict, olive_bin: Path, rounds: int, with_profile: bool) -> dict:
    import hashlib

    from modelzip.recipe import load_recipe

    source = MODELS[model][0]
    model_dir = WORK / model
    fp32 = fp32_onnx(model, source, checkpoint)
    settings = matched_settings(data["params"])
    commands = {"olive_bin": olive_bin, "modelzip": modelzip_command(source, checkpoint, model_dir / "modelzip"),
                "modelzip onnx": modelzip_onnx_command(fp32, model_dir / "modelzip_onnx"),
                "olive": olive_config(fp32, data, settings, model_dir / "olive", model_dir / "olive-cache"),
                "olive default": olive_config(fp32, data, {}, model_dir / "olive_default",
                                              model_dir / "olive_default-cache")}
    print(f"{model}: {rounds} rounds of {', '.join(TOOLS)}", flush=True)
    walls = take_turns(model_dir, commands, rounds)
    report = json.loads((model_dir / "modelzip" / "report.json").read_text())
    artifacts = {"fp32": fp32, **{tool: model_dir / tool.replace(" ", "_") / "model.onnx" for tool in TOOLS}}
    input_shape = tuple(load_recipe(RECIPE).model.input_shape)
    print(f"{model}: measuring {', '.join(artifacts)} together", flush=True)
    result = {
        "source": source, "checkpoint": str(checkpoint),
        "fp32": {"path": str(fp32), "sha256": hashlib.sha256(fp32.read_bytes()).hexdigest(),
                 "same_as_modelzip_baseline": report["baseline"]["onnx"]["size_bytes"] == fp32.stat().st_size},
        "olive_matched_settings": settings, "settings_mismatch": settings_match(report, settings),
        "wall": wall_summary(walls), "runs": walls, "own": tools_own_figures(model_dir, report),
        "measured": measure(artifacts, data["bundle"], input_shape),
    }
    if with_profile:
        print(f"{model}: modelzip under cProfile", flush=True)
        result["profile"] = profile(model_dir, source, checkpoint)
    return result


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:  # the figures as they are; the profile's phases re-read from its .prof
        results = json.loads(args.json.read_text())
        for row in results["models"].values():
            if "profile" in row and Path(row["profile"]["prof"]).exists():
                row["profile"].update(profile_phases(Path(row["profile"]["prof"])))
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        write_section(args.out, "olive", markdown(results))
        return 0
    if args.remeasure:  # the tools' runs as they were; accuracy, sizes and latency measured again
        from modelzip.recipe import load_recipe

        results = json.loads(args.json.read_text())
        data, input_shape = calibration_and_test_data(WORK / "data"), tuple(load_recipe(RECIPE).model.input_shape)
        for row in results["models"].values():
            paths = {name: Path(a["path"]) for name, a in row["measured"]["artifacts"].items()}
            row["measured"] = measure(paths, data["bundle"], input_shape)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        write_section(args.out, "olive", markdown(results))
        return 0
    olive_bin = args.olive_venv / "bin" / "olive"
    if not olive_bin.exists():
        print(f"skip the Olive comparison: no Olive venv at {args.olive_venv}. Create it with `make olive-env` "
              "(olive-ai 0.13.0 in its own venv, about 1.4 GB), then run `make bench-olive`.")
        return 0
    checkpoints = {model: path for model, (_, path) in MODELS.items()}
    checkpoints.update({k: Path(v) for k, _, v in (c.partition("=") for c in args.checkpoint)})
    started = time.perf_counter()
    from modelzip.envinfo import environment
    from modelzip.evaluation.runtime import default_threads

    data = calibration_and_test_data(WORK / "data")
    latency = {str(batch): {"warmup": warmup, "runs": runs} for batch, (warmup, runs) in OLIVE_LATENCY.items()}
    results = {"rounds": args.rounds, "olive_latency": latency, "olive_venv": str(args.olive_venv),
               "olive_versions": olive_versions(olive_bin),
               "olive_install": _read_json(args.olive_venv / "install.json"),
               "calibration": {"samples": data["params"]["calibration_samples"], "seed": data["seed"],
                               "batch_size": data["params"]["calibration_batch_size"],
                               "files": data["files"]},
               "olive_matched_settings": matched_settings(data["params"]), "models": {}}
    for model in args.model or list(MODELS):
        if not checkpoints[model].exists():
            print(f"skip {model}: no checkpoint at {checkpoints[model]} (`make demo` trains fashion_cnn, "
                  "`python scripts/bench_unseen.py --arch dsresnet` dsresnet; or --checkpoint MODEL=PATH)")
            continue
        results["models"][model] = bench_model(model, checkpoints[model], data, olive_bin, args.rounds,
                                               not args.no_profile)
    results["environment"] = environment(default_threads())
    results["wall_s"] = round(time.perf_counter() - started, 1)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    if results["models"]:
        write_section(args.out, "olive", markdown(results))
    print(f"wrote {args.json} and the olive section of {args.out} in {results['wall_s']:.0f} s")
    return 0


def olive_versions(olive_bin: Path) -> dict:
    """What Olive's venv runs (its onnxruntime is not necessarily modelzip's)."""
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('olive-ai', 'onnxruntime', 'onnx', 'torch', 'numpy')}))")
    result = subprocess.run([str(olive_bin.with_name("python")), "-c", code], capture_output=True, text=True,
                            check=True, env=olive_env())
    return json.loads(result.stdout)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
