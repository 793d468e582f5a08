"""Cache keys for build steps, and content digests of the files a COPY or ADD selects.

A step's key is sha256 over a canonical JSON document of everything that can change its
result: the parent step's key, the step's instruction after expansion, the build args and
environment it can see, and the digests of its inputs (base manifest, ``--from`` stage keys,
the content digest of the copied sources). Nothing else goes in — in particular no
timestamps — so an unchanged build finds every step, and the document is kept so that
``--debug-cache`` can show exactly why a step missed.

Content digests cover names, types, modes, ownership, link targets and bytes, never mtimes:
touching a file leaves its COPY cached. Hashing a large context on every build would be
slow, so each file's sha256 is memoised in the store's database under its
(device, inode, size, mtime_ns, ctime_ns): an unchanged file is never read again, and a file
whose contents changed always has a new ctime, so the memo cannot go stale unnoticed.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerstore.canonicaljson import canonical_json
from layerstore.db import Database

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS file_digests (
        dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL,
        PRIMARY KEY (dev, ino))""",
)

# Bump when the meaning of a key changes, so old cache records stop matching.
KEY_VERSION = 2


@dataclass(frozen=True)
class CacheKey:
    """A step's cache key and the document it was computed from."""

    hex: str
    document: Mapping[str, Any]

    def __str__(self) -> str:
        return f"sha256:{self.hex}"

    @property
    def short(self) -> str:
        return self.hex[:12]


def step_key(
    parent: CacheKey | None,
    *,
    instruction: str,
    visible: Mapping[str, str] | None = None,
    inputs: Mapping[str, str] | None = None,
    platform: str | None = None,
) -> CacheKey:
    """The key of a step: parent key + canonical instruction + visible vars + input digests.

    ``visible`` holds the build args and environment the step can see (only those that can
    affect it: for RUN all of them, for other instructions the ones their words reference);
    ``inputs`` maps an input's role (``"base"``, ``"from:build"``, ``"sources"``) to a digest.
    """
    document: dict[str, Any] = {
        "v": KEY_VERSION,
        "parent": parent.hex if parent else None,
        "instruction": instruction,
        "visible": dict(sorted((visible or {}).items())),
        "inputs": dict(sorted((inputs or {}).items())),
    }
    if platform:
        document["platform"] = platform
    return CacheKey(hashlib.sha256(canonical_json(document)).hexdigest(), document)


class ContentHasher:
    """Content digests of context files, with a per-file memo in the store's database."""

    def __init__(self, db: Database | None) -> None:
        self._db = db
        if db is not None:
            db.ensure_schema("cachekey.file_digests", _SCHEMA)
        self._memo: dict[tuple[int, int], tuple[tuple[int, int, int], str]] = {}
        self._pending: list[tuple[int, int, int, int, int, str]] = []
        self._batching = False

    def file_sha256(self, path: Path, st: os.stat_result | None = None) -> str:
        """The sha256 (hex) of a regular file's bytes, memoised by inode identity."""
        st = st or os.lstat(path)
        ident = (st.st_dev, st.st_ino)
        version = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._memo.get(ident)
        if cached and cached[0] == version:
            return cached[1]
        if self._db is not None:
            row = (
                self._db.connection()
                .execute(
                    "SELECT sha256 FROM file_digests WHERE dev=? AND ino=? AND size=?"
                    " AND mtime_ns=? AND ctime_ns=?",
                    (*ident, *version),
                )
                .fetchone()
            )
            if row:
                self._memo[ident] = (version, str(row[0]))
                return str(row[0])
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        digest = h.hexdigest()
        self._memo[ident] = (version, digest)
        self._pending.append((*ident, *version, digest))
        if not self._batching:
            self.flush()
        return digest

    def flush(self) -> None:
        """Write memo entries computed since the last flush, in one transaction."""
        if self._db is not None and self._pending:
            with self._db.transaction() as conn:
                conn.executemany(
                    "INSERT OR REPLACE INTO file_digests VALUES (?,?,?,?,?,?)", self._pending
                )
        self._pending.clear()

    def entry_record(self, root: Path, rel: str) -> list[Any]:
        """What of one path goes into a content digest: name, type, mode, owner, target, bytes."""
        path = root / rel
        st = os.lstat(path)
        mode = st.st_mode
        record: list[Any] = [rel, stat.S_IFMT(mode), stat.S_IMODE(mode), st.st_uid, st.st_gid]
        if stat.S_ISREG(mode):
            record.append(self.file_sha256(path, st))
        elif stat.S_ISLNK(mode):
            record.append(os.readlink(path))
        return record

    def digest_paths(self, root: Path, rel_paths: Iterable[str]) -> str:
        """``sha256:…`` over the records of ``rel_paths`` (relative to ``root``), sorted.

        Memo writes are batched: a first build of a 20,000-file context does one transaction.
        """
        self._batching = True
        try:
            records = [self.entry_record(root, rel) for rel in sorted(set(rel_paths))]
        finally:
            self._batching = False
            self.flush()
        return "sha256:" + hashlib.sha256(canonical_json(records)).hexdigest()
