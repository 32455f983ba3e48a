"""BENCHMARKS.md from the figures scripts/bench.py collected (kept apart: formatting only)."""
from __future__ import annotations

import re
from pathlib import Path

FP32 = "fp32 ONNX (baseline)"

# name fragment -> (description, check(row, fp32) -> (got text, met?)). Accuracy in a row is the
# mean over seeds where the recipe ran several (target_table substitutes it), not seed 0 alone.
TARGETS = [
    ("quantize_static", "quantize-only: >= 3.9x smaller, within 0.2 pp, faster at batch 1 and 256",
     lambda r, b: _check(r, b, size=3.9, drop=0.002, speed1=1.0, speed256=1.0)),
    ("quantize_static", "static int8: >= 2x faster at batch 256, within 0.5 pp (issue 18)",
     lambda r, b: _check(r, b, speed256=2.0, drop=0.005)),
    ("prune_distill_int8", "prune + distill + int8: >= 15x smaller, >= 3x faster at 256, within 0.5 pp",
     lambda r, b: _check(r, b, size=15, drop=0.005, speed256=3.0)),
    ("magnitude_int8", "magnitude + finetune + int8: zip >= 30x smaller, within 0.5 pp",
     lambda r, b: _check(r, b, zip_size=30, drop=0.005)),
    ("prune_distill", "channel prune to 50% of MACs + 3 epochs distilled finetune: within 0.5 pp (issue 4)",
     lambda r, b: _check(r, b, drop=0.005)),
]


def _faster_at_256(figures: dict) -> tuple[str, bool]:
    lat = figures["latency"].get("batch_256")
    if lat is None:
        return "not measured", False
    speedup = lat["baseline"]["median_ms"] / lat["final"]["median_ms"]
    return f"speed256 {speedup:.2f}x ({lat['verdict']})", lat["verdict"] == "faster"


# Residual-network runs: name -> (description, check(figures) -> (got text, met?)).
def _size_ratio_at_least(target: float):
    def check(figures: dict) -> tuple[str, bool]:
        return f"size {figures['size_ratio']:.2f}x ({figures['params_input']:,} parameters)", \
            figures["size_ratio"] >= target
    return check


RESIDUAL_TARGETS = [
    ("resnet20_lowrank", "ResNet-20 lowrank conv: channel: faster than the baseline at batch 256 (issue 6)",
     _faster_at_256),
    ("dsresnet_quantize_static", "int8 file of a ~64k-parameter model (dsresnet) >= 3x smaller than its fp32 "
     "ONNX (issue 18)", _size_ratio_at_least(3.0)),
]


def _ratios(row: dict, base: dict) -> dict:
    return {"size": base["size_bytes"] / row["size_bytes"], "zip": base["zip_bytes"] / row["zip_bytes"],
            "speed1": base["batch_1"]["median_ms"] / row["batch_1"]["median_ms"],
            "speed256": base["batch_256"]["median_ms"] / row["batch_256"]["median_ms"],
            "drop": base["accuracy"] - row["accuracy"]}


def _check(row: dict, base: dict, **targets: float) -> tuple[str, bool]:
    got = _ratios(row, base)
    parts, met = [], True
    for key, target in targets.items():
        value = got["zip" if key == "zip_size" else key]
        ok = value <= target if key == "drop" else value >= target
        met &= ok
        parts.append(f"{key} {100 * value:.2f} pp" if key == "drop" else f"{key} {value:.2f}x")
    return ", ".join(parts), met


def _mb(n: int) -> str:
    return f"{n / 1e6:.3f}"


def artifact_table(results: dict) -> list[str]:
    base = results["artifacts"][FP32]
    lines = ["| artifact | test accuracy | size MB (x smaller) | zip MB (x smaller) | MACs | "
             "batch 1 ms median / p90 (speedup) | batch 256 ms median / p90 (speedup) |",
             "|---|---|---|---|---|---|---|"]
    seeds = results["accuracy_over_seeds"]
    for name, row in results["artifacts"].items():
        r = _ratios(row, base)
        recipe = name.removeprefix("modelzip ")
        acc = f"{100 * row['accuracy']:.2f}%"
        if recipe in seeds and seeds[recipe]["n"] > 1:
            acc += f" (seeds: {100 * seeds[recipe]['mean']:.2f} ± {100 * seeds[recipe]['std']:.2f})"
        lines.append(
            f"| {name} | {acc} | {_mb(row['size_bytes'])} ({r['size']:.2f}x) | {_mb(row['zip_bytes'])} "
            f"({r['zip']:.2f}x) | {row['macs'] / 1e6:.2f} M | {row['batch_1']['median_ms']:.3f} / "
            f"{row['batch_1']['p90_ms']:.3f} ({r['speed1']:.2f}x) | {row['batch_256']['median_ms']:.2f} / "
            f"{row['batch_256']['p90_ms']:.2f} ({r['speed256']:.2f}x) |")
    return lines


def target_table(results: dict) -> list[str]:
    base = results["artifacts"][FP32]
    lines = ["| target | got | met |", "|---|---|---|"]
    seeds = results["accuracy_over_seeds"]
    for fragment, description, check in TARGETS:
        row = results["artifacts"].get(f"modelzip {fragment}")
        if row is not None and fragment in seeds:
            row = {**row, "accuracy": seeds[fragment]["mean"]}
        got, met = ("not run", False) if row is None else check(row, base)
        lines.append(f"| {description} | {got} | {'yes' if met else '**no**'} |")
    for name, description, check in RESIDUAL_TARGETS:
        figures = results.get("residual", {}).get(name)
        got, met = ("not run", False) if figures is None else check(figures)
        lines.append(f"| {description} | {got} | {'yes' if met else '**no**'} |")
    o = results["overhead"]
    lines.append(f"| `modelzip --help` <= 0.3 s | {o['help_s']:.3f} s | {'yes' if o['help_s'] <= 0.3 else '**no**'} |")
    ratio = o["cached_rerun_s"] / o["first_run_s"]
    met = ratio <= 0.05 and o["cached_rerun_s"] < 0.5
    lines.append(f"| cached rerun <= 5% of first run and < 0.5 s | {100 * ratio:.1f}% ({o['cached_rerun_s']:.2f} s vs "
                 f"{o['first_run_s']:.1f} s) | {'yes' if met else '**no**'} |")
    tp = results.get("finetune_throughput")
    if tp and "ratio" in tp:
        lines.append(f"| finetune throughput >= 90% of a plain loop | {100 * tp['ratio']:.1f}% | "
                     f"{'yes' if tp['ratio'] >= 0.9 else '**no**'} |")
    else:
        lines.append("| finetune throughput >= 90% of a plain loop | not measured yet | **no** |")
    return lines


def distill_vs_plain(results: dict) -> list[str]:
    """Issue 4: the same pruned model fine-tuned 3 epochs with and without a teacher."""
    seeds = results["accuracy_over_seeds"]
    if "prune_distill" not in seeds or "prune_plain" not in seeds:
        return ["Not measured in this run."]
    distilled, plain = seeds["prune_distill"], seeds["prune_plain"]
    return [f"After the same channel pruning (recipes/bench/prune_distill.yaml vs prune_plain.yaml, identical "
            f"but for `distill`), 3 epochs: distilled {100 * distilled['mean']:.2f}% ± {100 * distilled['std']:.2f}, "
            f"plain {100 * plain['mean']:.2f}% ± {100 * plain['std']:.2f} (mean ± std over {distilled['n']} "
            f"seeds): distillation {100 * (distilled['mean'] - plain['mean']):+.2f} pp."]


def residual_table(results: dict) -> list[str]:
    lines = ["| recipe | accuracy input -> final | MACs input -> final | params input -> final | "
             "size ratio | batch 256 ms baseline -> final (speedup) | steps |", "|---|---|---|---|---|---|---|"]
    for name, r in results.get("residual", {}).items():
        lat = r["latency"].get("batch_256")
        latency = "n/a" if lat is None else (
            f"{lat['baseline']['median_ms']:.2f} -> {lat['final']['median_ms']:.2f} "
            f"({lat['baseline']['median_ms'] / lat['final']['median_ms']:.2f}x, {lat['verdict']})")
        steps = "; ".join(f"{s['pass']}: {s['summary']}" for s in r["steps"])
        lines.append(f"| {name} | {100 * r['input_accuracy']:.2f}% -> {100 * r['accuracy']:.2f}% | "
                     f"{r['macs_input'] / 1e6:.2f} M -> {r['macs'] / 1e6:.2f} M | {r['params_input']:,} -> "
                     f"{r['params']:,} | {r['size_ratio']:.2f}x | {latency} | {steps} |")
    return lines


def _baselines(results: dict) -> list[str]:
    lines = ["| model | epochs | training images | test accuracy | training time |", "|---|---|---|---|---|"]
    for name, b in results["baselines"].items():
        images = f"{b['limit_train']:,} (first N)" if b["limit_train"] else "55,000 (60,000 minus 5,000 validation)"
        lines.append(f"| `modelzip.zoo:{name}` | {b['epochs']} | {images} | {100 * b['test_accuracy']:.2f}% | "
                     f"{b['train_seconds']:.0f} s |")
    return lines


def write_markdown(results: dict, path: Path) -> None:
    env, o = results["environment"], results["overhead"]
    text = [
        "# Benchmarks", "",
        f"Reproduce: `{results['command']}` (took {results['wall_s'] / 60:.1f} min). Raw figures: bench.json.", "",
        f"Machine: {env['cpu_model']}, {env['cpu_count']} cores, flags {', '.join(env['cpu_flags'])}; "
        f"onnxruntime {env['onnxruntime']} with {results['threads']} threads; torch {env['torch']}; "
        f"Python {env['python']}.", "",
        "## Baselines (trained here, from scratch, on Fashion-MNIST)", "", *_baselines(results), "",
        "## Fashion-MNIST CNN: every artifact measured together", "",
        "Accuracy is top-1 on the full 10,000-image test set in onnxruntime (seed 0's artifact; where "
        f"training is involved, mean ± std over seeds {results['seeds']} from the runs' own reports). Latency: "
        "onnxruntime CPU, all artifacts interleaved round-robin at each batch size; ratios are against "
        "the fp32 ONNX of the same baseline.", "",
        *artifact_table(results), "",
        "## Residual networks (ResNet-20, dsresnet): figures from each run's own report", "",
        "Baseline and final ONNX interleaved within each run; accuracy on the full test set.", "",
        *residual_table(results), "",
        "## Targets", "", "Accuracy drops use the mean over seeds where a recipe ran several.", "",
        *target_table(results), "",
        "## Distillation vs plain fine-tuning", "", *distill_vs_plain(results), "",
        "## Tool overhead", "",
        f"`modelzip --help` {o['help_s']:.3f} s, `modelzip validate` {o['validate_s']:.3f} s, "
        f"`python -c 'import torch'` {o['import_torch_s']:.3f} s (best of 5). "
        f"fp32 recipe: first run {o['first_run_s']:.1f} s, fully cached rerun {o['cached_rerun_s']:.2f} s.", "",
    ]
    path.write_text("\n".join(text) + _owned_sections(path))


def _owned_sections(path: Path) -> str:
    """The sections of the current file that other scripts write between ``<!-- name:begin -->`` and
    ``<!-- name:end -->`` (bench_unseen.py, profile_int8.py): kept, so that rewriting the rest does not
    drop them."""
    import re

    text = path.read_text() if path.exists() else ""
    return "".join("\n" + match.group(0) for match in re.finditer(r"<!-- (\w+):begin.*?<!-- \1:end -->\n?", text,
                                                                  re.S))


def write_section(path: Path, name: str, section: str) -> None:
    """Replace the section a script owns in ``path``, between ``<!-- name:begin`` and
    ``<!-- name:end -->`` (or append it), leaving the rest as it is."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- {name}:begin.*?<!-- {name}:end -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
