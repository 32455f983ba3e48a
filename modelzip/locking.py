"""One run at a time per output folder and per step cache.

An exclusive ``flock`` on a lock file: the kernel releases it when the holder
exits, however it exits (even SIGKILL), so a stale lock never blocks a rerun.
A second run is refused with the holder's pid (exit 2), or waits for it with
``--wait``.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from modelzip.errors import InputError

LOCK_FILE = ".modelzip.lock"


@contextmanager
def hold(directory: Path, *, what: str, wait: bool, log: Callable[[str], None]) -> Iterator[None]:
    """Hold the lock of ``directory`` (created if needed) for the duration of the block."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            if not wait:
                raise InputError(
                    f"another modelzip run is using this {what}", where=str(directory),
                    got=f"locked by {holder}", expected="one run per output folder and step cache",
                    fix="wait for it to finish, pass --wait to queue behind it, or choose another --out",
                ) from None
            log(f"waiting for the run using {directory} ({holder}) to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def hold_all(directories: list[tuple[Path, str]], *, wait: bool, log: Callable[[str], None]) -> Iterator[None]:
    """Hold several locks, always taken in the given order (so two runs cannot deadlock)."""
    with ExitStack() as stack:
        seen: set[Path] = set()
        for directory, what in directories:
            resolved = directory.resolve()
            if resolved not in seen:
                seen.add(resolved)
                stack.enter_context(hold(directory, what=what, wait=wait, log=log))
        yield


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"
