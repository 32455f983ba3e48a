"""`make bench`: modelzip's recipes against the by-hand references, in one run and one table.

1. trains the baselines once (cached under .bench/),
2. runs every recipe in recipes/bench/ through modelzip (3 seeds where training is involved),
3. builds the references a user would make by hand with onnxruntime's quantization tools,
4. measures every artifact the same way (accuracy on the full test set, sizes, MACs, latency
   interleaved across all artifacts), and
5. times the tool itself (--help, validate, cached rerun).

Writes BENCHMARKS.md and bench.json. `--quick`: one seed, shorter baselines, fine-tuning on 20,000 images.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".bench"
sys.path.insert(0, str(REPO / "scripts"))

from bench_report import write_markdown  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, short training (< 10 min)")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=REPO / "bench.json")
    return parser.parse_args(argv)


# Baselines per zoo model: (epochs, training images) for the full and the --quick run.
BASELINES = {"fashion_cnn": {"full": (8, None), "quick": (4, None)},
             "resnet20": {"full": (3, None), "quick": (1, 20000)},
             # bench_unseen.py's dsresnet baseline (same checkpoint file): trained once for both.
             "dsresnet": {"full": (6, None), "quick": (1, 20000)}}


def train_baseline(model: str, epochs: int, limit_train: int | None) -> dict:
    """Train a zoo model once; reuse the checkpoint (and its recorded cost and accuracy) afterwards."""
    checkpoint = WORK / "checkpoints" / f"{model}-{epochs}ep-{limit_train or 'all'}.pt"
    meta_path = checkpoint.with_suffix(".json")
    if not checkpoint.exists():
        started = time.perf_counter()
        limit = ["--limit-train", str(limit_train)] if limit_train else []
        result = subprocess.run([sys.executable, str(REPO / "scripts" / "train_baseline.py"), "--model", model,
                                 "--epochs", str(epochs), "--out", str(checkpoint), *limit],
                                check=True, capture_output=True, text=True)
        print(result.stdout)
        accuracy = float(result.stdout.split("eval accuracy ")[1].split()[0])
        meta_path.write_text(json.dumps({"model": model, "epochs": epochs, "limit_train": limit_train,
                                         "test_accuracy": accuracy,
                                         "train_seconds": round(time.perf_counter() - started, 1)}))
    return {**json.loads(meta_path.read_text()), "checkpoint": str(checkpoint)}


def run_recipe(recipe: Path, overrides: list[str]) -> tuple[dict, float]:
    """Run one recipe through the CLI (as a user would); return its report and wall time."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "modelzip", "run", str(recipe), "--quiet",
                             *[arg for o in overrides for arg in ("--set", o)]],
                            capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode not in (0, 1):  # 1: a gate failed, the artifact still exists
        raise RuntimeError(f"{recipe.name} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    out = next(o.split("=", 1)[1] for o in overrides if o.startswith("output="))
    return json.loads((Path(out) / "report.json").read_text()), wall


# --quick fine-tunes on the first 20,000 training images (accuracy is still on the full test set).
QUICK_LIMIT_TRAIN = 20_000


# The low-bit QAT recipes: scripts/bench_lowbit.py runs them once each and measures their files together
# with fp32 and int8 (its own section); three seeds of each here would add about 45 minutes.
LOWBIT_RECIPES = ("qat_int4", "qat_ternary", "qat_binary", "qat_int2", "qat_auto", "qat_int4_a8", "qat_auto_drop")


def recipe_runs(baselines: dict[str, dict], seeds: list[int], quick: bool) -> dict[str, list[dict]]:
    """Every recipe in recipes/bench (fp32 first) for each seed; skips recipes whose passes are absent.

    Recipes on the residual network run one seed (its epochs cost minutes each)."""
    from modelzip.errors import RecipeError
    from modelzip.recipe import load_recipe

    runs: dict[str, list[dict]] = {}
    for recipe in sorted((REPO / "recipes" / "bench").glob("*.yaml"), key=lambda p: p.stem != "fp32"):
        if recipe.stem in LOWBIT_RECIPES:
            continue
        try:
            parsed = load_recipe(recipe)
        except RecipeError as exc:
            print(f"skip {recipe.name}: {exc.problems[0].format()}")
            continue
        trains = any(s.name in ("finetune", "prune", "lowrank") or
                     (s.name == "quantize" and s.params().get("mode") == "qat") for s in parsed.passes)
        model = parsed.model.source.rpartition(":")[2]
        baseline = baselines[model]
        for seed in (seeds if trains and model == "fashion_cnn" else seeds[:1]):
            out = WORK / "runs" / f"{recipe.stem}-seed{seed}"
            # One cache for all recipes: steps they share (same input, pass, params, seed) run once.
            overrides = [f"model.checkpoint={baseline['checkpoint']}", f"seed={seed}", f"output={out}",
                         f"cache_dir={WORK / 'cache'}"]
            if quick and (parsed.data.limit_train or QUICK_LIMIT_TRAIN) >= QUICK_LIMIT_TRAIN:
                overrides.append(f"data.limit_train={QUICK_LIMIT_TRAIN}")
            report, wall = run_recipe(recipe, overrides)
            runs.setdefault(recipe.stem, []).append({"seed": seed, "report": report, "wall_s": wall,
                                                     "onnx": str(out / "model.onnx"), "model": model})
            print(f"{recipe.stem} seed {seed}: {report['final']['accuracy']:.4f} in {wall:.0f}s")
    return runs


def references(fp32_onnx: Path, calibration_images: int = 512) -> dict[str, Path]:
    """What a user builds by hand: ORT quantize_static (QDQ, per-channel, S8S8, MinMax, 512
    calibration images: what Olive's OnnxStaticQuantization runs) and quantize_dynamic."""
    import numpy as np
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from modelzip.recipe import DataSpec
    from modelzip.sources.data import load_data

    bundle = load_data(DataSpec(dataset="fashion-mnist"), base_dir=REPO, seed=0)
    images = np.stack([bundle.calibration(calibration_images, seed=0)[i][0].numpy()
                       for i in range(calibration_images)])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(images, calibration_images // 64))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch.astype(np.float32)}

    out = WORK / "references"
    out.mkdir(parents=True, exist_ok=True)
    prepared = out / "fp32-prepared.onnx"
    quant_pre_process(str(fp32_onnx), str(prepared))
    quantize_static(str(prepared), str(out / "ort_static.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    quantize_dynamic(str(prepared), str(out / "ort_dynamic.onnx"), weight_type=QuantType.QInt8)
    return {"ORT quantize_static by hand": out / "ort_static.onnx",
            "ORT quantize_dynamic by hand": out / "ort_dynamic.onnx"}


def measure(artifacts: dict[str, Path], threads: int) -> dict[str, dict]:
    """Accuracy on the full test set, sizes, MACs; latency at batch 1 and 256, all interleaved."""
    from modelzip.evaluation import accuracy, onnx_stats
    from modelzip.evaluation.latency import measure_latency
    from modelzip.recipe import DataSpec
    from modelzip.sources.data import load_data

    bundle = load_data(DataSpec(dataset="fashion-mnist"), base_dir=REPO, seed=0)
    rows = {name: {"accuracy": accuracy.onnx_accuracy(path, bundle.batches("eval"), threads=threads),
                   "size_bytes": path.stat().st_size, "zip_bytes": onnx_stats.zip_bytes(path),
                   "macs": onnx_stats.onnx_macs(path)} for name, path in artifacts.items()}
    for batch in (1, 256):
        latency = measure_latency(artifacts, (1, 1, 28, 28), batch, threads=threads, warmup=20, repeats=200)
        for name, lat in latency.items():
            rows[name][f"batch_{batch}"] = {"median_ms": lat.median_ms, "p90_ms": lat.p90_ms, "runs": lat.runs}
    return rows


def _timed(cmd: list[str], repeats: int = 5) -> float:
    """Best-of-N wall time of a command (the least disturbed run)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        best = min(best, time.perf_counter() - started)
    return best


def tool_overhead(baseline: dict) -> dict:
    """CLI start-up, and the fp32 recipe run from scratch (--no-cache) vs fully cached."""
    modelzip = [str(Path(sys.executable).with_name("modelzip"))]
    recipe = REPO / "recipes" / "bench" / "fp32.yaml"
    overrides = [f"model.checkpoint={baseline['checkpoint']}", f"output={WORK / 'runs' / 'overhead'}"]
    started = time.perf_counter()
    subprocess.run(modelzip + ["run", str(recipe), "--quiet", "--no-cache"] + _sets(overrides), check=True,
                   capture_output=True)
    first_s = time.perf_counter() - started
    cached_s = min(run_recipe(recipe, overrides)[1] for _ in range(3))  # best of 3: the least disturbed
    return {"help_s": _timed(modelzip + ["--help"]), "validate_s": _timed(modelzip + ["validate", str(recipe)]),
            "import_torch_s": _timed([sys.executable, "-c", "import torch"]),
            "first_run_s": first_s, "cached_rerun_s": cached_s}


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def finetune_throughput() -> dict | None:
    script = REPO / "scripts" / "bench_finetune.py"
    if not script.exists():
        return None
    result = subprocess.run([sys.executable, str(script), "--json"], capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": result.stderr[-500:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    from modelzip.envinfo import environment
    from modelzip.evaluation.runtime import default_threads

    threads = default_threads()
    mode = "quick" if args.quick else "full"
    baselines = {model: train_baseline(model, *plan[mode]) for model, plan in BASELINES.items()}
    seeds = [0] if args.quick else [0, 1, 2]
    runs = recipe_runs(baselines, seeds, args.quick)
    fp32 = Path(runs["fp32"][0]["onnx"])
    artifacts = {"fp32 ONNX (baseline)": fp32, **references(fp32)}
    for name, seeded in runs.items():
        if name != "fp32" and seeded[0]["model"] == "fashion_cnn":
            artifacts[f"modelzip {name}"] = Path(seeded[0]["onnx"])
    measured = measure(artifacts, threads)
    residual = {name: _pipeline_figures(seeded[0]["report"]) for name, seeded in runs.items()
                if seeded[0]["model"] != "fashion_cnn"}
    results = {"baseline": baselines["fashion_cnn"], "baselines": baselines, "residual": residual,
               "seeds": seeds, "quick": args.quick, "threads": threads,
               "environment": environment(threads), "artifacts": measured,
               "accuracy_over_seeds": {name: _mean_std([r["report"]["final"]["accuracy"] for r in seeded])
                                       for name, seeded in runs.items()},
               "overhead": tool_overhead(baselines["fashion_cnn"]),
               "finetune_throughput": finetune_throughput(),
               "command": "make bench" + (" BENCH_ARGS=--quick" if args.quick else ""),
               "wall_s": round(time.perf_counter() - started, 1)}
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out)
    print(f"wrote {args.out} and {args.json} in {results['wall_s']:.0f}s")
    return 0


def _pipeline_figures(report: dict) -> dict:
    """What a run's own report measured: input vs final, latency interleaved in that run."""
    final = report["final"]
    latency = {k: v for k, v in (final.get("latency") or {}).items() if k.startswith("batch_")}
    baseline = report["baseline"]
    # Under `evaluation.steps: final` only the reference (the ONNX export) has an accuracy.
    reference = baseline[baseline.get("accuracy_reference") or "torch"]
    return {"input_accuracy": reference["accuracy"], "accuracy": final["accuracy"],
            "macs_input": report["baseline"]["torch"]["macs"], "macs": final["macs"],
            "params_input": report["baseline"]["torch"]["params_total"], "params": final["params_total"],
            "size_ratio": final["ratios"]["size"], "latency": latency,
            "steps": [{"pass": s["pass"], "summary": s["details"].get("summary", "")} for s in report["steps"]]}


def _mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
