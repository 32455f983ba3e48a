"""Where int8 time goes (issue #18): fp32 vs static int8, per onnxruntime node type, and the speed-ups.

For each zoo model given a trained checkpoint: exports the fp32 ONNX (as the export pass does),
quantizes it with modelzip's static int8 machinery twice -- ``placement: none`` (the graph as
exported) and ``placement: auto`` (the default) -- and then, at each batch size:

- profiles the three with onnxruntime's profiler, interleaved (one run of each per round), and
  prints per op type the sum of the per-node median times (what onnxruntime actually ran: fused
  QLinearConv/QGemm, NhwcMaxPool, float Conv in NCHWc, Transpose/Reorder layout changes, Q/DQ);
- measures int8 vs fp32 latency interleaved (``speedups``: every model a block of runs per round),
  ``--repeats`` times, and prints each speed-up so the spread shows.

Sessions are set up as modelzip's measurements (``--threads`` intra-op threads, ORT_ENABLE_ALL).
On a shared machine run it when nothing else is busy: with two other jobs running, an A/A pair of
one int8 file measured up to 20% apart.

    PYTHONPATH=$PWD python scripts/profile_int8.py --write BENCHMARKS.md \\
        --checkpoint fashion_cnn=checkpoints/fashion_cnn.pt --checkpoint resnet20=.bench/checkpoints/resnet20-3ep-all.pt
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench_report import write_section  # scripts/ is on sys.path when a script runs

VARIANTS = ("fp32", "int8 placement none", "int8 placement auto")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True, metavar="MODEL=PATH",
                        help="a modelzip.zoo model (num_classes 10, 1x28x28 input) and its state_dict")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20, help="profiled rounds per batch size")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved latency measurements per batch size")
    parser.add_argument("--data-root", type=Path, default=None, help="Fashion-MNIST (calibration images)")
    parser.add_argument("--write", type=Path, default=None, metavar="BENCHMARKS.md",
                        help="replace this script's section of the file (else print it)")
    return parser.parse_args(argv)


def build(model: str, checkpoint: Path, directory: Path, data) -> dict[str, Path]:
    """fp32 ONNX of the zoo model and its two int8 versions: variant -> path."""
    import shutil

    import torch

    from modelzip import zoo
    from modelzip.onnx_export import export_onnx
    from modelzip.quantization.run import quantize_onnx
    from modelzip.quantization.settings import QuantizeSettings, Timing

    module = zoo.ZOO[model](num_classes=10)
    module.load_state_dict(torch.load(checkpoint, weights_only=True))
    fp32 = directory / model / "fp32.onnx"
    fp32.parent.mkdir(parents=True)
    export_onnx(module.eval(), (1, 1, 28, 28), fp32, opset=18, exporter="dynamo", dynamic_batch=True,
                pass_name="export", step=None)
    paths = {"fp32": fp32}
    for placement in ("none", "auto"):
        work = directory / model / placement
        (work / "scratch").mkdir(parents=True)
        result = quantize_onnx(fp32, QuantizeSettings(mode="static", placement=placement), data=data,
                               input_shape=(1, 1, 28, 28), timing=Timing(batch_size=256),
                               work_dir=work, scratch=work / "scratch", seed=0)
        shutil.rmtree(work / "scratch")
        paths[f"int8 placement {placement}"] = result.path
        print(f"{model} placement {placement}: {result.details.summary}")
    return paths


# Profiled runs per model and round, after untimed ones: in blocks, as ``speedups`` times them.
BLOCK = {"untimed": 2, "profiled": 3}
BLOCK_BATCH_1 = {"untimed": 40, "profiled": 20}


def profile(paths: dict[str, Path], batch: int, threads: int, rounds: int, directory: Path) -> dict:
    """variant -> _per_op's (run ms, per op type, slowest nodes), the variants profiled interleaved,
    each round a block of runs per model of which the untimed ones are left out (see ``speedups``)."""
    import numpy as np
    import onnxruntime as ort

    sessions = {}
    for name, path in paths.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_profiling, options.log_severity_level = True, 3
        options.profile_file_prefix = str(directory / f"profile_{name.replace(' ', '_')}_{batch}")
        sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).standard_normal((batch, 1, 28, 28), dtype=np.float32)
    block = BLOCK_BATCH_1 if batch == 1 else BLOCK
    for index in range(1 + rounds):  # round 0 warms up
        for name in (list(sessions) if index % 2 == 0 else list(sessions)[::-1]):
            for _ in range(block["untimed"] + block["profiled"]):
                sessions[name].run(None, {"input": images})
    return {name: _per_op(json.loads(Path(session.end_profiling()).read_text()), block)
            for name, session in sessions.items()}


def _per_op(events: list[dict], block: dict[str, int]) -> tuple[float, dict[str, float], list[tuple[str, str, float]]]:
    """(median run ms, {op type: sum of per-node medians}, the 3 slowest nodes (node, op, ms)), from
    the profiled runs only: the first block (warm-up) and each block's untimed runs are left out."""
    import bisect

    runs = sorted((e["ts"], e["dur"]) for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    size = block["untimed"] + block["profiled"]
    kept = {i for i in range(size, len(runs)) if i % size >= block["untimed"]}
    starts = [ts for ts, _ in runs]
    nodes, op_of = collections.defaultdict(list), {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            if bisect.bisect_right(starts, event["ts"]) - 1 in kept:
                node = event["name"].removesuffix("_kernel_time")
                nodes[node].append(event["dur"])
                op_of[node] = event["args"].get("op_name", "?")
    per_node = {node: statistics.median(times) / 1000 for node, times in nodes.items()}
    per_op: dict[str, float] = collections.Counter()
    for node, ms in per_node.items():
        per_op[op_of[node]] += ms
    slowest = sorted(per_node, key=per_node.get, reverse=True)[:3]
    run_ms = statistics.median(dur for index, (_, dur) in enumerate(runs) if index in kept) / 1000
    return run_ms, dict(per_op), [(n, op_of[n], per_node[n]) for n in slowest]


def speedups(paths: dict[str, Path], batch: int, threads: int, repeats: int) -> dict[str, list[float]]:
    """fp32 / int8 latency ratios, ``repeats`` of them, each the median over interleaved rounds.

    Each round runs every model in a block: untimed runs first, then timed ones, the order of the
    models alternating between rounds. Alternating single runs (modelzip's measure_latency above
    TURN_S) let the worker threads of the session that just ran spin on the cores the next one
    needs: at batch 256 the fp32 CNN then measured 24.5 ms instead of 12.5 ms, and the ratio
    scattered from 0.95x to 4.3x; in blocks it is steady."""
    import numpy as np
    import onnxruntime as ort

    sessions = {}
    for name, path in paths.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).standard_normal((batch, 1, 28, 28), dtype=np.float32)
    untimed, timed = (40, 200) if batch == 1 else (2, 7)
    ratios: dict[str, list[float]] = {name: [] for name in paths if name != "fp32"}
    for _ in range(repeats):
        blocks: dict[str, list[float]] = {name: [] for name in paths}
        for index in range(15):
            for name in (list(sessions) if index % 2 == 0 else list(sessions)[::-1]):
                for _ in range(untimed):
                    sessions[name].run(None, {"input": images})
                times = []
                for _ in range(timed):
                    start = time.perf_counter()
                    sessions[name].run(None, {"input": images})
                    times.append(time.perf_counter() - start)
                blocks[name].append(statistics.median(times))
        for name in ratios:
            ratios[name].append(statistics.median(f / q for f, q in zip(blocks["fp32"], blocks[name])))
    return ratios


SECTION_INTRO = (
    "`scripts/profile_int8.py`: each zoo model's fp32 ONNX and its static int8 (QDQ, uint8 activations, "
    "per-channel int8 weights, 512 calibration images) with `placement: none` (the graph as exported) and "
    "`placement: auto` (the default: a convolution reading fewer than 4 channels gets its input zero-padded "
    "to 4, the channel group onnxruntime's int8 kernels read, and a conv head is flattened channels last; "
    "the same predictions). Per op type: "
    "the sum of per-node median times from onnxruntime's profiler, the three models profiled interleaved; "
    "`run` is the median whole run. Speed-ups: fp32 / int8 latency, each the median ratio over 15 "
    "interleaved rounds in which every model runs a block (untimed runs, then timed ones); each such "
    "measurement is listed so the spread shows.")


def main(argv: list[str] | None = None) -> int:
    from modelzip.envinfo import cpu_flags, cpu_model
    from modelzip.recipe import DataSpec
    from modelzip.sources.data import load_data

    args = parse_args(argv)
    data = load_data(DataSpec(dataset="fashion-mnist", root=args.data_root, batch_size=256), base_dir=Path("."),
                     seed=0)
    load_before = os.getloadavg()[0]
    lines = ["<!-- int8:begin (scripts/profile_int8.py writes this section) -->", "## Where int8 time goes", "",
             SECTION_INTRO, "", f"CPU {cpu_model()}, flags {' '.join(cpu_flags())}; onnxruntime "
             f"{_version('onnxruntime')}, {args.threads} threads.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.checkpoint:
            model, _, checkpoint = spec.partition("=")
            paths = build(model, Path(checkpoint), Path(tmp), data)
            for batch in args.batches:
                lines += table(model, batch, profile(paths, batch, args.threads, args.rounds, Path(tmp)),
                               speedups(paths, batch, args.threads, args.repeats))
                print("\n".join(lines[-12:]), flush=True)
    lines += [f"Load average (1 min) when it started and ended: {load_before:.1f}, {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} cores. On a shared machine the ratios move with what else runs (an A/A pair of one "
              "int8 file came out up to 20% apart while two other jobs ran); compare columns of one run.", "",
              "<!-- int8:end -->"]
    section = "\n".join(lines) + "\n"
    if args.write:
        write_section(args.write, "int8", section)
    else:
        print(section)
    return 0


def table(model: str, batch: int, profiled: dict, ratios: dict[str, list[float]]) -> list[str]:
    ops = sorted({op for _, per_op, _ in profiled.values() for op in per_op},
                 key=lambda op: -max(per_op.get(op, 0.0) for _, per_op, _ in profiled.values()))
    out = [f"**{model}, batch {batch}** (ms)", "", "| op type | " + " | ".join(VARIANTS) + " |",
           "|---|" + "---:|" * len(VARIANTS)]
    for op in ops:
        out.append(f"| {op} | " + " | ".join(_ms(profiled[name][1].get(op)) for name in VARIANTS) + " |")
    out.append("| run | " + " | ".join(f"**{profiled[name][0]:.3f}**" for name in VARIANTS) + " |")
    out += ["", "slowest nodes: " + "; ".join(
        f"{name}: " + ", ".join(f"{node} ({op}) {ms:.3f}" for node, op, ms in profiled[name][2]) for name in VARIANTS)]
    out += ["", "speed-up vs fp32: " + "; ".join(
        f"{name} " + ", ".join(f"{value:.2f}x" for value in values) for name, values in ratios.items()), ""]
    return out


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _version(package: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(package)


if __name__ == "__main__":
    raise SystemExit(main())
