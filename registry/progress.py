"""Progress of blob transfers: rich bars on a terminal, one line per event otherwise.

Pull, push and copy report through a :class:`ProgressSink`; the CLI picks the sink
(``--progress auto|tty|plain|quiet``). rich is imported only when a bar is drawn, so
commands that never transfer anything do not pay for it. Sinks are called from worker
threads and lock internally.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

Advance = Callable[[int], None]


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


class ProgressSink:
    """Base sink: ignores everything (``-q``)."""

    def task(self, key: str, label: str, total: int | None) -> Advance:
        """Register a transfer; returns the function to call with byte deltas."""
        return _ignore

    def finish(self, key: str, status: str) -> None:
        """A transfer ended: ``downloaded``, ``uploaded``, ``copied``, ``exists``,
        ``mounted`` or ``failed``."""

    def note(self, text: str) -> None:
        """A one-line event that is not a blob (resolved digest, manifest pushed)."""

    def close(self) -> None:
        """Stop drawing; called once at the end."""


def _ignore(_: int) -> None:
    return None


class PlainProgress(ProgressSink):
    """One line per event on a stream (CI logs, pipes)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._tasks: dict[str, tuple[str, int | None, list[float]]] = {}

    def _line(self, text: str) -> None:
        with self._lock:
            print(text, file=self.stream, flush=True)

    def task(self, key: str, label: str, total: int | None) -> Advance:
        # [bytes so far, monotonic time of the first byte (0: none yet)]
        state: list[float] = [0, 0.0]
        self._tasks[key] = (label, total, state)

        def advance(n: int) -> None:
            if not state[1]:
                state[1] = time.monotonic()
            state[0] += n

        return advance

    def finish(self, key: str, status: str) -> None:
        label, total, state = self._tasks.pop(key, (key, None, [0, 0.0]))
        moved, first = state
        size = total if total is not None else int(moved)
        rate = ""
        if status in ("downloaded", "uploaded", "copied") and moved and first:
            elapsed = max(time.monotonic() - first, 1e-3)
            rate = f" in {elapsed:.1f}s ({_human(moved / elapsed)}/s)"
        self._line(f"{label}: {status} {_human(size)}{rate}")

    def note(self, text: str) -> None:
        self._line(text)


class RichProgress(ProgressSink):
    """A rich progress bar per blob: bytes, speed and ETA."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            transient=False,
        )
        self._progress.start()
        self._ids: dict[str, Any] = {}
        self._lock = threading.Lock()

    def task(self, key: str, label: str, total: int | None) -> Advance:
        with self._lock:
            task_id = self._progress.add_task(label, total=total)
            self._ids[key] = task_id

        def advance(n: int) -> None:
            self._progress.advance(task_id, n)

        return advance

    def finish(self, key: str, status: str) -> None:
        with self._lock:
            task_id = self._ids.pop(key, None)
        if task_id is None:
            return
        task = self._progress.tasks[task_id] if task_id < len(self._progress.tasks) else None
        label = task.description if task else key
        total = task.total if task else None
        self._progress.update(
            task_id, description=f"{label} [dim]{status}[/]", completed=total or 0
        )

    def note(self, text: str) -> None:
        self._progress.console.print(text, highlight=False)

    def close(self) -> None:
        self._progress.stop()


def make_progress(mode: str = "auto", stream: TextIO | None = None) -> ProgressSink:
    """``auto`` (bars when stderr is a terminal), ``tty``, ``plain`` or ``quiet``."""
    out = stream or sys.stderr
    if mode == "quiet":
        return ProgressSink()
    if mode == "tty" or (mode == "auto" and out.isatty()):
        return RichProgress()
    return PlainProgress(out)
