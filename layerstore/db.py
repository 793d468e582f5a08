"""The store's one metadata database (stdlib sqlite3 in WAL mode).

Tags, cache records, blob provenance and unpacked-layer bookkeeping all live in
``<store>/pybuild.db``. Each module that keeps records there owns its tables: it passes its
``CREATE TABLE IF NOT EXISTS`` statements to :meth:`Database.ensure_schema` once, so no
central schema file has to know every table. WAL mode lets readers run while one process
writes; ``busy_timeout`` makes concurrent writers wait instead of failing.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DB_NAME = "pybuild.db"


class Database:
    """A per-thread sqlite3 connection pool over one database file."""

    def __init__(self, path: Path, *, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self._timeout = timeout
        self._local = threading.local()
        self._schemas: set[str] = set()
        self._lock = threading.Lock()

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit off; use :meth:`transaction`)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
            self._use_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the database to WAL mode once, tolerating another process doing the same.

        Changing the journal mode needs an exclusive lock and sqlite does not run the busy
        handler for it, so two processes opening a new store at once could fail with
        "database is locked"; retry until the timeout instead. Once the file is in WAL mode
        (it stays so), the check is a plain read.
        """
        deadline = time.monotonic() + self._timeout
        delay = 0.005
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() == "wal":
                    return
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def ensure_schema(self, name: str, statements: tuple[str, ...] | list[str]) -> None:
        """Run a module's DDL once per process (idempotent ``IF NOT EXISTS`` statements)."""
        with self._lock:
            if name in self._schemas:
                return
            with self.transaction() as conn:
                for stmt in statements:
                    conn.execute(stmt)
            self._schemas.add(name)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed on success, rolled back on error."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
