"""Which channel widths onnxruntime runs fast on this CPU: measured, for `round_to: auto` (issue #13).

Times single convolutions (w -> w channels, both sides pruned alike, as channel pruning
leaves them) at every width in a range, at batch 64 with 2 threads, in onnxruntime
sessions set up as modelzip's latency measurements are (modelzip.evaluation.runtime).
Rounds are interleaved -- one run of every width per round, the starting width rotating --
and each width's time is the median over rounds, so drift of a shared machine hits all
widths alike. Prints one table per layer kind (time, time per MAC) and a summary: how
fast, per MAC, widths that are multiples of 16, of 8 (not 16), of 4 (not 8) and the others
run, and how often a width takes longer than the next multiple of 16 above it (so that
rounding *down* would have been pure gain).

    PYTHONPATH=$PWD python scripts/probe_widths.py              # ~1 min
    PYTHONPATH=$PWD python scripts/probe_widths.py --widths 40 72 --step 1 --rounds 9
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

# (name, kernel, map size, depthwise-separable): a plain 3x3 conv at the two map sizes of a
# small CNN's stages, and a depthwise 3x3 + pointwise 1x1 pair (dsresnet's block).
KINDS = (("conv3x3 28x28", 3, 28, False), ("conv3x3 14x14", 3, 14, False),
         ("dw3x3+pw1x1 14x14", 3, 14, True))
CLASSES = (16, 8, 4, 1)  # a width's class: the largest of these dividing it


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs=2, default=(40, 72), metavar=("FROM", "TO"))
    parser.add_argument("--step", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median over them)")
    return parser.parse_args(argv)


def conv_model(path: Path, width: int, kernel: int, size: int, separable: bool, batch: int) -> int:
    """Write an ONNX model of the layer at ``width``; return its MACs per batch."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(width)
    nodes, weights = [], []

    def conv(name: str, source: str, out: int, k: int, groups: int) -> str:
        shape = (out, width // groups, k, k)
        weights.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name + "_w"))
        weights.append(numpy_helper.from_array(np.zeros(out, np.float32), name + "_b"))
        nodes.append(helper.make_node("Conv", [source, name + "_w", name + "_b"], [name],
                                      kernel_shape=[k, k], pads=[k // 2] * 4, group=groups))
        nodes.append(helper.make_node("Relu", [name], [name + "_r"]))
        return name + "_r"

    if separable:
        conv("pw", conv("dw", "x", width, kernel, width), width, 1, 1)
        macs = batch * size * size * (width * kernel * kernel + width * width)
    else:
        conv("c", "x", width, kernel, 1)
        macs = batch * size * size * width * width * kernel * kernel
    nodes[-1].output[0] = "y"  # the last Relu is the graph output
    graph = helper.make_graph(
        nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, width, size, size])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return macs


def measure(paths: dict[int, Path], shape: dict[int, tuple[int, ...]], threads: int, rounds: int) -> dict[int, float]:
    """Median ms per run of each width, rounds interleaved with a rotating start."""
    import numpy as np

    from modelzip.evaluation.runtime import ort_session

    sessions = {w: ort_session(p, threads=threads) for w, p in paths.items()}
    feeds = {w: {"x": np.random.default_rng(0).standard_normal(shape[w]).astype(np.float32)} for w in paths}
    for w, session in sessions.items():  # warm-up: allocation and the first kernel selection
        session.run(None, feeds[w])
        session.run(None, feeds[w])
    times: dict[int, list[float]] = {w: [] for w in paths}
    order = list(paths)
    for r in range(rounds):
        for w in order[r % len(order):] + order[:r % len(order)]:
            start = time.perf_counter_ns()
            sessions[w].run(None, feeds[w])
            times[w].append((time.perf_counter_ns() - start) / 1e6)
    return {w: statistics.median(t) for w, t in times.items()}


def width_class(width: int) -> int:
    return next(c for c in CLASSES if width % c == 0)


def probe(kind: tuple, widths: list[int], args, directory: Path) -> dict:
    name, kernel, size, separable = kind
    paths, macs, shapes = {}, {}, {}
    for w in widths:
        paths[w] = directory / f"{name.split()[0]}_{size}_{w}.onnx"
        macs[w] = conv_model(paths[w], w, kernel, size, separable, args.batch)
        shapes[w] = (args.batch, w, size, size)
    ms = measure(paths, shapes, args.threads, args.rounds)
    per_gmac = {w: ms[w] / (macs[w] / 1e9) for w in widths}  # ms per GMAC: lower is better
    print(f"\n{name}, batch {args.batch}, {args.threads} threads, median of {args.rounds} interleaved rounds")
    print(f"{'width':>5} {'class':>5} {'ms':>8} {'ms/GMAC':>8}  vs next multiple of 16")
    for w in widths:
        up = -(-w // 16) * 16
        vs = f"{ms[w] / ms[up]:.2f}x the time of {up}" if up in ms and up != w else ""
        print(f"{w:>5} {width_class(w):>5} {ms[w]:>8.2f} {per_gmac[w]:>8.2f}  {vs}")
    return {"ms": ms, "per_gmac": per_gmac}


def summarise(name: str, result: dict) -> str:
    per_gmac, ms = result["per_gmac"], result["ms"]
    by_class = {c: [v for w, v in per_gmac.items() if width_class(w) == c] for c in CLASSES}
    base = statistics.median(by_class[16]) if by_class[16] else None
    parts = []
    for c, values in by_class.items():
        if values and base:
            label = "others" if c == 1 else f"x{c}"
            parts.append(f"{label} {statistics.median(values) / base:.2f}")
    slower = [w for w in ms if w % 16 and (up := -(-w // 16) * 16) in ms and ms[w] > ms[up]]
    odd = [w for w in ms if w % 16 and -(-w // 16) * 16 in ms]
    return (f"{name}: time per MAC relative to multiples of 16: {', '.join(parts)}; "
            f"{len(slower)} of {len(odd)} widths not a multiple of 16 take longer than the next multiple of 16")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from modelzip.envinfo import channel_multiple, cpu_flags, cpu_model, package_version

    widths = list(range(args.widths[0], args.widths[1] + 1, args.step))
    value, reason = channel_multiple(cpu_flags())
    print(f"CPU {cpu_model()}, flags {' '.join(cpu_flags())}, onnxruntime {package_version('onnxruntime')}")
    print(f"round_to: auto here -> {value} ({reason})")
    started = time.perf_counter()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            lines.append(summarise(kind[0], probe(kind, widths, args, Path(tmp))))
    print("\nsummary (lower is faster per MAC):")
    for line in lines:
        print("  " + line)
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
