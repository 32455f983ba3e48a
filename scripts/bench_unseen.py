"""`make bench`, part 2: default recipes on architectures the defaults were not tuned on (issue #13).

Four architectures trained here on Fashion-MNIST (the zoo CNN, ResNet-20, the zoo's
depthwise-separable residual net and torchvision's MobileNetV2 with a 1-channel stem) each go
through the recipes a new user would write, every parameter not named left at its default:

* ``channel``: ``prune: {method: channel, target_macs: 0.5}`` + ``finetune: {epochs: 2, distill:
  {teacher: baseline}}``: within 1.0 pp of the input and at least 1.2x faster at batch 256;
* ``gradual``: ``finetune: {epochs: 3, prune: {method: magnitude, sparsity: 0.9, schedule:
  gradual}}``: within 1.5 pp, zip at least 5x smaller;
* ``oneshot`` (for contrast): ``prune: {method: magnitude, sparsity: 0.9}`` + ``finetune: {epochs: 3}``.

Fine-tuning uses the first 20,000 training images; accuracy is on the full test set and latency
is each run's own interleaved baseline-vs-final measurement. ``--sweep`` also runs the
fine-tuning settings compared to choose the defaults (optimizer, lr, distillation) on the
``channel`` recipe. Writes bench-unseen.json and its section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".bench" / "unseen"
sys.path.insert(0, str(REPO / "scripts"))

from bench import run_recipe, train_baseline  # noqa: E402
from bench_report import write_section  # noqa: E402

# name -> (model section of the recipe, baseline epochs on the full training split)
ARCHITECTURES = {
    "fashion_cnn": ({"source": "modelzip.zoo:fashion_cnn"}, 4),
    "resnet20": ({"source": "modelzip.zoo:resnet20"}, 3),
    "dsresnet": ({"source": "modelzip.zoo:dsresnet"}, 6),
    "mobilenet_v2": ({"source": "torchvision:mobilenet_v2", "in_channels": 1}, 4),
}
BASELINE_MODEL = {"mobilenet_v2": "torchvision:mobilenet_v2"}  # train_baseline.py's --model

RECIPES = {
    "channel": ["prune: {method: channel, target_macs: 0.5}",
                "finetune: {epochs: 2, distill: {teacher: baseline}}"],
    "gradual": ["finetune: {epochs: 3, prune: {method: magnitude, sparsity: 0.9, schedule: gradual}}"],
    "oneshot": ["prune: {method: magnitude, sparsity: 0.9}", "finetune: {epochs: 3}"],
}
# Done-when of issue #13, per recipe: (max accuracy drop in pp, min speedup at 256, min zip ratio).
TARGETS = {"channel": (1.0, 1.2, None), "gradual": (1.5, None, 5.0)}

# The fine-tuning settings compared for the defaults, each replacing the channel recipe's finetune
# (every setting spelled out, so that the rows keep their meaning when the defaults change).
_DISTILL = "distill: {teacher: baseline}"
SWEEP = {
    "sgd 0.01, augment (old default)": f"finetune: {{epochs: 2, lr: 0.01, augment: auto, {_DISTILL}}}",
    "sgd 0.01, augment, no distill": "finetune: {epochs: 2, lr: 0.01, augment: auto}",
    "sgd 0.05, augment": f"finetune: {{epochs: 2, lr: 0.05, augment: auto, {_DISTILL}}}",
    "sgd 0.1, augment": f"finetune: {{epochs: 2, lr: 0.1, augment: auto, {_DISTILL}}}",
    "sgd 0.05, augment, onecycle": f"finetune: {{epochs: 2, lr: 0.05, augment: auto, schedule: onecycle, {_DISTILL}}}",
    "sgd 0.05, augment, alpha 0.9": ("finetune: {epochs: 2, lr: 0.05, augment: auto, "
                                     "distill: {teacher: baseline, alpha: 0.9}}"),
    "adamw 1e-3, augment": f"finetune: {{epochs: 2, optimizer: adamw, augment: auto, {_DISTILL}}}",
    "adamw 3e-3, augment": f"finetune: {{epochs: 2, optimizer: adamw, lr: 0.003, augment: auto, {_DISTILL}}}",
    "sgd 0.01, no augment (new default)": f"finetune: {{epochs: 2, lr: 0.01, augment: none, {_DISTILL}}}",
    "sgd 0.05, no augment": f"finetune: {{epochs: 2, lr: 0.05, augment: none, {_DISTILL}}}",
    # lr 0.05 lost 4 pp on ResNet-20 above: does a warmup steady its first steps after the cut?
    "sgd 0.05, no augment, warmup 0.1": f"finetune: {{epochs: 2, lr: 0.05, augment: none, warmup: 0.1, {_DISTILL}}}",
    "sgd 0.01, no augment, alpha 0.9": ("finetune: {epochs: 2, lr: 0.01, augment: none, "
                                        "distill: {teacher: baseline, alpha: 0.9}}"),
    "sgd 0.05, no augment, warmup 0.1, alpha 0.9": ("finetune: {epochs: 2, lr: 0.05, augment: none, warmup: 0.1, "
                                                    "distill: {teacher: baseline, alpha: 0.9}}"),
    "adamw 1e-3, no augment": f"finetune: {{epochs: 2, optimizer: adamw, augment: none, {_DISTILL}}}",
}
LIMIT_TRAIN = 20_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=sorted(ARCHITECTURES),
                        help="only these architectures (default: all four)")
    parser.add_argument("--recipe", action="append", choices=sorted(RECIPES), help="only these recipes")
    parser.add_argument("--sweep", action="store_true", help="also run the fine-tuning defaults sweep")
    parser.add_argument("--sweep-arch", action="append", choices=sorted(ARCHITECTURES),
                        help="run the sweep on these architectures only (default: those of --arch)")
    parser.add_argument("--sweep-setting", action="append", choices=sorted(SWEEP), metavar="NAME",
                        help="run only these settings of the sweep (default: all; earlier rows are kept)")
    parser.add_argument("--no-probe", action="store_true", help="skip scripts/probe_widths.py (~1 min)")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=REPO / "bench-unseen.json")
    return parser.parse_args(argv)


def write_recipe(arch: str, name: str, passes: list[str], checkpoint: str) -> Path:
    model, _ = ARCHITECTURES[arch]
    lines = ["version: 1", f"name: unseen-{arch}-{name}", "model:",
             *(f"  {key}: {value}" for key, value in model.items()),
             "  args: {num_classes: 10}", f"  checkpoint: {checkpoint}", "  input_shape: [1, 1, 28, 28]",
             "data:", "  dataset: fashion-mnist", "  batch_size: 256", f"  limit_train: {LIMIT_TRAIN}",
             "passes:", *(f"  - {p}" for p in passes), "  - export: {}",
             f"cache_dir: {WORK / 'cache'}", f"output: {WORK / 'runs' / arch / name}"]
    path = WORK / "recipes" / f"{arch}-{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def summarize(report: dict, wall_s: float) -> dict:
    """The figures the table shows, from one run's report.json."""
    baseline, final = report["baseline"]["onnx"], report["final"]
    at_256 = (final.get("latency") or {}).get("batch_256") or {}
    return {
        "input_accuracy": baseline["accuracy"], "accuracy": final["accuracy"],
        "drop_pp": round(100 * (baseline["accuracy"] - final["accuracy"]), 2),
        "macs_ratio": round(final["macs"] / baseline["macs"], 3),
        "zip_ratio": round(baseline["zip_bytes"] / final["zip_bytes"], 2),
        "speedup_256": at_256.get("ratio"), "verdict_256": at_256.get("verdict"),
        "warnings": [w.get("message", str(w)) for w in report.get("warnings") or []],
        "steps": [s["details"].get("summary", "") for s in report["steps"]],
        "status": report["status"], "wall_s": round(wall_s, 1),
    }


def met(name: str, row: dict) -> str:
    if name not in TARGETS:
        return ""
    max_drop, min_speedup, min_zip = TARGETS[name]
    ok = row["drop_pp"] <= max_drop
    ok &= min_speedup is None or (row["speedup_256"] or 0) >= min_speedup
    ok &= min_zip is None or row["zip_ratio"] >= min_zip
    return "yes" if ok else "**no**"


def baselines(archs: list[str]) -> dict[str, dict]:
    return {arch: train_baseline(BASELINE_MODEL.get(arch, arch), ARCHITECTURES[arch][1], None) for arch in archs}


def run_all(archs: list[str], recipes: dict[str, list[str]], trained: dict[str, dict]) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for arch in archs:
        for name, passes in recipes.items():
            slug = re.sub(r"\W+", "_", name).strip("_")
            recipe = write_recipe(arch, slug, passes, trained[arch]["checkpoint"])
            report, wall = run_recipe(recipe, [f"output={WORK / 'runs' / arch / slug}"])
            rows[f"{arch}/{name}"] = {"arch": arch, "recipe": name, **summarize(report, wall)}
            print(f"{arch} {name}: {rows[f'{arch}/{name}']}", flush=True)
    return rows


def probe_widths() -> list[str]:
    """scripts/probe_widths.py's summary: which widths onnxruntime runs fast here (round_to: auto's evidence)."""
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "probe_widths.py")], check=True,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = result.stdout.splitlines()
    head = [line for line in lines if line.startswith(("CPU ", "round_to: auto"))]
    summary = lines[next(i for i, line in enumerate(lines) if line.startswith("summary")):]
    return head + summary


def markdown(trained: dict[str, dict], rows: dict[str, dict], sweep: dict[str, dict], probe: list[str]) -> str:
    out = ["<!-- unseen:begin (scripts/bench_unseen.py writes this section) -->",
           "## Unseen architectures, default settings (issue #13)", "",
           "Reproduce: `python scripts/bench_unseen.py --sweep` (part of `make bench`). Fine-tuning on the "
           f"first {LIMIT_TRAIN:,} training images; accuracy on the full test set in onnxruntime; speedup "
           "at batch 256 from each run's own interleaved baseline-vs-final measurement.", "",
           "| model | baseline accuracy | baseline epochs |", "|---|---|---|"]
    out += [f"| `{ARCHITECTURES[a][0]['source']}` | {100 * t['test_accuracy']:.2f}% | {t['epochs']} |"
            for a, t in trained.items()]
    out += ["", "Recipes: " + "; ".join(f"**{n}**: `{' + '.join(p)}`" for n, p in RECIPES.items()), "",
            "| model | recipe | accuracy input -> final | MACs kept | zip smaller | speedup @256 | target met "
            "| warnings |", "|---|---|---|---|---|---|---|---|"]
    for row in rows.values():
        speed = f"{row['speedup_256']:.2f}x ({row['verdict_256']})" if row["speedup_256"] else "n/a"
        out.append(f"| {row['arch']} | {row['recipe']} | {100 * row['input_accuracy']:.2f}% -> "
                   f"{100 * row['accuracy']:.2f}% ({-row['drop_pp']:+.2f} pp) | {100 * row['macs_ratio']:.0f}% | "
                   f"{row['zip_ratio']:.2f}x | {speed} | {met(row['recipe'], row)} | "
                   f"{'; '.join(row['warnings']) or '-'} |")
    if probe:
        out += ["", "### Channel widths onnxruntime runs fast here (`round_to: auto`)", "",
                "`python scripts/probe_widths.py`: single convolutions at every width from 40 to 72, batch 64, "
                "interleaved; time per MAC relative to widths that are multiples of 16.", "", "```", *probe, "```"]
    if sweep:
        archs = list(dict.fromkeys(r["arch"] for r in sweep.values()))
        out += ["", "### Fine-tuning defaults", "",
                "After `prune: {method: channel, target_macs: 0.5}`, 2 epochs on the same 20,000 images, "
                "each setting in place of the recipe's finetune (`SWEEP` in the script); accuracy on the "
                "full test set and the drop from the input model.", "",
                "| finetune | " + " | ".join(archs) + " |", "|---|" + "---|" * len(archs)]
        for name, finetune in SWEEP.items():
            cells = [sweep.get(f"{arch}/{name}") for arch in archs]
            out.append(f"| {name}: `{finetune.removeprefix('finetune: ')}` | " + " | ".join(
                f"{100 * c['accuracy']:.2f}% ({-c['drop_pp']:+.2f} pp)" if c else "" for c in cells) + " |")
    out.append("<!-- unseen:end -->")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    archs = args.arch or list(ARCHITECTURES)
    recipes = {name: RECIPES[name] for name in (args.recipe or RECIPES)}
    started = time.perf_counter()
    trained = baselines(archs)
    rows = run_all(archs, recipes, trained)
    sweep = {}
    if args.sweep:
        sweep_recipes = {name: [RECIPES["channel"][0], finetune] for name, finetune in SWEEP.items()
                         if not args.sweep_setting or name in args.sweep_setting}
        sweep = run_all(args.sweep_arch or archs, sweep_recipes, trained)
    # Rows of earlier invocations that this one did not rerun are kept (e.g. a sweep run on some
    # architectures only); what ran now replaces them.
    earlier = json.loads(args.json.read_text()) if args.json.exists() else {}
    trained = {**earlier.get("baselines", {}), **trained}
    rows = {**earlier.get("runs", {}), **rows}
    sweep = {**earlier.get("sweep", {}), **sweep}
    probe = earlier.get("probe_widths", []) if args.no_probe else probe_widths()
    args.json.write_text(json.dumps({"baselines": trained, "runs": rows, "sweep": sweep, "probe_widths": probe,
                                     "wall_s": round(time.perf_counter() - started)}, indent=1))
    write_section(args.out, "unseen", markdown(trained, rows, sweep, probe))
    print(f"wrote {args.out} and {args.json} in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
