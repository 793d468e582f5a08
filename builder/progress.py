"""Build events and their displays: plain lines (CI, pipes), a rich live view (terminals), quiet.

The executor reports four things: a step started, a step wrote output, a step ended
(cached or with its duration), and free-form messages (warnings, the final summary).
Stages run concurrently, so every line carries its stage label. Plain mode prints every
output line as it arrives, never truncated: a CI log is the only record of a failed step.
The rich view (imported only when used) shows one line per active step with its latest
output line, and prints finished steps above it.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO


@dataclass
class StepEvent:
    """One step as the displays see it: stage label, position, instruction text."""

    stage: str
    number: int
    total: int
    text: str
    started: float = field(default_factory=time.monotonic)

    @property
    def title(self) -> str:
        return f"[{self.stage}] STEP {self.number}/{self.total}: {self.text}"


class Progress:
    """The display interface (this base class shows nothing: ``--progress quiet``)."""

    def step_started(self, step: StepEvent) -> None:
        pass

    def step_output(self, step: StepEvent, data: bytes) -> None:
        pass

    def step_finished(self, step: StepEvent, *, cached: bool, error: str | None = None) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def result(self, text: str) -> None:
        """The final line (digest, tags, time); quiet mode prints only the image ID itself."""

    def close(self) -> None:
        pass


class QuietProgress(Progress):
    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def result(self, text: str) -> None:
        pass


class PlainProgress(Progress):
    """One line per event, to a stream (default stderr); step output lines are prefixed."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.lock = threading.Lock()
        self._partial: dict[int, bytes] = {}

    def _write(self, text: str) -> None:
        with self.lock:
            self.out.write(text + "\n")
            self.out.flush()

    def step_started(self, step: StepEvent) -> None:
        self._write(step.title)

    def step_output(self, step: StepEvent, data: bytes) -> None:
        key = id(step)
        buffer = self._partial.get(key, b"") + data
        *lines, rest = buffer.split(b"\n")
        self._partial[key] = rest
        for line in lines:
            self._write(f"[{step.stage}] {line.decode(errors='replace').rstrip(chr(13))}")

    def _flush_partial(self, step: StepEvent) -> None:
        rest = self._partial.pop(id(step), b"")
        if rest:
            self._write(f"[{step.stage}] {rest.decode(errors='replace')}")

    def step_finished(self, step: StepEvent, *, cached: bool, error: str | None = None) -> None:
        self._flush_partial(step)
        if cached:
            self._write(f"[{step.stage}] STEP {step.number}/{step.total}: CACHED")
        elif error is not None:
            self._write(f"[{step.stage}] STEP {step.number}/{step.total}: ERROR {error}")
        else:
            seconds = time.monotonic() - step.started
            self._write(f"[{step.stage}] STEP {step.number}/{step.total}: DONE {seconds:.2f}s")

    def message(self, text: str) -> None:
        self._write(text)

    def result(self, text: str) -> None:
        self._write(text)


class RichProgress(PlainProgress):
    """A live view on a terminal: active steps with their last output line."""

    def __init__(self, out: TextIO | None = None) -> None:
        super().__init__(out)
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=self.out)
        self.active: dict[int, tuple[StepEvent, str]] = {}
        self.live = Live(self._render(), console=self.console, refresh_per_second=8, transient=True)
        self.live.start()

    def _render(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 1))
        for step, last in list(self.active.values()):
            elapsed = time.monotonic() - step.started
            table.add_row(Text(step.title, style="bold blue"), Text(f"{elapsed:5.1f}s"))
            if last:
                table.add_row(Text("  " + last[-120:], style="dim"), Text(""))
        return table

    def _update(self) -> None:
        # called with the lock held
        self.live.update(self._render(), refresh=True)

    def _write(self, text: str) -> None:
        with self.lock:
            self.console.print(text, markup=False, highlight=False)

    def step_started(self, step: StepEvent) -> None:
        with self.lock:
            self.active[id(step)] = (step, "")
            self._update()

    def step_output(self, step: StepEvent, data: bytes) -> None:
        text = data.decode(errors="replace").rstrip().splitlines()
        with self.lock:
            if text and id(step) in self.active:
                self.active[id(step)] = (step, text[-1])
                self._update()

    def step_finished(self, step: StepEvent, *, cached: bool, error: str | None = None) -> None:
        seconds = time.monotonic() - step.started
        status = "CACHED" if cached else (f"ERROR {error}" if error else f"DONE {seconds:.2f}s")
        with self.lock:
            self.active.pop(id(step), None)
            self._update()
            self.console.print(f"{step.title}  {status}", markup=False, highlight=False)

    def close(self) -> None:
        self.live.stop()


def make_progress(mode: str, *, quiet: bool = False, out: TextIO | None = None) -> Progress:
    """The display for ``--progress`` (auto: rich on a terminal, plain otherwise)."""
    stream = out or sys.stderr
    if quiet or mode == "quiet":
        return QuietProgress()
    if mode == "tty" or (mode == "auto" and stream.isatty()):
        try:
            return RichProgress(stream)
        except ImportError:
            return PlainProgress(stream)
    return PlainProgress(stream)
