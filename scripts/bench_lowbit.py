"""`make bench-lowbit`: sub-8-bit weights (issue 15) on the Fashion-MNIST CNN, next to fp32 and int8.

Runs recipes/bench/{fp32,quantize_static,qat_int4,qat_ternary,qat_binary,qat_int2,qat_auto,qat_int4_a8,
qat_auto_drop}.yaml once (seed 0)
through the CLI from the repository's baseline checkpoint (checkpoints/fashion_cnn.pt), then
measures every artifact the same way as scripts/bench.py (accuracy on the full test set, file
size, latency at batch 1 and 256 interleaved) and writes bench-lowbit.json plus its section of
BENCHMARKS.md (between the lowbit markers; `make bench` keeps it). One seed: each QAT run trains 3 epochs on CPU.
Each recipe has its own step cache (.bench/cache-lowbit/<recipe>), so they can also be run in
parallel by hand with the same overrides and this script then only measures.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".bench"
sys.path.insert(0, str(REPO / "scripts"))

from bench import LOWBIT_RECIPES, measure, run_recipe  # noqa: E402
from bench_report import write_section  # noqa: E402

RECIPES = ("fp32", "quantize_static", *LOWBIT_RECIPES)
SECTION = "lowbit"
TARGETS = ("Targets (issue 15): ternary (3 epochs, distilled) >= 12x smaller than the fp32 ONNX within 1.5 pp; "
           "binary >= 20x within 3 pp; int4 >= 7x within 0.5 pp; auto with target_size 0.1 at <= 10% of the "
           "fp32 bytes and more accurate than uniform int2; parity >= 99.5%. qat_int4_a8: int4 weights with int8 "
           "(uint8) activations; qat_auto_drop: auto within max_accuracy_drop 0.01.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "fashion_cnn.pt")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads when timing")
    parser.add_argument("--from-reports", action="store_true",
                        help="run and measure nothing: the table from the report.json of runs already made in "
                             ".bench/lowbit/<recipe> (each run's accuracy, sizes and latency vs its fp32 baseline)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES,
                        help="a subset (fp32 is always run: the rows compare against it)")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=REPO / "bench-lowbit.json")
    return parser.parse_args(argv)


def run_all(checkpoint: Path, names: list[str]) -> dict[str, dict]:
    runs = {}
    for name in names:
        out = WORK / "lowbit" / name
        # A cache per recipe: runs of different recipes can go on in parallel (a run locks its cache).
        overrides = [f"model.checkpoint={checkpoint.resolve()}", "seed=0", f"output={out}",
                     f"cache_dir={WORK / 'cache-lowbit' / name}"]
        report, wall = run_recipe(REPO / "recipes" / "bench" / f"{name}.yaml", overrides)
        runs[name] = {"report": report, "wall_s": round(wall, 1), "onnx": out / "model.onnx"}
        print(f"{name}: {report['final']['accuracy']:.4f} in {wall:.0f}s")
    return runs


def rows(runs: dict[str, dict], measured: dict[str, dict]) -> list[dict]:
    fp32 = measured["fp32"]
    out = []
    for name in runs:
        m, step = measured[name], _quantize_step(runs[name]["report"])
        low_bit = (step or {}).get("low_bit")
        parity = (step or {}).get("agreement_with_float") if low_bit else None
        out.append({
            "recipe": name, "accuracy": m["accuracy"], "vs_fp32_pp": 100 * (m["accuracy"] - fp32["accuracy"]),
            "bytes": m["size_bytes"], "ratio": fp32["size_bytes"] / m["size_bytes"],
            "weight_bytes": low_bit["file"]["weight_bytes"] if low_bit else None,
            "ideal_layer_bytes": low_bit["file"]["ideal_layer_bytes"] if low_bit else None,
            "formats": sorted({f"{r['grid']}: {r['format']}" for r in low_bit["layers"]}) if low_bit else None,
            "grids": _grids(low_bit),
            "parity": parity, "batch_1_ms": m["batch_1"]["median_ms"], "batch_256_ms": m["batch_256"]["median_ms"],
            "wall_s": runs[name]["wall_s"]})
    return out


def _grids(low_bit: dict | None) -> list[str] | None:
    """'layer grid' per layer ('+ int8 in' where its input is int8), and auto's budget check."""
    if not low_bit:
        return None
    cells = [f"{r['layer']} {r['grid']}" + (" + int8 in" if r.get("activation") else "") for r in low_bit["layers"]]
    verified = (low_bit.get("auto") or {}).get("verified")
    if verified:
        cells.append(f"auto: predicted drop {100 * verified['predicted_drop']:.2f} pp, trained "
                     f"{100 * verified['drop']:.2f} pp on {verified['samples']} validation images")
    return cells


def _quantize_step(report: dict) -> dict | None:
    return next((s["details"] for s in report["steps"] if s["pass"] == "quantize"), None)


def markdown(table: list[dict], threads: int) -> str:
    lines = [f"<!-- {SECTION}:begin (scripts/bench_lowbit.py writes this section) -->",
             "## Low-bit weights (issue #15)", "",
             "`make bench-lowbit` (scripts/bench_lowbit.py): each recipe once, seed 0, from "
             "checkpoints/fashion_cnn.pt; accuracy on the full test set; every file measured together "
             "(latency interleaved, onnxruntime CPU, default session). Parity: argmax agreement of the "
             "file with the torch model it was trained as, on 1,024 test images.", "", TARGETS, "",
             "| recipe | layers | accuracy | vs fp32 | file | smaller than fp32 | initializers (layers at ideal "
             f"packing) | parity vs torch | batch 1 / 256 ms ({threads} thread) | run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        weights = (f"{r['weight_bytes'] / 1e3:.0f} kB ({r['ideal_layer_bytes'] / 1e3:.0f} kB)"
                   if r["weight_bytes"] else "-")
        parity = (f"{100 * r['parity']['top1_agreement']:.2f}% of {r['parity']['samples']}, "
                  f"max diff {r['parity']['max_abs_diff']:.2g}" if r["parity"] else "-")
        grids = ", ".join(r["grids"]) if r["grids"] else ("fp32" if r["recipe"] == "fp32" else "int8 QDQ")
        lines.append(f"| {r['recipe']} | {grids} | {100 * r['accuracy']:.2f}% | {r['vs_fp32_pp']:+.2f} pp "
                     f"| {r['bytes'] / 1e3:.0f} kB | {r['ratio']:.1f}x | {weights} | {parity} "
                     f"| {r['batch_1_ms']:.3f} / {r['batch_256_ms']:.2f} | {r['wall_s']:.0f} s |")
    lines += ["", f"<!-- {SECTION}:end -->", ""]
    return "\n".join(lines)


def from_reports(names: list[str]) -> tuple[list[dict], str]:
    """Rows from each run's own report: accuracy and latency against the fp32 baseline that run measured."""
    table = []
    for name in names:
        path = WORK / "lowbit" / name / "report.json"
        if not path.is_file():
            print(f"skip {name}: no {path}")
            continue
        report = json.loads(path.read_text())
        final, baseline, step = report["final"], report["baseline"]["onnx"], _quantize_step(report) or {}
        low_bit = step.get("low_bit")
        latency = final.get("latency") or {}
        table.append({
            "recipe": name, "accuracy": final["accuracy"],
            "vs_fp32_pp": 100 * (final["accuracy"] - baseline["accuracy"]),
            "bytes": final["size_bytes"], "ratio": final["baseline_size_bytes"] / final["size_bytes"],
            "weight_bytes": low_bit["file"]["weight_bytes"] if low_bit else None,
            "ideal_layer_bytes": low_bit["file"]["ideal_layer_bytes"] if low_bit else None,
            "grids": _grids(low_bit),
            "parity": step.get("agreement_with_float") if low_bit else None,
            "latency": {batch: {"fp32_ms": pair["baseline"]["median_ms"], "ms": pair["final"]["median_ms"],
                                "verdict": pair["verdict"]} for batch, pair in latency.items()
                        if isinstance(pair, dict)},
            "wall_s": report["wall_time_s"]})
    lines = [f"<!-- {SECTION}:begin (scripts/bench_lowbit.py writes this section) -->",
             "## Low-bit weights (issue #15)", "",
             "`python scripts/bench_lowbit.py --from-reports` after running each recipe once: `python -m modelzip "
             "run recipes/bench/<recipe>.yaml --set model.checkpoint=checkpoints/fashion_cnn.pt --set seed=0 "
             "--set output=.bench/lowbit/<recipe> --set cache_dir=.bench/cache-lowbit/<recipe>` (baseline "
             "91.17%); figures from each run's own report: accuracy on the full "
             "test set, size against the fp32 ONNX the run wrote for its baseline, latency against that fp32 file "
             "(onnxruntime CPU, default session, interleaved, on a loaded 2-core machine). Parity: argmax agreement "
             "of the file with the torch model it was trained as, on 1,024 test images.", "", TARGETS, "",
             "| recipe | layers | accuracy | vs fp32 | file | smaller than fp32 | initializers (layers at ideal "
             "packing) | parity vs torch | latency ms, fp32 -> this file | run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        weights = (f"{r['weight_bytes'] / 1e3:.0f} kB ({r['ideal_layer_bytes'] / 1e3:.0f} kB)"
                   if r["weight_bytes"] else "-")
        parity = (f"{100 * r['parity']['top1_agreement']:.2f}%, max diff {r['parity']['max_abs_diff']:.2g}"
                  if r["parity"] else "-")
        latency = "; ".join(f"{batch.replace('_', ' ')}: {v['fp32_ms']:.3g} -> {v['ms']:.3g} ({v['verdict']})"
                            for batch, v in r["latency"].items()) or "-"
        grids = ", ".join(r["grids"]) if r["grids"] else "int8 QDQ"
        lines.append(f"| {r['recipe']} | {grids} | {100 * r['accuracy']:.2f}% | {r['vs_fp32_pp']:+.2f} pp "
                     f"| {r['bytes'] / 1e3:.0f} kB | {r['ratio']:.1f}x | {weights} | {parity} | {latency} "
                     f"| {r['wall_s']:.0f} s |")
    lines += ["", f"<!-- {SECTION}:end -->", ""]
    return table, "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.from_reports:
        table, text = from_reports([name for name in args.recipes if name != "fp32"])
        args.json.write_text(json.dumps({"rows": table, "source": "reports"}, indent=1) + "\n")
        write_section(args.out, SECTION, text)
        print(text)
        return
    runs = run_all(args.checkpoint, [name for name in RECIPES if name == "fp32" or name in args.recipes])
    measured = measure({name: run["onnx"] for name, run in runs.items()}, threads=args.threads)
    table = rows(runs, measured)
    text = markdown(table, args.threads)
    args.json.write_text(json.dumps({"rows": table, "measured": measured}, indent=1, default=str) + "\n")
    write_section(args.out, SECTION, text)
    print(text)


if __name__ == "__main__":
    main()
