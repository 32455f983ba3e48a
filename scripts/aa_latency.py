"""A/A check of the latency verdict: the same model in two byte-different files must not be
called faster or SLOWER.

Exports the zoo's Fashion-MNIST CNN (random weights: latency does not care) to ONNX, saves a
second copy that differs only in its doc_string, then runs N comparisons (default 20) of the
two at batch 1 and 256 exactly as `modelzip run` measures baseline vs final: interleaved
rounds (modelzip.evaluation.latency.measure_latency), stopped early once the interval is within
--tolerance (as evaluation.latency_tolerance), then the bootstrap interval and verdict
(modelzip.evaluation.latency.compare_latency). First, a control: a byte-identical copy must be "same
model" (measured once). Issue #11 asks for at least 19 of 20 honest verdicts per
batch on a shared 2-core machine. Exits 1 when fewer than 95% are.

    PYTHONPATH=$PWD python scripts/aa_latency.py            # 20 comparisons, ~3 min
    PYTHONPATH=$PWD python scripts/aa_latency.py --runs 5 --save-times aa.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

INPUT_SHAPE = (1, 1, 28, 28)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="A/A comparisons per batch size")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: all cores)")
    parser.add_argument("--repeats", type=int, default=200, help="as evaluation.repeats (capped at ~3 s)")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="as evaluation.latency_tolerance: stop once the interval is this tight (0: never)")
    parser.add_argument("--save-times", type=Path, help="write every run's raw times (ns) here, as JSON")
    return parser.parse_args(argv)


def make_copies(directory: Path) -> tuple[Path, Path]:
    """The CNN exported once, and the same graph re-saved with another doc_string."""
    import onnx
    import torch

    from modelzip.onnx_export import export_onnx
    from modelzip.zoo import fashion_cnn

    torch.manual_seed(0)
    first, second = directory / "a.onnx", directory / "b.onnx"
    export_onnx(fashion_cnn(), INPUT_SHAPE, first, opset=18, exporter="dynamo", dynamic_batch=True,
                pass_name="export", step=None)
    model = onnx.load(first)
    model.doc_string = "A/A copy: same graph, same weights, different bytes"
    onnx.save(model, second)
    return first, second


def main(argv: list[str] | None = None) -> int:
    from modelzip.evaluation.latency import SAME_MODEL, WITHIN_NOISE, compare_latency, same_file
    from modelzip.evaluation.runtime import default_threads

    args = parse_args(argv)
    threads = args.threads or default_threads()
    started = time.perf_counter()
    raw: list[dict] = []
    verdicts: dict[int, Counter] = {batch: Counter() for batch in args.batches}
    with tempfile.TemporaryDirectory() as scratch:
        first, second = make_copies(Path(scratch))
        if same_file(first, second):
            raise SystemExit("the two copies should differ in bytes")
        print(f"A/A: {first.stat().st_size:,} vs {second.stat().st_size:,} bytes, {threads} threads")
        identical = Path(scratch) / "identical.onnx"
        identical.write_bytes(first.read_bytes())
        # The control: a byte-identical copy is measured once and called the same model.
        controls = [compare_latency(first, identical, INPUT_SHAPE, batch, threads=threads,
                                    repeats=args.repeats)[2].verdict for batch in args.batches]
        print(f"control, byte-identical copy at batch {args.batches}: {controls}")
        for run in range(args.runs):
            for batch in args.batches:
                base, final, result = compare_latency(first, second, INPUT_SHAPE, batch, threads=threads,
                                                      repeats=args.repeats, seed=run, tolerance=args.tolerance)
                verdicts[batch][result.verdict] += 1
                raw.append({"run": run, "batch": batch, "baseline_ns": list(base.times_ns),
                            "final_ns": list(final.times_ns), "slots": list(base.slots),
                            "ratio": result.ratio, "ci_low": result.ci_low,
                            "ci_high": result.ci_high, "verdict": result.verdict, "stopped": base.stopped})
                print(f"run {run + 1:2d} batch {batch:3d}: {result.ratio:.3f}x "
                      f"({result.ci_low:.3f}-{result.ci_high:.3f}) over {result.pairs} paired runs "
                      f"(stopped: {base.stopped}), "
                      f"{base.median_ms:.3f} vs {final.median_ms:.3f} ms -> {result.verdict}", flush=True)
    wall = time.perf_counter() - started
    honest_everywhere = all(verdict == SAME_MODEL for verdict in controls)
    for batch, counts in verdicts.items():
        honest = counts[WITHIN_NOISE] + counts[SAME_MODEL]
        honest_everywhere &= honest >= 0.95 * args.runs
        print(f"batch {batch}: {honest}/{args.runs} within noise or same model; "
              + ", ".join(f"{verdict} {n}" for verdict, n in sorted(counts.items())))
    print(f"wall time {wall:.0f} s")
    if args.save_times:
        args.save_times.write_text(json.dumps(raw))
    return 0 if honest_everywhere else 1


if __name__ == "__main__":
    sys.exit(main())
