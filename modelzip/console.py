"""Progress and messages. The pipeline talks to a ``UI``; the CLI picks one.

``RichUI`` draws progress bars on a terminal and prints one line per finished
task elsewhere (CI logs stay readable); ``SilentUI`` is for library use/tests.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

Advance = Callable[[int], None]


class UI(Protocol):
    def log(self, message: str) -> None: ...

    def track(self, total: int, description: str) -> AbstractContextManager[Advance]: ...


class SilentUI:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def log(self, message: str) -> None:
        self.messages.append(message)

    @contextmanager
    def track(self, total: int, description: str) -> Iterator[Advance]:
        yield lambda n=1: None


class RichUI:
    """Rich progress bars on a TTY; a one-line summary per task otherwise."""

    def __init__(self, console=None, *, quiet: bool = False) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.quiet = quiet

    def log(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, highlight=False)

    @contextmanager
    def track(self, total: int, description: str) -> Iterator[Advance]:
        if self.quiet:
            yield lambda n=1: None
            return
        start = time.perf_counter()
        if not self.console.is_terminal:
            yield lambda n=1: None
            self.console.print(f"  {description}: done in {time.perf_counter() - start:.1f}s",
                               highlight=False)
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task(description, total=total)
            yield lambda n=1: progress.advance(task, n)
        self.console.print(f"  {description}: done in {time.perf_counter() - start:.1f}s",
                           highlight=False)
