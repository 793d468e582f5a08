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
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
        return conn

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
