"""One hierarchy of errors; the CLI alone maps each class to an exit code.

Every error carries data (what / where / got / expected / fix) so tests can
assert on fields and the CLI can print one actionable message, never a
traceback, for a mistake of the user's.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelzip.evaluation.records import GateResult

SHOW_CHARS = 80  # longest echo of a user's value in a message
SHOW_PROBLEMS = 50  # problems listed in a RecipeError's message (all are in .problems)


def clip_repr(value: object, limit: int = SHOW_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters: a 5,000-character value must not flood
    the terminal. Quoted and escaped, so control characters in it are shown, not acted on."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."

# Documented in README.md ("Exit codes"); tests/test_cli_exit_codes.py pins them.
EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_INVALID_INPUT = 2
EXIT_RUN_FAILED = 3
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + 2
EXIT_TERMINATED = 143  # SIGTERM (what CI runners send on cancel): 128 + 15


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so it unwinds exactly like Ctrl-C does
    (temporary files removed, locks released, finished steps kept)."""


class ModelzipError(Exception):
    """Base class. Subclasses set ``exit_code``."""

    exit_code = EXIT_RUN_FAILED

    def __init__(
        self,
        what: str,
        *,
        where: str | None = None,
        got: object = None,
        expected: object = None,
        fix: str | None = None,
    ) -> None:
        self.what = what
        self.where = where
        self.got = got
        self.expected = expected
        self.fix = fix
        super().__init__(self.format())

    def format(self) -> str:
        lines = [self.what if self.where is None else f"{self.where}: {self.what}"]
        if self.got is not None:
            lines.append(f"  got:      {self.got}")
        if self.expected is not None:
            lines.append(f"  expected: {self.expected}")
        if self.fix:
            lines.append(f"  fix:      {self.fix}")
        return "\n".join(lines)


@dataclass(frozen=True)
class RecipeProblem:
    """One mistake in a recipe, located by key path and YAML line."""

    path: str  # e.g. "passes[0].export.opset"
    line: int | None  # 1-based; None when the key is absent from the file
    message: str
    suggestion: str | None = None
    source: str = "recipe"  # "recipe", "--set" or "--grid"

    def format(self) -> str:
        where = self.path or "<recipe>"
        if self.source in ("--set", "--grid"):
            where += f" (from {self.source})"
        elif self.line is not None:
            where += f" (line {self.line})"
        text = f"{where}: {self.message}"
        if self.suggestion:
            text += f"; {self.suggestion}"
        return text


class RecipeError(ModelzipError):
    """The recipe (or a --set override) is invalid. Carries every problem found."""

    exit_code = EXIT_INVALID_INPUT

    def __init__(self, problems: list[RecipeProblem], *, file: str | None = None) -> None:
        self.problems = list(problems)
        self.file = file
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in recipe"
        shown = [f"  - {p.format()}" for p in self.problems[:SHOW_PROBLEMS]]
        if count > SHOW_PROBLEMS:
            shown.append(f"  - ... and {count - SHOW_PROBLEMS} more (fix these first)")
        body = "\n".join(shown)
        super().__init__(
            f"{head}:\n{body}",
            where=file,
            fix="edit the recipe; `modelzip explain PASS` lists a pass's parameters",
        )


class InputError(ModelzipError):
    """A file, model, checkpoint or dataset the recipe names is missing or does not fit."""

    exit_code = EXIT_INVALID_INPUT


class UnknownPluginError(InputError):
    """No plugin of this name is registered (``EntryPointRegistry.get``). ``suggestion`` is the
    closest registered name or None; ``available`` lists them all."""

    plugin_kind = "plugin"  # the words each kind of plugin is named with in the message
    nothing = "(none installed)"
    listing = ""  # how the user sees what is installed

    def __init__(self, name: str, *, available: list[str], suggestion: str | None = None) -> None:
        self.name = name
        self.available = list(available)
        self.suggestion = suggestion
        hint = f"did you mean {suggestion!r}? " if suggestion else ""
        super().__init__(f"unknown {self.plugin_kind} {clip_repr(name)}",
                         expected=", ".join(self.available) or self.nothing, fix=hint + self.listing)


class UnknownPassError(UnknownPluginError):
    """No pass of this name is registered (``PassRegistry.get``)."""

    plugin_kind = "pass"
    nothing = "(no passes installed)"
    listing = ("`modelzip passes` lists the installed passes; a third-party pass needs its package installed "
               "(or `PassRegistry.register` in-process)")


class UnknownTargetError(UnknownPluginError):
    """No deploy target of this name is registered (``TargetRegistry.get``)."""

    plugin_kind = "deploy target"
    listing = "`modelzip targets` lists the installed targets"


_WRITABLE = "choose a directory you can write (`output` in the recipe, or --out)"
# errno -> (what went wrong, how to fix it). These are the machine's or the user's
# paths, never a bug in modelzip; anything else stays an internal error.
_OS_ERRORS: dict[int, tuple[str, str]] = {
    errno.EACCES: ("permission denied", f"{_WRITABLE}, or change the path's permissions"),
    errno.EPERM: ("operation not permitted", f"{_WRITABLE}, or change the path's permissions"),
    errno.EROFS: ("the file system is read-only", _WRITABLE),
    errno.ENOSPC: ("no space left on the device",
                   "free disk space, or choose --out (and `cache_dir`) on another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota, or choose --out on another disk"),
    errno.ENAMETOOLONG: ("the path is too long", "choose a shorter path"),
    errno.ENOTDIR: ("a part of the path is a file, not a directory",
                    "remove that file, or choose another path"),
    errno.EEXIST: ("a file is in the way (a directory was expected)",
                   "remove the file, or choose another path (`output` and --out name a directory)"),
    errno.EISDIR: ("the path is a directory (a file was expected)",
                   "remove the directory, or choose another path"),
}


def input_error_from_os(exc: BaseException, *, where: str | None = None) -> InputError | None:
    """The InputError for a file-system error that is the user's to fix, else None.

    Permissions, a read-only or full disk, a quota, a too-long path, or a file
    where a directory belongs (and the reverse). ``where`` defaults to the path
    the error names. Anything but such an OSError gives None.
    """
    known = _OS_ERRORS.get(exc.errno) if isinstance(exc, OSError) else None
    if known is None:
        return None
    what, fix = known
    path = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    return InputError(what, where=where or (None if path is None else str(path)),
                      got=f"{type(exc).__name__}: [Errno {exc.errno}] {exc.strerror}", fix=fix)


class PluginError(ModelzipError):
    """A pass plugin is malformed (bad name, bad config class, duplicate, import failure)."""

    exit_code = EXIT_INVALID_INPUT

    def __init__(self, what: str, *, plugin: str, **kwargs: object) -> None:
        self.plugin = plugin
        super().__init__(what, where=f"plugin {plugin!r}", **kwargs)  # type: ignore[arg-type]


class MachineryFailure(Exception):
    """Base of the machinery packages' own errors (PruneFailure, FinetuneFailure, ...).

    Machinery knows no pass, step or recipe key, so it says what/got/expected/fix and the
    pass file turns it into a PassError (``PassError(exc.what, pass_name=..., **exc.fields())``).
    """

    def __init__(self, what: str, *, got: object = None, expected: object = None,
                 fix: str | None = None) -> None:
        self.what, self.got, self.expected, self.fix = what, got, expected, fix
        super().__init__(what)

    def fields(self) -> dict[str, object]:
        return {"got": self.got, "expected": self.expected, "fix": self.fix}


class PassError(ModelzipError):
    """A pass failed at run time."""

    exit_code = EXIT_RUN_FAILED

    def __init__(self, what: str, *, pass_name: str, step: int | None = None, **kwargs: object) -> None:
        self.pass_name = pass_name
        self.step = step
        where = f"passes[{step}].{pass_name}" if step is not None else pass_name
        super().__init__(what, where=where, **kwargs)  # type: ignore[arg-type]


class GateFailure(ModelzipError):
    """The run finished and wrote its report, but one or more gates failed."""

    exit_code = EXIT_GATE_FAILED

    def __init__(self, failures: list[GateResult]) -> None:  # GateResult: modelzip.evaluation.records
        self.failures = list(failures)
        lines = "\n".join(f"  - {g.format()}" for g in self.failures)
        super().__init__(
            f"{len(self.failures)} gate(s) failed:\n{lines}",
            fix="relax the gate in `gates:` or change the passes (see report.md)",
        )


class RegressionFailure(ModelzipError):
    """`modelzip compare --fail-on`: a run regressed past a threshold against the baseline run.

    ``failures`` are the failed ``modelzip.compare.Check``s (each names the run, the key, got and
    the limit); the tables were printed before this is raised.
    """

    exit_code = EXIT_GATE_FAILED

    def __init__(self, failures: list) -> None:
        self.failures = list(failures)
        lines = "\n".join(f"  - {c.format()}" for c in self.failures)
        super().__init__(
            f"{len(self.failures)} regression(s) against the baseline run:\n{lines}",
            fix="improve the run, or loosen --fail-on if the trade-off is intended",
        )


class TargetError(MachineryFailure):
    """A deploy target could not convert or run the model. ``nodes`` lists the (node name, op
    type) pairs the converter's message names, when it names any."""

    def __init__(self, what: str, *, nodes: tuple[tuple[str, str], ...] = (), **kwargs: object) -> None:
        self.nodes = tuple(nodes)
        super().__init__(what, **kwargs)  # type: ignore[arg-type]


class DeployFailure(ModelzipError):
    """The run finished and wrote its report, but a deploy target failed: its conversion, or
    its parity with the ONNX it was converted from. ``failures``: modelzip.deploy's records."""

    exit_code = EXIT_RUN_FAILED

    def __init__(self, failures: list) -> None:
        self.failures = list(failures)
        lines = "\n".join(f"  - {f.problem()}" for f in self.failures)
        super().__init__(
            f"{len(self.failures)} deploy target(s) failed (the others are in the report):\n{lines}",
            fix="see report.md's deploy table; lower a parity bar in the recipe (max_abs_diff / min_agreement) "
                "only if the difference is acceptable",
        )
