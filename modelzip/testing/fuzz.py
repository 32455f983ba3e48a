"""Recipe fuzzer: mutated recipes through `modelzip validate`; a crash or a hang is a bug.

From a fixed seed it mutates (modelzip/testing/mutations.py) the shipped recipes (recipes/**/*.yaml) and a few
synthetic ones: keys deleted, duplicated or misspelled; values replaced by edge
values (inf, nan, 1e30, huge ints and strings, unicode, null, nested data); deep
nesting, anchors and aliases, alias bombs, recursive aliases, complex keys, bytes
that are not UTF-8, bit flips and truncations; plus odd `--set` overrides. Every
case must end in exit 0 (valid) or exit 2 (rejected, each problem naming a key
path or a line), with no traceback, within a time limit.

    python -m modelzip.testing.fuzz --count 3000 --seed 1    # `make fuzz`

tests/test_fuzz.py runs 1,000 cases per CI run. Most cases call ``load_recipe`` and
the CLI's error printer directly (fast); every ``cli_every``-th goes through the
whole CLI (typer's CliRunner). No torch: validation never imports it.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelzip.testing.mutations import Case, generate

__all__ = ["Case", "Outcome", "Runner", "Summary", "generate", "main", "run_fuzz"]


@dataclass
class Outcome:
    kind: str  # accepted | rejected | crashed | hung
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Summary:
    counts: Counter = field(default_factory=Counter)
    failures: list[tuple[Case, Outcome]] = field(default_factory=list)
    seconds: float = 0.0
    slowest: float = 0.0

    def line(self) -> str:
        c = self.counts
        return (f"{sum(c.values())} cases: {c['accepted']} accepted, {c['rejected']} rejected, "
                f"{c['crashed']} crashed, {c['hung']} hung in {self.seconds:.1f}s "
                f"(slowest case {self.slowest:.2f}s)")


class _Hung(BaseException):
    """Raised by the alarm: not an Exception, so `except Exception` in the code under test
    cannot swallow it (the CLI's own catch-all can: see ``Runner._hit``)."""


class Runner:
    def __init__(self, workdir: Path, time_limit: float) -> None:
        from typer.testing import CliRunner

        self.workdir, self.time_limit = workdir, time_limit
        self.cli = CliRunner()
        self._alarm = hasattr(signal, "setitimer") and _main_thread()
        self._hit = False

    def check(self, case: Case, *, via_cli: bool) -> Outcome:
        path = self.workdir / f"case{case.index}.yaml"
        path.write_bytes(case.data)
        start = time.perf_counter()
        self._hit = False
        previous = signal.signal(signal.SIGALRM, self._on_alarm) if self._alarm else None
        if self._alarm:
            signal.setitimer(signal.ITIMER_REAL, self.time_limit)
        try:
            outcome = self._cli(path, case) if via_cli else self._direct(path, case)
        except _Hung:
            outcome = Outcome("hung", f"over {self.time_limit}s")
        finally:
            if self._alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
            path.unlink(missing_ok=True)
        outcome.seconds = time.perf_counter() - start
        if self._hit or outcome.seconds > self.time_limit:
            detail = f"took {outcome.seconds:.1f}s (limit {self.time_limit}s)"
            outcome = Outcome("hung", detail, outcome.seconds)
        return outcome

    def _on_alarm(self, signum, frame) -> None:
        self._hit = True
        raise _Hung()

    def _direct(self, path: Path, case: Case) -> Outcome:
        """load_recipe, then the CLI's error printer on what it raised."""
        from modelzip import cli
        from modelzip.errors import ModelzipError, RecipeError
        from modelzip.recipe import load_recipe

        try:
            load_recipe(path, case.overrides)
            return Outcome("accepted")
        except _Hung:
            raise
        except BaseException as exc:
            if not isinstance(exc, ModelzipError):
                return Outcome("crashed", f"{type(exc).__name__}: {exc}"[:500])
            error = exc
        if isinstance(error, RecipeError):
            unplaced = [p for p in error.problems if not p.path and p.line is None]
            if unplaced:
                return Outcome("crashed", f"a problem names no key path or line: {unplaced[0]}")
        try:
            with contextlib.redirect_stderr(io.StringIO()) as err:
                code = cli._fail(error).exit_code
        except _Hung:
            raise
        except BaseException as exc:
            return Outcome("crashed", f"printing the error: {type(exc).__name__}: {exc}"[:500])
        return self._judge(code, err.getvalue())

    def _cli(self, path: Path, case: Case) -> Outcome:
        from modelzip.cli import app

        args = ["validate", str(path)] + [a for o in case.overrides for a in ("--set", o)]
        result = self.cli.invoke(app, args)
        if self._hit:
            raise _Hung()
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            return Outcome("crashed", f"{type(result.exception).__name__}: {result.exception}"[:500])
        return self._judge(result.exit_code, result.output)

    @staticmethod
    def _judge(code: int, output: str) -> Outcome:
        if "Traceback" in output or "internal error" in output:
            return Outcome("crashed", output[-500:])
        if code == 0:
            return Outcome("accepted")
        if code != 2:
            return Outcome("crashed", f"exit {code}: {output[-500:]}")
        if not _names_location(output):
            return Outcome("crashed", f"exit 2 without a key path or line: {output[-500:]}")
        return Outcome("rejected")


def _names_location(output: str) -> bool:
    """Every listed problem names a key path, a line, or comes from --set."""
    items = [line[4:] for line in output.splitlines()
             if line.startswith("  - ") and not line.startswith("  - ...")]
    return bool(items) and all("(line " in item or "(from --set)" in item or not item.startswith("<recipe>")
                               for item in items)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run_fuzz(count: int, seed: int, *, cli_every: int = 10, time_limit: float = 10.0,
             on_case: Callable[[Case, Outcome], None] | None = None) -> Summary:
    """Check ``count`` generated cases; every ``cli_every``-th goes through the whole CLI."""
    summary = Summary()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="modelzip-fuzz-") as tmp:
        runner = Runner(Path(tmp), time_limit)
        for case in generate(count, seed):
            outcome = runner.check(case, via_cli=cli_every > 0 and case.index % cli_every == 0)
            summary.counts[outcome.kind] += 1
            summary.slowest = max(summary.slowest, outcome.seconds)
            if outcome.kind in ("crashed", "hung"):
                summary.failures.append((case, outcome))
            if on_case:
                on_case(case, outcome)
    summary.seconds = time.perf_counter() - start
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelzip.testing.fuzz",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cli-every", type=int, default=10, help="every Nth case through the whole CLI")
    parser.add_argument("--time-limit", type=float, default=10.0,
                        help="seconds per case before it counts as hung")
    parser.add_argument("--memory-limit-gb", type=float, default=4.0,
                        help="address-space limit: a memory blow-up is a MemoryError, not a frozen machine")
    parser.add_argument("--save", type=Path, help="write each crashing or hanging case here")
    args = parser.parse_args(argv)
    _limit_memory(args.memory_limit_gb)
    summary = run_fuzz(args.count, args.seed, cli_every=args.cli_every, time_limit=args.time_limit)
    for case, outcome in summary.failures:
        print(f"case {case.index} [{', '.join(case.mutations)}]: {outcome.kind}: {outcome.detail}")
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            (args.save / f"case{case.index}.yaml").write_bytes(case.data)
            (args.save / f"case{case.index}.set").write_text("\n".join(case.overrides))
    print(summary.line())
    return 1 if summary.failures else 0


def _limit_memory(gigabytes: float) -> None:
    try:
        import resource

        limit = int(gigabytes * (1 << 30))
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or limit < hard:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):  # not on this platform: run without it
        pass


if __name__ == "__main__":
    sys.exit(main())
