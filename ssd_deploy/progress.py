"""Progress on long work: rich spinners and bars on stderr when it is a terminal, nothing otherwise (a pipe, a
log file, ``--json``). The one display every long step uses: export, validate, bench, plugins build and the
TensorRT build's phases (tensorrt/progress.py)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


def display(console: Console | None = None) -> Progress:
    """A transient rich display (spinner, text, bar, count, elapsed): gone when the work ends, so results stay."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console or Console(stderr=True), transient=True)


class Reporter:
    """Where long work says what it is doing. ``enabled=None``: only when the console (stderr) is a terminal."""

    def __init__(self, enabled: bool | None = None, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.enabled = self.console.is_terminal if enabled is None else enabled
        self._progress: Progress | None = None
        self._depth = 0

    @contextlib.contextmanager
    def _display(self) -> Iterator[Progress]:
        if self._progress is None:  # one live display at a time (rich's rule): nested work shares it
            self._progress = display(self.console)
            self._progress.start()
        self._depth += 1
        try:
            yield self._progress
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._progress.stop()
                self._progress = None

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[Callable[[str], None]]:
        """A phase without a count (a spinner); yields a function that replaces its text (e.g. a tool's last line)."""
        if not self.enabled:
            yield lambda _text: None
            return
        with self._display() as p:
            task = p.add_task(text, total=None)
            try:
                yield lambda new: p.update(task, description=f"{text}: {new}")
            finally:
                p.remove_task(task)

    @contextlib.contextmanager
    def bar(self, text: str, total: int) -> Iterator[Callable[..., None]]:
        """Counted work; yields ``advance(description=None, by=1)``: ``advance(description, 0)`` announces the next
        item before it starts, ``advance()`` counts one done."""
        if not self.enabled:
            yield lambda description=None, by=1: None
            return
        with self._display() as p:
            task = p.add_task(text, total=total)

            def advance(description: str | None = None, by: int = 1):
                p.update(task, advance=by, **({"description": f"{text}: {description}"} if description else {}))

            try:
                yield advance
            finally:
                p.remove_task(task)


QUIET = Reporter(enabled=False, console=Console(stderr=True, quiet=True))


def for_command(as_json: bool = False) -> Reporter:
    """The CLI's reporter: on a terminal, unless the command prints JSON."""
    return QUIET if as_json else Reporter()
