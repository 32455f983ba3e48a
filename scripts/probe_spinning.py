"""Does onnxruntime's thread spinning bias interleaved latency? Two files timed alone and interleaved.

For each spin setting (onnxruntime's default, idle threads spinning at most N microseconds,
spinning off), compares two ONNX files the way the pipeline does (compare_latency: interleaved,
three sessions each) and each file alone in one session (the deployment case). An interleaved
ratio far from the lone one means the sessions slowed each other. The figures behind
modelzip.evaluation.runtime.MEASUREMENT_SESSION_CONFIG came from this script:

    python scripts/probe_spinning.py --baseline fp32.onnx --final int8.onnx --rounds 2 [--write BENCHMARKS.md]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from modelzip.evaluation import latency, runtime

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import write_section

SETTINGS = {"default": {}, "spin <= 1000 us": {"session.intra_op.spin_duration_us": "1000"},
            "spin <= 200 us": {"session.intra_op.spin_duration_us": "200"},
            "spin off": {"session.intra_op.allow_spinning": "0"}}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--final", type=Path, required=True)
    parser.add_argument("--input-shape", type=int, nargs="+", default=[1, 1, 28, 28])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write", type=Path, help="also write the table into this BENCHMARKS.md")
    return parser.parse_args()


def alone_ms(path: Path, shape: list[int], batch: int) -> float:
    """Median of one session's runs, nothing else running in this process."""
    session = runtime.ort_session(path)
    feed = {session.get_inputs()[0].name:
            np.random.default_rng(0).standard_normal((batch, *shape[1:]), dtype=np.float32)}
    runs = 2000 if batch == 1 else 60
    for _ in range(max(10, runs // 10)):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        session.run(None, feed)
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e6


def main() -> None:
    args = parse_args()
    rows = ["| round | spinning | batch | interleaved baseline / final ms | speedup [95%] | alone baseline / final ms "
            "| speedup alone |", "|---|---|---|---|---|---|---|"]
    print("\n".join(rows))
    for round_index in range(args.rounds):
        for name, config in SETTINGS.items():
            # The pipeline's own session setup, with this spin setting in place of its bound.
            runtime.MEASUREMENT_SESSION_CONFIG = config
            for batch in args.batches:
                base, final, cmp = latency.compare_latency(args.baseline, args.final, tuple(args.input_shape), batch,
                                                           repeats=200 if batch == 1 else 50)
                alone_base = alone_ms(args.baseline, args.input_shape, batch)
                alone_final = alone_ms(args.final, args.input_shape, batch)
                rows.append(f"| {round_index} | {name} | {batch} | {base.median_ms:.3f} / {final.median_ms:.3f} "
                            f"| {cmp.ratio:.2f}x [{cmp.ci_low:.2f}, {cmp.ci_high:.2f}] "
                            f"| {alone_base:.3f} / {alone_final:.3f} | {alone_base / alone_final:.2f}x |")
                print(rows[-1], flush=True)
    if args.write:
        write_section(args.write, "spinning", "\n".join([
            "<!-- spinning:begin (scripts/probe_spinning.py writes this section) -->",
            "## Thread spinning and interleaved timing (issue #18)", "",
            f"`python scripts/probe_spinning.py --baseline {args.baseline.name} --final {args.final.name} "
            f"--rounds {args.rounds} --write BENCHMARKS.md`: the fashion CNN's fp32 and static int8 files compared "
            "the way every run compares its baseline and final model (interleaved, three onnxruntime sessions "
            "each), and each file timed alone in one session (the deployment case), under each spin setting. "
            "modelzip's sessions let idle threads spin at most 1 ms (`session.intra_op.spin_duration_us`): with "
            "onnxruntime's default the interleaved sessions took the cores from each other and the ratios "
            "drifted from the lone ones; with spinning off, every batch-1 run paid the thread wake-up.", "",
            *rows, "<!-- spinning:end -->", ""]))


if __name__ == "__main__":
    main()
