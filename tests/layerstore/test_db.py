"""The metadata database under concurrent first use by several processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_OPEN_AND_WRITE = """
import sys, time
from pathlib import Path
from layerstore.db import Database
start = float(sys.argv[2])
modes = set()
for n in range(int(sys.argv[4])):
    # every process opens the same fresh files at the same moment
    while time.time() < start + n * 0.02:
        pass
    db = Database(Path(sys.argv[1]) / f"{n}.db")
    db.ensure_schema("t", ["CREATE TABLE IF NOT EXISTS t (who TEXT)"])
    with db.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (?)", (sys.argv[3],))
    modes.add(db.connection().execute("PRAGMA journal_mode").fetchone()[0])
    db.close()
print(",".join(sorted(modes)))
"""


def test_many_processes_create_one_database_at_once(tmp_path: Path) -> None:
    # Switching a new file to WAL needs an exclusive lock that sqlite's busy handler does
    # not wait for; every process must still open the store and write.
    import time

    files = 40
    start = time.time() + 1.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_AND_WRITE, str(tmp_path), str(start), f"p{i}", str(files)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        assert out.strip() == "wal"
    import sqlite3

    for n in range(files):
        conn = sqlite3.connect(tmp_path / f"{n}.db")
        rows = conn.execute("SELECT who FROM t ORDER BY who").fetchall()
        conn.close()
        assert [r[0] for r in rows] == sorted(f"p{i}" for i in range(8))
