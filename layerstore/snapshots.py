"""Unpacked layers ("snapshots"), one directory per diff ID, for use as overlayfs lowerdirs.

Each layer is unpacked once, on its own and in overlay form (whiteouts as ``0/0``
character devices, opaque directories marked with ``trusted.overlay.opaque=y``), so a
build stacks a base image's layers as ``lowerdir=top:…:bottom`` without copying a file.

Directories are named by a small integer the database hands out (``<root>/17``), not by
the 64-character diff ID: overlayfs takes all its options in one page (4096 bytes), and
short names let a mount stack a hundred layers. The database row maps the diff ID to that
name. A snapshot appears atomically: it is unpacked into ``<root>/.tmp-…``, verified
against its diff ID and renamed into place inside the transaction that inserts its row.
An ``flock`` per diff ID keeps two processes from unpacking the same layer at once; the
second waits and then finds the first one's snapshot.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from layerstore.db import Database
from layerstore.descriptor import Descriptor
from layerstore.digest import Digest
from layerstore.layer import apply_layer

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS snapshots (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        diff_id TEXT NOT NULL UNIQUE,
        dirname TEXT NOT NULL,
        layer_digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        created REAL NOT NULL,
        last_used REAL NOT NULL
    )""",
)
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_LOCK_DIR = ".locks"


class BlobSource(Protocol):
    """The part of :class:`layerstore.blobs.BlobStore` snapshots read from."""

    def open(self, digest: Digest) -> BinaryIO: ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One unpacked layer."""

    diff_id: Digest
    path: Path
    layer_digest: Digest
    size: int  # bytes of regular-file content
    created: float
    last_used: float


class SnapshotStore:
    """Unpacked layers under ``root``, bookkept in ``db``, unpacked from ``blobs``."""

    def __init__(self, root: Path, db: Database, blobs: BlobSource) -> None:
        self.root = Path(root)
        self.db = db
        self.blobs = blobs
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / _LOCK_DIR).mkdir(exist_ok=True)
        db.ensure_schema("snapshots", _SCHEMA)

    # -- queries ---------------------------------------------------------------------

    def _row(self, diff_id: Digest) -> tuple[str, str, int, float, float] | None:
        cur = self.db.connection().execute(
            "SELECT dirname, layer_digest, size, created, last_used FROM snapshots "
            "WHERE diff_id = ?",
            (str(diff_id),),
        )
        row = cur.fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3], row[4])

    def path(self, diff_id: Digest) -> Path | None:
        """The snapshot directory of ``diff_id``, or None when it is not unpacked."""
        row = self._row(diff_id)
        if row is None:
            return None
        p = self.root / row[0]
        return p if p.is_dir() else None

    def list(self) -> list[Snapshot]:
        """Every snapshot, least recently used first."""
        rows = self.db.connection().execute(
            "SELECT diff_id, dirname, layer_digest, size, created, last_used FROM snapshots "
            "ORDER BY last_used, id"
        )
        return [
            Snapshot(Digest.parse(d), self.root / n, Digest.parse(ld), s, c, u)
            for d, n, ld, s, c, u in rows.fetchall()
        ]

    # -- changes ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, diff_id: Digest) -> Iterator[None]:
        lock_path = self.root / _LOCK_DIR / f"{diff_id.algorithm}-{diff_id.hex}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def ensure(self, layer: Descriptor, diff_id: Digest) -> Path:
        """The snapshot of ``layer`` (whose uncompressed digest is ``diff_id``), unpacking it
        the first time. Raises :class:`~layerstore.errors.DigestMismatch` when the blob does
        not unpack to ``diff_id``, and whatever :func:`apply_layer` refuses."""
        found = self._touch(diff_id)
        if found is not None:
            return found
        with self._locked(diff_id):
            found = self._touch(diff_id)
            if found is not None:
                return found
            self._remove_debris(diff_id)
            tmp = self.root / f"{_TMP_PREFIX}{diff_id.hex}-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                with self.blobs.open(layer.digest) as blob:
                    stats = apply_layer(
                        blob,
                        tmp,
                        media_type=layer.media_type,
                        overlay_form=True,
                        expected_diff_id=diff_id,
                    )
                return self._commit(tmp, layer, diff_id, stats.bytes)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise

    def adopt(self, directory: Path, layer: Descriptor, diff_id: Digest) -> Path:
        """Make ``directory`` the snapshot of ``diff_id`` by renaming it into the store.

        For an overlay upperdir a layer was just written from: it already is that layer in
        overlay form, so a build need not unpack the blob again. ``directory`` must be on the
        store's filesystem (else ``OSError``, and nothing changes). When the snapshot exists
        already, ``directory`` is left where it is and the existing path is returned.
        """
        with self._locked(diff_id):
            found = self._touch(diff_id)
            if found is not None:
                return found
            size = 0
            for dirpath, _, filenames in os.walk(directory):
                for name in filenames:
                    st = os.lstat(os.path.join(dirpath, name))
                    if stat.S_ISREG(st.st_mode):
                        size += st.st_size
            return self._commit(Path(directory), layer, diff_id, size)

    def _touch(self, diff_id: Digest) -> Path | None:
        p = self.path(diff_id)
        if p is not None:
            with self.db.transaction() as conn:
                conn.execute(
                    "UPDATE snapshots SET last_used = ? WHERE diff_id = ?",
                    (time.time(), str(diff_id)),
                )
        return p

    def _remove_debris(self, diff_id: Digest) -> None:
        # we hold the layer's lock: any temp dir of this diff ID is a dead unpacker's
        for p in self.root.glob(f"{_TMP_PREFIX}{diff_id.hex}-*"):
            shutil.rmtree(p, ignore_errors=True)

    def _commit(self, tmp: Path, layer: Descriptor, diff_id: Digest, size: int) -> Path:
        now = time.time()
        with self.db.transaction() as conn:
            # a row whose directory vanished (someone deleted it by hand) is replaced
            conn.execute("DELETE FROM snapshots WHERE diff_id = ?", (str(diff_id),))
            cur = conn.execute(
                "INSERT INTO snapshots (diff_id, dirname, layer_digest, size, created, last_used)"
                " VALUES (?, '', ?, ?, ?, ?)",
                (str(diff_id), str(layer.digest), size, now, now),
            )
            dirname = str(cur.lastrowid)
            final = self.root / dirname
            if final.exists() or final.is_symlink():
                # left by a process that died between rename and commit: its id was never
                # committed, so nothing refers to this directory
                self._discard(final)
            os.rename(tmp, final)
            conn.execute(
                "UPDATE snapshots SET dirname = ? WHERE diff_id = ?", (dirname, str(diff_id))
            )
        return final

    def _discard(self, path: Path) -> None:
        trash = self.root / f"{_TRASH_PREFIX}{path.name}-{secrets.token_hex(4)}"
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def prune(self, keep: Iterable[Digest]) -> builtins.list[Digest]:
        """Remove every snapshot whose diff ID is not in ``keep``; returns the removed ones.

        For the store's garbage collection; the caller makes sure no build holds a mount.
        """
        wanted = set(keep)
        removed: builtins.list[Digest] = []
        for snap in self.list():
            if snap.diff_id not in wanted and self.remove(snap.diff_id):
                removed.append(snap.diff_id)
        return removed

    def remove(self, diff_id: Digest) -> bool:
        """Delete the snapshot of ``diff_id``; False when there was none.

        The caller makes sure no mount still uses it as a lowerdir.
        """
        with self._locked(diff_id):
            row = self._row(diff_id)
            if row is None:
                return False
            with self.db.transaction() as conn:
                conn.execute("DELETE FROM snapshots WHERE diff_id = ?", (str(diff_id),))
            p = self.root / row[0]
            if p.exists():
                self._discard(p)
            return True
