"""Latency early stop (compare_latency's tolerance) and the run-scoped reuse of timed pairs, on fake
sessions and a fake clock: deterministic and instant, no timing of this machine."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from modelzip.evaluation import latency, runtime
from modelzip.evaluation.latency import MIN_SPAN, REPEATS, TIGHT, TIME_CAP, compare_latency, timed_once

MS = 1_000_000  # ns


class FakeClock:
    """perf_counter_ns that only moves when a fake session runs."""

    def __init__(self) -> None:
        self.now = 0

    def perf_counter_ns(self) -> int:
        return self.now

    def sleep(self, seconds: float) -> None:  # the wait before each turn (runtime.SETTLE_S)
        self.now += int(seconds * 1e9)


class FakeSession:
    """An ORT session whose run takes ``ms`` on the fake clock, times lognormal noise of ``spread``."""

    def __init__(self, clock: FakeClock, ms: float, spread: float, seed: int, opened: list) -> None:
        self.clock, self.ms, self.spread = clock, ms, spread
        self.noise = np.random.default_rng(seed)
        self.runs = 0
        opened.append(self)

    def get_inputs(self) -> list:
        return [SimpleNamespace(name="input", type="tensor(float)")]

    def run(self, _outputs, feed):
        self.runs += 1
        self.clock.now += int(self.ms * MS * self.noise.lognormal(0.0, self.spread))
        return [feed["input"]]


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """``fake(baseline_ms, final_ms, spread)`` -> (baseline path, final path, sessions opened): the
    files exist (compare_latency checks whether they are the same bytes); their sessions are fakes."""
    clock = FakeClock()
    monkeypatch.setattr(latency, "time", clock)
    opened: list[FakeSession] = []

    def make(baseline_ms: float, final_ms: float, spread: float = 0.005):
        paths = {"baseline": tmp_path / "baseline.onnx", "final": tmp_path / "final.onnx"}
        for name, path in paths.items():
            path.write_bytes(name.encode())
        speed = {str(paths["baseline"]): baseline_ms, str(paths["final"]): final_ms}
        monkeypatch.setattr(runtime, "ort_session", lambda path, threads: FakeSession(
            clock, speed[str(path)], spread, len(opened), opened))
        return paths["baseline"], paths["final"], opened

    return make


def _compare(baseline: Path, final: Path, *, repeats: int = 200, tolerance: float = 0.02, **kwargs):
    return compare_latency(baseline, final, (1, 1, 8, 8), 4, threads=1, warmup=2, repeats=repeats,
                           tolerance=tolerance, **kwargs)


def test_a_steady_pair_stops_once_the_interval_is_tight(fake) -> None:
    # 8 ms vs 4 ms with 0.5% noise: the interval is far inside +-2% at the first check.
    base, fin, comparison = _compare(*fake(8, 4)[:2])
    assert base.stopped == fin.stopped == TIGHT
    assert base.runs == fin.runs == comparison.pairs == latency.MIN_STOP_RUNS  # the floor, not 200
    assert comparison.ratio == pytest.approx(2.0, rel=0.01) and comparison.verdict == "faster"
    assert (comparison.ci_high - comparison.ci_low) / 2 <= 0.02 * comparison.ratio


def test_a_noisy_pair_makes_every_planned_run(fake) -> None:
    # 30% noise: +-2% is out of reach within 200 runs.
    base, fin, comparison = _compare(*fake(8, 4, spread=0.3)[:2])
    assert base.stopped == fin.stopped == REPEATS and comparison.pairs == base.runs == 200


def test_tolerance_zero_never_stops_early(fake, monkeypatch) -> None:
    asked = []
    monkeypatch.setattr(latency, "interval_within", lambda *a, **k: asked.append(a) or True)
    base, _, _ = _compare(*fake(8, 4)[:2], tolerance=0.0)
    assert base.runs == 200 and base.stopped == REPEATS and asked == []


def test_the_interval_is_checked_only_past_the_floor_and_then_at_growing_intervals(fake, monkeypatch) -> None:
    """The A/A protections hold before any stop: MIN_TIMED_S of timing, every slot of sessions used
    twice, MIN_STOP_RUNS runs; afterwards checks come each time the runs grow by CHECK_GROWTH."""
    checked_at = []

    def never(baseline_ns, final_ns, slots, tolerance, *, seed=0):
        checked_at.append((len(baseline_ns), len(set(slots))))
        return False

    monkeypatch.setattr(latency, "interval_within", never)
    # 1 ms runs: turns of 5 runs (TURN_S), three slots of sessions; 0.1 s spans 100 runs.
    base, _, _ = _compare(*fake(1, 1)[:2], repeats=1000, min_timed_s=0.1)
    assert base.runs == 1000 and base.stopped == REPEATS
    first, slots_seen = checked_at[0]
    assert first >= max(100, latency.MIN_STOP_RUNS, 2 * latency.SESSIONS * 5) and slots_seen == latency.SESSIONS
    for (previous, _), (current, _) in zip(checked_at, checked_at[1:]):
        assert current >= previous * latency.CHECK_GROWTH
    assert len(checked_at) <= 12  # a handful of bootstraps, not one per round


def test_fast_models_keep_their_minimum_span(fake) -> None:
    """0.05 ms runs: 0.1 s needs about 2,000 runs, more than `repeats`: all are made, no early stop."""
    base, _, comparison = _compare(*fake(0.05, 0.05)[:2], min_timed_s=latency.MIN_TIMED_S)
    assert base.runs == comparison.pairs > 1900 and base.stopped == MIN_SPAN
    assert sum(base.times_ns) >= 0.95 * latency.MIN_TIMED_S * 1e9


def test_slow_noisy_models_stop_at_the_time_cap(fake) -> None:
    base, _, _ = _compare(*fake(200, 100, spread=0.3)[:2])  # 3 s / 200 ms = 15 runs
    assert base.runs == 15 and base.stopped == TIME_CAP


def test_a_pair_is_timed_once_per_run_and_settings(fake) -> None:
    baseline, final, opened = fake(8, 4)
    with timed_once():
        first = _compare(baseline, final)
        sessions = len(opened)
        again = _compare(baseline, final)  # e.g. the final latency after quantize timed the same files
        assert again is first and len(opened) == sessions
        other = _compare(baseline, final, repeats=100)  # other settings: measured
        assert other is not first and len(opened) == 2 * sessions
    outside = _compare(baseline, final)  # the reuse ends with the block
    assert outside is not first and len(opened) == 3 * sessions
