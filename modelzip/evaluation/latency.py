"""onnxruntime CPU latency, with the compared models interleaved so machine drift cancels."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelzip.cache import file_sha256
from modelzip.evaluation import runtime

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime

# A latency measurement of one model aims to take at most this long; big batches
# get fewer repeats (but never fewer than MIN_TIMED_RUNS) so a report over a
# few models at batch 256 stays in seconds, not minutes.
LATENCY_BUDGET_S = 3.0
MIN_TIMED_RUNS = 5
WARMUP_BUDGET_S = 1.0
# Comparisons (compare_latency) also time each model for at least MIN_TIMED_S: 200 runs of a
# 0.012 ms model last 2.4 ms, less than one scheduler time slice, so one slice that favoured
# one copy decided an A/A "verdict". 0.1 s spans ~25 slices (about +0.15 s for the quickstart
# CNN at batch 1; nothing at batch 256). Capped at MAX_SPAN_RUNS runs to bound the bootstrap.
MIN_TIMED_S = 0.1
MAX_SPAN_RUNS = 2000
# Fast models take turns of several runs (about TURN_S each) instead of alternating run by
# run. onnxruntime's worker threads spin for a while after a run; alternating 0.1 ms runs on
# 2 cores, one session's spinning worker kept the free core and the other session never got
# it: in A/A runs at batch 64 one copy ran at 0.069 ms, the other at 0.124 ms, for all 800
# rounds ("1.78x faster", 1.76-1.79). Within a turn the running session has the core.
TURN_S = 0.005
# ...and each model gets SESSIONS sessions, rounds rotating through them. Sessions of one file
# differ: A/A copies of a 0.012 ms MLP came out up to 7% apart, tight intervals, in both
# directions from one comparison to the next. With three slots of sessions the bootstrap
# (compare_times) can draw slots and the interval covers that spread.
SESSIONS = 3
# Early stop (compare_latency with a tolerance): after the floor above (MIN_TIMED_S, every slot
# of sessions visited, and at least MIN_STOP_RUNS runs so the bootstrap has rounds to draw), the
# speedup's interval is recomputed each time the runs grow by CHECK_GROWTH (a handful of checks,
# CHECK_RESAMPLES resamples each: a few ms), and timing stops once its half-width is within the
# tolerance of the ratio. The stop looks only at the interval's width, never at where it lies, so
# it cannot steer the verdict (stopping once "faster" shows would be a sequential test).
MIN_STOP_RUNS = 20
CHECK_GROWTH = 1.25
CHECK_RESAMPLES = 500
# Why timing ended (Latency.stopped, report.json's latency "stopped"): the interval was tight;
# or the planned runs were all made, the plan being `repeats`, fewer where the ~3 s budget capped
# them, or more where they had to span MIN_TIMED_S.
TIGHT, REPEATS, TIME_CAP, MIN_SPAN = "tight", "repeats", "time_cap", "min_span"
STOP_REASONS = (TIGHT, REPEATS, TIME_CAP, MIN_SPAN)
# (times of each model so far, slot of each run) -> stop now?
StopRule = Callable[[Mapping[str, Sequence[int]], Sequence[int]], bool]


@dataclass(frozen=True)
class Latency:
    """onnxruntime wall time of one ``session.run`` at ``batch`` samples."""

    batch: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    threads: int
    # Every timed run in round order: times_ns[i] of two models measured together
    # ran in the same round, back to back, so they pair up (see compare_times).
    times_ns: tuple[int, ...] = field(default=(), repr=False, compare=False)
    slots: tuple[int, ...] = field(default=(), repr=False, compare=False)  # session slot of each run
    stopped: str = REPEATS  # why timing ended: one of STOP_REASONS


def measure_latency(
    paths: Mapping[str, Path],
    input_shape: tuple[int, ...],
    batch: int,
    *,
    threads: int | None = None,
    warmup: int = 10,
    repeats: int = 50,
    seed: int = 0,
    min_timed_s: float = 0.0,
    sessions: int = 1,
    stop: StopRule | None = None,
) -> dict[str, Latency]:
    """Latency of each ONNX model in ``paths`` at ``batch``, measured interleaved.

    How: every model gets the same input, random normal of shape
    (batch, *input_shape[1:]) from a seeded generator. After ``warmup`` untimed
    runs of each model (at least one, since the first run allocates; fewer, but
    at least two, if they pass about WARMUP_BUDGET_S per model), models are timed
    round-robin -- one turn of each per round, the starting model rotating each
    round -- so that drift of the machine (frequency scaling, a noisy neighbour)
    hits all models alike instead of whichever was measured last. A turn is one
    run, or for models faster than TURN_S (5 ms) an untimed run and then as many
    timed runs as fill about TURN_S. Each model
    gets the same number of timed runs: ``repeats``, capped so that one model's
    runs take about LATENCY_BUDGET_S (3 s) judged from its slowest warm-up
    estimate, but never below MIN_TIMED_RUNS (5) unless ``repeats`` is smaller,
    and raised (up to MAX_SPAN_RUNS) so that they take at least ``min_timed_s``.
    Models that take turns get ``sessions`` sessions each, used by rounds in
    rotation (``Latency.slots`` says which run came from which). ``stop``, asked
    at checkpoints once the runs span ``min_timed_s``, every slot and
    MIN_STOP_RUNS, ends the timing early when it answers True
    (``Latency.stopped`` says why timing ended).
    """
    threads = threads or runtime.default_threads()
    # Looked up at each call (not bound once): tests stand fake sessions in for ort_session.
    openers = {name: (lambda path=path: runtime.ort_session(path, threads=threads)) for name, path in paths.items()}
    return measure_sessions(openers, input_shape, batch, threads=threads, warmup=warmup, repeats=repeats,
                            seed=seed, min_timed_s=min_timed_s, sessions=sessions, stop=stop)


def measure_sessions(
    openers: Mapping[str, Callable[[], Any]],
    input_shape: tuple[int, ...],
    batch: int,
    *,
    threads: int,
    warmup: int = 10,
    repeats: int = 50,
    seed: int = 0,
    min_timed_s: float = 0.0,
    sessions: int = 1,
    stop: StopRule | None = None,
) -> dict[str, Latency]:
    """measure_latency for sessions of any runtime: ``openers`` make a session shaped like
    onnxruntime's (``get_inputs()``, ``run(None, feeds)``; modelzip.target.TargetSession), each
    already set to ``threads`` threads, so a deploy target is timed interleaved with onnxruntime."""
    _check_latency_args(batch, warmup, repeats)
    first = {name: open_session() for name, open_session in openers.items()}
    feeds = {name: _random_feed(session, input_shape, batch, seed) for name, session in first.items()}
    estimate_ns = _warm_up(first, feeds, max(warmup, 1))
    slowest_ns = max(estimate_ns.values(), default=0)
    runs, planned = _timed_runs(repeats, slowest_ns, min_timed_s)
    per_turn = _runs_per_turn(runs, min(estimate_ns.values(), default=0), len(first))
    slots = [first]
    for _ in range(sessions - 1 if per_turn > 1 else 0):
        slots.append({name: open_session() for name, open_session in openers.items()})
        _warm_up(slots[-1], feeds, max(warmup, 1))
    first_check = max(_spanning(slowest_ns, min_timed_s), MIN_STOP_RUNS, 2 * len(slots) * per_turn)
    times_ns, slot_of_run, tight = _time_round_robin(slots, feeds, runs, per_turn,
                                                     stop=stop, first_check=first_check)
    return {name: _summarise(times, batch, threads, slot_of_run, TIGHT if tight else planned)
            for name, times in times_ns.items()}


def _check_latency_args(batch: int, warmup: int, repeats: int) -> None:
    if batch < 1 or warmup < 0 or repeats < 1:
        raise ValueError(f"need batch >= 1, warmup >= 0, repeats >= 1; got {batch=}, {warmup=}, {repeats=}")


def _random_feed(
    session: onnxruntime.InferenceSession, input_shape: tuple[int, ...], batch: int, seed: int
) -> dict[str, np.ndarray]:
    import numpy as np

    # Same seed for every model: they all see exactly the same numbers.
    generator = np.random.default_rng(seed)
    model_input = session.get_inputs()[0]
    data = generator.standard_normal((batch, *input_shape[1:]), dtype=np.float32)
    if model_input.type == "tensor(float16)":
        data = data.astype(np.float16)
    return {model_input.name: data}


def _warm_up(sessions: Mapping[str, Any], feeds: Mapping[str, dict], warmup: int) -> dict[str, int]:
    """Untimed rounds; return each model's median warm run time (all but the first) as the estimate.

    Stops early, after at least two rounds, once about WARMUP_BUDGET_S per model
    is spent: ten warm-ups of a 1-second batch-256 run would teach nothing.
    """
    warm_ns: dict[str, list[int]] = {name: [] for name in sessions}
    deadline_ns = time.perf_counter_ns() + int(WARMUP_BUDGET_S * 1e9) * len(sessions)
    for round_index in range(warmup):
        for name, session in sessions.items():
            start = time.perf_counter_ns()
            session.run(None, feeds[name])
            if round_index >= 1 or warmup == 1:  # the first run allocates
                warm_ns[name].append(time.perf_counter_ns() - start)
        if round_index >= 1 and time.perf_counter_ns() > deadline_ns:
            break
    # The median, not the last run: one preempted run would otherwise set the plan.
    return {name: int(statistics.median(times)) for name, times in warm_ns.items()}


def _timed_runs(repeats: int, slowest_run_ns: int, min_timed_s: float = 0.0) -> tuple[int, str]:
    """The most timed runs per model, and what set that number (REPEATS, TIME_CAP or MIN_SPAN)."""
    affordable = math.floor(LATENCY_BUDGET_S * 1e9 / max(slowest_run_ns, 1))
    capped = min(repeats, max(MIN_TIMED_RUNS, affordable))
    spanning = _spanning(slowest_run_ns, min_timed_s)
    if spanning > capped:
        return spanning, MIN_SPAN
    return capped, REPEATS if capped == repeats else TIME_CAP


def _spanning(slowest_run_ns: int, min_timed_s: float) -> int:
    """Runs that last at least ``min_timed_s`` (at most MAX_SPAN_RUNS)."""
    return min(MAX_SPAN_RUNS, math.ceil(min_timed_s * 1e9 / max(slowest_run_ns, 1)))


def _runs_per_turn(runs: int, fastest_run_ns: int, models: int) -> int:
    """Consecutive timed runs of one model per round: enough to fill about TURN_S."""
    if models < 2:
        return 1
    return max(1, min(runs, math.ceil(TURN_S * 1e9 / max(fastest_run_ns, 1))))


def _time_round_robin(
    slots: list[Mapping[str, Any]], feeds: Mapping[str, dict], runs: int, per_turn: int = 1, *,
    stop: StopRule | None = None, first_check: int = 0,
) -> tuple[dict[str, list[int]], list[int], bool]:
    """``runs`` timed runs of each model: every round gives each model one turn of up to
    ``per_turn`` runs, the first model rotating, on the round's slot of sessions. Each turn
    waits runtime.SETTLE_S first, until the other session's idle threads stop spinning. A turn of
    several runs starts with one untimed run, which wakes the session's threads again after
    the other model's turn. After a round that brings the runs to ``first_check`` and then to
    CHECK_GROWTH times the last check, ``stop`` may end the timing. Returns the times, each
    run's slot, and whether ``stop`` ended it before ``runs``."""
    names = list(slots[0])
    times: dict[str, list[int]] = {name: [] for name in names}
    slot_of_run: list[int] = []
    check_at = max(first_check, 1)
    for round_index in range(math.ceil(runs / per_turn)):
        # Rotate who goes first so no model always runs right after the same other one.
        shift = round_index % len(names) if names else 0
        count = min(per_turn, runs - round_index * per_turn)
        sessions = slots[round_index % len(slots)]
        for name in names[shift:] + names[:shift]:
            if len(names) > 1:  # the session before has stopped spinning (runtime.SETTLE_S)
                time.sleep(runtime.SETTLE_S)
            if per_turn > 1:
                sessions[name].run(None, feeds[name])
            for _ in range(count):
                start = time.perf_counter_ns()
                sessions[name].run(None, feeds[name])
                times[name].append(time.perf_counter_ns() - start)
        slot_of_run += [round_index % len(slots)] * count
        done = len(slot_of_run)
        if stop is not None and check_at <= done < runs:
            if stop(times, slot_of_run):
                return times, slot_of_run, True
            check_at = math.ceil(done * CHECK_GROWTH)
    return times, slot_of_run, False


def _summarise(times_ns: list[int], batch: int, threads: int, slots: list[int], stopped: str) -> Latency:
    ordered = sorted(times_ns)
    return Latency(
        batch=batch,
        median_ms=statistics.median(ordered) / 1e6,
        p90_ms=_percentile(ordered, 0.9) / 1e6,
        mean_ms=statistics.fmean(ordered) / 1e6,
        runs=len(ordered),
        threads=threads,
        times_ns=tuple(times_ns),
        slots=tuple(slots),
        stopped=stopped,
    )


# The distribution a report keeps of each timing (report.html draws it as a box plot).
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def quantiles_ms(times_ns: tuple[int, ...] | list[int]) -> tuple[float, ...]:
    """The QUANTILES of ``times_ns`` in milliseconds (empty without times)."""
    ordered = sorted(times_ns)
    return tuple(_percentile(ordered, q) / 1e6 for q in QUANTILES) if ordered else ()


def _percentile(ordered: list[int], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --------------------------------------------------------------------------- verdicts

SAME_MODEL, FASTER, SLOWER, WITHIN_NOISE = "same model", "faster", "SLOWER", "within noise"
VERDICTS = (SAME_MODEL, FASTER, SLOWER, WITHIN_NOISE)
# Practical equivalence: faster/SLOWER only when the whole interval lies beyond 3%. Two byte-
# different files of one model are not timed alike. With one session per model, 40 A/A
# comparisons of the Fashion-MNIST CNN (scripts/aa_latency.py, this shared 2-core machine) gave
# intervals that excluded 1 in 7 of 40 at batch 1, up to 1.9% away (none at batch 256), and a
# 0.012 ms MLP up to 7%. Three sessions per model (SESSIONS) brought that to 1 of 80, 0.09%
# away; the margin keeps headroom for the session offsets the three slots do not average out,
# and a CNN 3.5% slower at batch 1 is still called SLOWER (0.961-0.969 with one extra Sigmoid).
EQUIVALENCE_MARGIN = 1.03
CONFIDENCE = 0.95
RESAMPLES = 2000
# Bootstrap blocks span ~10 ms of rounds: twice the ~5 ms scheduler stretches seen at batch 1.
BLOCK_S = 0.010


@dataclass(frozen=True)
class Comparison:
    """Baseline vs final latency: the speedup, its confidence interval, and what that allows saying."""

    ratio: float  # baseline median / final median: > 1 means the final model is faster
    ci_low: float
    ci_high: float
    pairs: int  # rounds the interval is resampled from (0: the same file, measured once)
    verdict: str


def latency_verdict(ci_low: float, ci_high: float, margin: float = EQUIVALENCE_MARGIN) -> str:
    """'faster'/'SLOWER' only when the whole interval of baseline/final lies beyond ``margin``."""
    if ci_low > margin:
        return FASTER
    if ci_high < 1 / margin:
        return SLOWER
    return WITHIN_NOISE


def compare_times(baseline_ns, final_ns, slots=None, *, margin: float = EQUIVALENCE_MARGIN,
                  confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0) -> Comparison:
    """Speedup (ratio of medians) with a paired block-bootstrap interval over the interleaved rounds.

    Round i timed both models back to back, so resampling whole rounds (not each
    model's runs apart) keeps that pairing. Consecutive rounds are not independent
    though: the scheduler lends the second core to one process for a few ms at a
    time, and A/A runs at batch 1 here showed stretches of ~20 rounds (~5 ms) in
    which one copy ran at two-thread speed (0.075 ms) and the other at one-thread
    speed (0.12 ms). Resampling single rounds then gave tight, wrong intervals
    (1.62x, 1.60-1.63); resampling blocks of rounds spanning BLOCK_S keeps such
    stretches together, so the interval shows them. Runs longer than BLOCK_S make
    blocks of one round: the plain paired bootstrap.

    ``slots`` (Latency.slots): which pair of sessions timed each run. Sessions of
    one model differ by a few percent (memory layout), so with several slots the
    bootstrap first draws slots, then blocks within each: the interval then
    includes that session-to-session spread.
    """
    import numpy as np

    baseline, final = np.asarray(baseline_ns, dtype=np.float64), np.asarray(final_ns, dtype=np.float64)
    if baseline.shape != final.shape or baseline.ndim != 1 or len(baseline) < 2:
        raise ValueError(f"need two equally long series of >= 2 paired runs; "
                         f"got {baseline.shape} and {final.shape}")
    slot_of_run = np.asarray(slots) if slots is not None and len(slots) else np.zeros(len(baseline), dtype=int)
    groups = [np.flatnonzero(slot_of_run == slot) for slot in np.unique(slot_of_run)]
    generator = np.random.default_rng(seed)
    drawn = [_block_resamples(baseline[g] + final[g], resamples, generator) for g in groups]
    if len(groups) == 1:
        rows = groups[0][drawn[0]]
        resampled = np.median(baseline[rows], axis=1) / np.median(final[rows], axis=1)
    else:  # one resample: as many slots, drawn with replacement, each resampled in blocks
        chosen = generator.integers(0, len(groups), size=(resamples, len(groups)))
        rows = [np.concatenate([groups[c][drawn[c][k]] for c in chosen[k]]) for k in range(resamples)]
        resampled = np.array([np.median(baseline[r]) / np.median(final[r]) for r in rows])
    tail = (1 - confidence) / 2
    low, high = (float(x) for x in np.quantile(resampled, [tail, 1 - tail]))
    return Comparison(float(np.median(baseline) / np.median(final)), low, high, len(baseline),
                      latency_verdict(low, high, margin))


def _block_resamples(round_ns, resamples: int, generator):
    """Indices into one series: ``resamples`` rows of blocks of consecutive rounds."""
    import numpy as np

    rounds = len(round_ns)
    block = _block_rounds(round_ns, rounds)
    starts = generator.integers(0, rounds - block + 1, size=(resamples, -(-rounds // block)))
    return (starts[:, :, None] + np.arange(block)).reshape(resamples, -1)[:, :rounds]


def _block_rounds(round_ns, rounds: int) -> int:
    """Consecutive rounds that span about BLOCK_S (at least 1, at most half of them)."""
    per_round_ns = max(float(round_ns.sum()) / rounds, 1.0)
    return int(min(max(1, math.ceil(BLOCK_S * 1e9 / per_round_ns)), max(1, rounds // 2)))


def same_file(a: Path, b: Path) -> bool:
    """Byte-identical files: the sizes first (cheap), then sha256 of the contents."""
    a, b = Path(a), Path(b)
    if a.stat().st_size != b.stat().st_size:
        return False
    return a.samefile(b) or file_sha256(a) == file_sha256(b)


def compare_latency(baseline: Path, final: Path, input_shape: tuple[int, ...], batch: int, *,
                    threads: int | None = None, warmup: int = 10, repeats: int = 50, seed: int = 0,
                    min_timed_s: float = MIN_TIMED_S, tolerance: float = 0.0) -> tuple[Latency, Latency, Comparison]:
    """Measure both models interleaved (arguments as measure_latency) and compare them.

    A final file byte-identical to the baseline is measured once and called the
    same model: timing one file twice would only measure the machine's noise.
    ``tolerance`` > 0: stop before ``repeats`` runs once the speedup's 95% interval
    is within ``tolerance`` of the ratio on either side (interval_within); 0: never.
    Inside ``timed_once()``, a pair measured before with the same settings is not
    measured again.
    """
    threads = threads or runtime.default_threads()
    settings = {"threads": threads, "warmup": warmup, "repeats": repeats, "seed": seed}
    memo, key = _TIMED.get(), None
    if memo is not None:
        key = (file_sha256(baseline), file_sha256(final), tuple(input_shape), batch, min_timed_s, tolerance,
               *settings.values())
        if key in memo:
            return memo[key]
    if same_file(baseline, final):
        measured = measure_latency({"final": final}, input_shape, batch, **settings)["final"]
        result = measured, measured, Comparison(1.0, 1.0, 1.0, 0, SAME_MODEL)
    else:
        stop = None if tolerance <= 0 else (
            lambda times, slots: interval_within(times["baseline"], times["final"], slots, tolerance, seed=seed))
        measured = measure_latency({"baseline": baseline, "final": final}, input_shape, batch,
                                   min_timed_s=min_timed_s, sessions=SESSIONS, stop=stop, **settings)
        base, fin = measured["baseline"], measured["final"]
        result = base, fin, compare_times(base.times_ns, fin.times_ns, base.slots, seed=seed)
    if memo is not None:
        memo[key] = result
    return result


def compare_sessions(baseline: Callable[[], Any], final: Callable[[], Any], input_shape: tuple[int, ...],
                     batch: int, *, threads: int, warmup: int = 10, repeats: int = 50, seed: int = 0,
                     min_timed_s: float = MIN_TIMED_S, tolerance: float = 0.0) -> tuple[Latency, Latency, Comparison]:
    """compare_latency for two session openers (measure_sessions), e.g. onnxruntime against a
    deploy target's runtime: interleaved, SESSIONS slots, the same early stop and interval."""
    stop = None if tolerance <= 0 else (
        lambda times, slots: interval_within(times["baseline"], times["final"], slots, tolerance, seed=seed))
    measured = measure_sessions({"baseline": baseline, "final": final}, input_shape, batch, threads=threads,
                                warmup=warmup, repeats=repeats, seed=seed, min_timed_s=min_timed_s,
                                sessions=SESSIONS, stop=stop)
    base, fin = measured["baseline"], measured["final"]
    return base, fin, compare_times(base.times_ns, fin.times_ns, base.slots, seed=seed)


def interval_within(baseline_ns: Sequence[int], final_ns: Sequence[int], slots: Sequence[int],
                    tolerance: float, *, seed: int = 0) -> bool:
    """The speedup's 95% interval (compare_times, CHECK_RESAMPLES resamples) is at most
    ``tolerance`` x the ratio wide on either side: (ci_high - ci_low) / 2 <= tolerance * ratio."""
    comparison = compare_times(baseline_ns, final_ns, slots, resamples=CHECK_RESAMPLES, seed=seed)
    return (comparison.ci_high - comparison.ci_low) / 2 <= tolerance * comparison.ratio


# Pairs compare_latency measured inside timed_once(): (file digests, settings) -> its result.
_TIMED: ContextVar[dict[tuple, tuple[Latency, Latency, Comparison]] | None] = ContextVar("timed", default=None)


@contextmanager
def timed_once() -> Iterator[None]:
    """Within this block compare_latency times each pair of files once per settings: a second call
    on byte-identical files returns the first result. The pipeline runs a recipe inside one, so
    the int8-vs-float timing of a quantize step whose files the final model and the baseline
    export are (a quantize-only recipe) is not repeated for the final latency."""
    token = _TIMED.set({})
    try:
        yield
    finally:
        _TIMED.reset(token)
