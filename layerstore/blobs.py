"""Content-addressed blob files under ``<root>/blobs/<alg>/<hex>`` (an OCI image layout).

A blob is visible under its digest only when complete and correct: writers stream into a
temp file in ``<root>/ingest/`` on the same filesystem while hashing, verify the expected
digest, fsync and rename atomically. Each live writer holds an ``flock`` on its temp file,
so a cleaner can tell a killed writer's leftovers (lock free) from a live writer's (lock
held) without guessing by age. Two processes writing the same blob both succeed: the
second rename lands identical bytes (or finds the blob already there and discards its temp).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, BinaryIO

from layerstore.digest import Digest, Hasher, verify
from layerstore.errors import BlobNotFound, StoreError

INGEST_DIR = "ingest"
_CHUNK = 1 << 20
# A temp file is first created under a ``.new`` name, locked, then renamed to ``.part``:
# a ``.part`` file therefore always has its lock held while its writer lives.
_PART_SUFFIX = ".part"
_NEW_SUFFIX = ".new"
# ``.new`` files exist only for the instant between create and lock; older ones are debris.
_NEW_STALE_SECONDS = 300.0
_HEX_RE = re.compile(r"^[0-9a-f]+$")


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobWriter:
    """A binary sink that becomes a blob on :meth:`commit` (or nothing at all).

    Use as a context manager: leaving the block without committing (or with an exception)
    aborts and removes the temp file.
    """

    def __init__(self, store: BlobStore, expected: Digest | None = None) -> None:
        self._store = store
        self.expected = expected
        self._hasher = Hasher(expected.algorithm if expected else "sha256")
        ingest = store.ingest_dir
        ingest.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(12)
        new_path = ingest / f"{token}{_NEW_SUFFIX}"
        fd = os.open(new_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.temp_path = ingest / f"{token}{_PART_SUFFIX}"
            os.rename(new_path, self.temp_path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(new_path)
            raise
        self._file = os.fdopen(fd, "wb", buffering=_CHUNK)
        self._done = False
        self.digest: Digest | None = None

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._hasher.size

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._done:
            raise StoreError("write to a blob writer that is already committed or aborted")
        self._hasher.update(data)
        self._file.write(data)
        return len(data)

    def flush(self) -> None:
        self._file.flush()

    def copy_from(self, stream: IO[bytes], *, limit: int | None = None) -> int:
        """Copy ``stream`` (at most ``limit`` bytes) into the blob; returns bytes copied."""
        copied = 0
        while limit is None or copied < limit:
            want = _CHUNK if limit is None else min(_CHUNK, limit - copied)
            block = stream.read(want)
            if not block:
                break
            self.write(block)
            copied += len(block)
        return copied

    def commit(self) -> Digest:
        """Verify, fsync and rename into place; returns the blob's digest.

        Raises :class:`DigestMismatch` (and removes the temp file) when the content does not
        hash to the expected digest.
        """
        if self._done:
            if self.digest is None:
                raise StoreError("blob writer was aborted")
            return self.digest
        actual = self._hasher.digest()
        try:
            if self.expected is not None:
                verify(self.expected, actual, what="blob")
            final = self._store.path(actual)
            if final.exists():
                # Someone else stored the same bytes first: keep theirs, refresh its mtime
                # so a garbage collector's grace period treats it as just written.
                self._close_and_unlink()
                with contextlib.suppress(OSError):
                    os.utime(final)
            else:
                self._file.flush()
                os.fsync(self._file.fileno())
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.temp_path, final)
                self._file.close()
                fsync_dir(final.parent)
        except BaseException:
            self.abort()
            raise
        self._done = True
        self.digest = actual
        return actual

    def _close_and_unlink(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp_path)

    def abort(self) -> None:
        """Drop everything written; the temp file is removed."""
        if self._done:
            return
        self._done = True
        self._close_and_unlink()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None or self.digest is None:
            self.abort()


class BlobStore:
    """Blobs of one OCI image layout directory, addressed by digest."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.ingest_dir = self.root / INGEST_DIR

    def path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def has(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: Digest) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found in {self.root}") from None

    def open(self, digest: Digest) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found in {self.root}") from None

    def read_bytes(self, digest: Digest) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def put_bytes(self, data: bytes, expected: Digest | None = None) -> Digest:
        with self.writer(expected) as w:
            w.write(data)
            return w.commit()

    def put_stream(
        self, stream: IO[bytes], expected: Digest | None = None, *, limit: int | None = None
    ) -> Digest:
        """Stream ``stream`` into a blob (never held in memory whole)."""
        with self.writer(expected) as w:
            w.copy_from(stream, limit=limit)
            return w.commit()

    def put_file(self, path: Path, expected: Digest | None = None) -> Digest:
        with open(path, "rb") as f:
            return self.put_stream(f, expected)

    def writer(self, expected: Digest | None = None) -> BlobWriter:
        return BlobWriter(self, expected)

    def delete(self, digest: Digest) -> None:
        """Remove a blob; missing blobs are ignored."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(digest))

    def __iter__(self) -> Iterator[Digest]:
        base = self.root / "blobs"
        try:
            algorithms = sorted(os.listdir(base))
        except FileNotFoundError:
            return
        for alg in algorithms:
            try:
                names = sorted(os.listdir(base / alg))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                if not _HEX_RE.match(name):
                    continue
                try:
                    yield Digest.parse(f"{alg}:{name}")
                except ValueError:
                    continue

    def __contains__(self, digest: object) -> bool:
        return isinstance(digest, Digest) and self.has(digest)

    def verify(self, digest: Digest) -> bool:
        """True when the blob's content hashes to its name."""
        h = Hasher(digest.algorithm)
        with self.open(digest) as f:
            while block := f.read(_CHUNK):
                h.update(block)
        return h.digest() == digest

    def copy_to(self, digest: Digest, dest: BinaryIO) -> int:
        with self.open(digest) as f:
            shutil.copyfileobj(f, dest, _CHUNK)
            return f.tell()

    def clean_ingest(self) -> list[Path]:
        """Remove temp files left by killed writers; returns what was removed.

        A ``.part`` file whose lock can be taken has no live writer (locks die with their
        process). The inode is re-checked after locking so a file renamed away by a
        committing writer is never confused with a new one under the same name.
        """
        removed: list[Path] = []
        try:
            names = os.listdir(self.ingest_dir)
        except FileNotFoundError:
            return removed
        now = time.time()
        for name in names:
            path = self.ingest_dir / name
            if name.endswith(_NEW_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    if now - path.stat().st_mtime > _NEW_STALE_SECONDS:
                        path.unlink()
                        removed.append(path)
                continue
            if not name.endswith(_PART_SUFFIX):
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                        continue  # a live writer
                    raise
                try:
                    same = os.fstat(fd).st_ino == os.stat(path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    os.unlink(path)
                    removed.append(path)
            finally:
                os.close(fd)
        return removed
