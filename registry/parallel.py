"""Bounded parallel blob transfers where the first failure stops the rest.

Pull, push and copy move blobs on a small thread pool (network and hashing release the
GIL). When one transfer fails, the others should not keep downloading hundreds of megabytes
that will be thrown away: each transfer reports progress through :meth:`TransferPool.task`,
whose callback raises :class:`Cancelled` once the pool is failing, so a running transfer
stops at its next chunk (its BlobWriter aborts, its upload is left unfinished).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait

from registry.errors import RegistryError
from registry.progress import Advance, ProgressSink


class Cancelled(RegistryError):
    """A transfer stopped because another one failed."""


class TransferPool:
    """Collect transfers with :meth:`add`, then :meth:`run` them on ``jobs`` threads."""

    def __init__(self, jobs: int, sink: ProgressSink) -> None:
        self.jobs = max(1, jobs)
        self.sink = sink
        self.cancelled = threading.Event()
        self._tasks: list[tuple[str, Callable[[], object]]] = []

    def task(self, key: str, label: str, total: int | None) -> Advance:
        """A progress callback for one transfer that also carries cancellation."""
        advance = self.sink.task(key, label, total)
        cancelled = self.cancelled

        def step(n: int) -> None:
            if cancelled.is_set():
                raise Cancelled("cancelled after another transfer failed")
            advance(n)

        return step

    def add(self, key: str, fn: Callable[[], object]) -> None:
        self._tasks.append((key, fn))

    def __len__(self) -> int:
        return len(self._tasks)

    def run(self) -> None:
        """Run every transfer; the first failure (not a cancellation) is raised."""
        if not self._tasks:
            return
        workers = min(self.jobs, len(self._tasks))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blob") as pool:
            futures: dict[Future[object], str] = {pool.submit(fn): key for key, fn in self._tasks}
            try:
                done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            except BaseException:
                # Ctrl-C: queued transfers never start, running ones stop at their next chunk.
                self.cancelled.set()
                for fut in futures:
                    fut.cancel()
                raise
            failed = [f for f in done if f.exception() is not None]
            if not failed:
                return
            self.cancelled.set()
            for fut in pending:
                fut.cancel()
            wait(pending)
        for fut, key in futures.items():
            if fut.done() and not fut.cancelled() and fut.exception() is not None:
                self.sink.finish(key, "failed")
        first = next(
            (f.exception() for f in failed if not isinstance(f.exception(), Cancelled)),
            failed[0].exception(),
        )
        assert first is not None
        raise first
