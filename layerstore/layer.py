"""Layer blobs: deterministic tar writing (directory or entry list) and safe application.

Writing makes ONE streaming pass: the tar is generated in fixed-size blocks, each block is
hashed for the diff ID (sha256 of the uncompressed tar) and handed to a compressor whose
output is written into a :class:`BlobWriter` (which hashes it for the blob digest). Nothing
holds a whole layer in memory. Gzip is compressed pigz-style: every block is deflated
independently on a thread pool (zlib releases the GIL), primed with the previous block's
last 32 KiB as a dictionary and ended with a sync flush, so the concatenation is ONE
ordinary gzip member whose bytes depend only on the input, the level and the block size —
never on the number of threads (nor on anything but the bytes: segments that are already
compressed are stored, not deflated, which is three times faster and no larger). The bytes
do depend on the zlib build, as any gzip does. Zstd uses libzstd's own worker threads,
whose output is independent of the worker count as long as it is at least one. Blob
writes and diff-ID hashing run on their own threads (hashlib and file writes release the
GIL too), so generating the tar is the only serial part.

The tar is what BuildKit and containerd produce: entries in walk order (each directory's
children sorted byte-wise, parents before children), ustar headers with PAX records only
when a field needs them (long or non-ASCII names, big ids or sizes, xattrs), empty
uname/gname, numeric ownership, whole-second mtimes clamped to ``SOURCE_DATE_EPOCH``,
hard links to the first path in that order, overlay whiteouts as ``.wh.<name>`` and opaque
directories as ``<dir>/.wh..wh..opq``.

Applying decompresses by magic bytes (on a read-ahead thread), parses the tar with a small
forward-only reader and writes every entry through :class:`layerstore.safepath.RootDir`,
so no entry can reach outside the target. Whiteouts and opaque markers hide only what
lower layers left, wherever they sit in the tar. Known limit: in overlay form a layer is
unpacked on its own, so an entry written *through* a symlink of a lower layer (``lib/x``
without a ``lib/`` entry, where a lower ``lib -> usr/lib``) becomes a real ``lib``
directory that hides the lower symlink; layers made from overlay diffs never do that.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import gzip
import io
import itertools
import logging
import os
import queue
import stat
import struct
import threading
import urllib.parse
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

import zstandard

from layerstore.descriptor import Descriptor, MediaType
from layerstore.digest import Digest, Hasher
from layerstore.errors import ArchiveError, DigestMismatch, StoreError, UnsafePathError
from layerstore.safepath import RootDir, clean_member_name, split_parent

log = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20
GZIP_DEFAULT_LEVEL = 6
ZSTD_DEFAULT_LEVEL = 3
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# aufs metadata entries (hard-link directory, "plnk") that Docker also ignores
_AUFS_META_PREFIX = ".wh..wh."


_MEDIA_TYPES: dict[tuple[str, str], str] = {
    ("oci", "gzip"): MediaType.OCI_LAYER_GZIP,
    ("oci", "zstd"): MediaType.OCI_LAYER_ZSTD,
    ("oci", "none"): MediaType.OCI_LAYER,
    ("docker", "gzip"): MediaType.DOCKER_LAYER_GZIP,
    ("docker", "zstd"): MediaType.DOCKER_LAYER_ZSTD,
    ("docker", "none"): MediaType.DOCKER_LAYER,
}

# xattrs never copied into a layer: overlayfs bookkeeping (meaningless, or harmful, in
# another mount) and the host's SELinux label.
_SKIPPED_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
_SKIPPED_XATTRS = frozenset({"security.selinux"})
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
# overlay features whose upperdir does not describe the change on its own
_UNSUPPORTED_OVERLAY_XATTRS = (
    "trusted.overlay.redirect",
    "trusted.overlay.metacopy",
    "user.overlay.redirect",
    "user.overlay.metacopy",
)


def _keep_xattr(name: str) -> bool:
    return name not in _SKIPPED_XATTRS and not name.startswith(_SKIPPED_XATTR_PREFIXES)


# ---------------------------------------------------------------------------------------
# Public values
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layer:
    """A layer blob in the store: blob digest, diff ID (uncompressed tar), size, media type."""

    digest: Digest
    diff_id: Digest
    size: int
    media_type: str

    def descriptor(self) -> Descriptor:
        return Descriptor(media_type=self.media_type, digest=self.digest, size=self.size)


EntryKind = Literal[
    "file", "dir", "symlink", "hardlink", "fifo", "char", "block", "whiteout", "opaque"
]


@dataclass(frozen=True, slots=True)
class LayerEntry:
    """One entry of a layer built from a list (COPY, a tree-walk differ).

    ``path`` is the path in the layer (a leading ``/`` is ignored). Contents come from
    ``source`` (a file on disk, read when the layer is written) or ``content``. Fields left
    ``None`` are taken from ``lstat(source)`` (kind, mode, uid, gid, mtime, link target,
    xattrs) or default to a root-owned ``0644`` file / ``0755`` directory with mtime 0.
    ``mode`` holds permission bits including setuid/setgid/sticky. ``whiteout`` deletes
    ``path`` from lower layers; ``opaque`` hides the lower contents of directory ``path``.
    """

    path: str
    source: Path | None = None
    content: bytes | None = None
    kind: EntryKind | None = None
    uid: int | None = None
    gid: int | None = None
    mode: int | None = None
    mtime: int | None = None
    link_target: str | None = None
    xattrs: Mapping[str, bytes] | None = None
    rdev: tuple[int, int] = (0, 0)


@dataclass(slots=True)
class ApplyStats:
    """What :func:`apply_layer` did."""

    entries: int = 0
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    devices: int = 0
    whiteouts: int = 0
    opaque_dirs: int = 0
    bytes: int = 0
    skipped_devices: int = 0
    diff_id: Digest | None = None
    warnings: list[str] = field(default_factory=list)


class BlobSinkWriter(Protocol):
    """The part of :class:`layerstore.blobs.BlobWriter` a layer writer uses."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...
    def commit(self) -> Digest: ...
    def abort(self) -> None: ...


class BlobSink(Protocol):
    """The part of :class:`layerstore.blobs.BlobStore` a layer writer uses."""

    def writer(self, expected: Digest | None = None) -> BlobSinkWriter: ...


def layer_media_type(compression: str, family: str = "oci") -> str:
    """The layer media type for a compression (``gzip``/``zstd``/``none``) and family."""
    try:
        return _MEDIA_TYPES[(family, compression)]
    except KeyError:
        raise ValueError(
            f"unknown layer format {family!r}/{compression!r}: "
            "compression is gzip, zstd or none; family is oci or docker"
        ) from None


# ---------------------------------------------------------------------------------------
# Tar encoding
# ---------------------------------------------------------------------------------------

_REGTYPE, _LNKTYPE, _SYMTYPE = b"0", b"1", b"2"
_CHRTYPE, _BLKTYPE, _DIRTYPE, _FIFOTYPE = b"3", b"4", b"5", b"6"
_PAXTYPE = b"x"
_MAX_OCTAL_7 = 0o7777777
_MAX_OCTAL_11 = 0o77777777777
_ZERO_BLOCK_PAIR = bytes(1024)


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while True:
        m = len(str(n)) + len(body)
        if m == n:
            return str(n).encode() + body
        n = m


_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_MAGIC_SUM = sum(b"ustar\x0000")


def _ustar(
    name: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    linkname: bytes,
    devmajor: int,
    devminor: int,
) -> bytes:
    fmode, fuid, fgid = b"%07o\x00" % mode, b"%07o\x00" % uid, b"%07o\x00" % gid
    fsize, fmtime = b"%011o\x00" % size, b"%011o\x00" % mtime
    fmaj, fmin = b"%07o\x00" % devmajor, b"%07o\x00" % devminor
    # the checksum counts its own field as eight spaces (256); empty fields add nothing
    chk = (
        sum(name) + sum(fmode) + sum(fuid) + sum(fgid) + sum(fsize) + sum(fmtime) + 256
        + typeflag[0] + sum(linkname) + _MAGIC_SUM + sum(fmaj) + sum(fmin)
    )  # fmt: skip
    return _USTAR.pack(
        name, fmode, fuid, fgid, fsize, fmtime, b"%06o\x00 " % chk, typeflag, linkname,
        b"ustar\x0000", b"", b"", fmaj, fmin, b"",
    )  # fmt: skip


def _ascii_stub(name: bytes, limit: int = 100) -> bytes:
    """What goes into a fixed-width field when a PAX record carries the real value."""
    return bytes(c if 0x20 <= c < 0x7F else 0x5F for c in name[:limit])


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@dataclass(slots=True)
class _TarEntry:
    name: bytes  # root-relative, "/"-terminated for directories
    typeflag: bytes
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int = 0
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: list[tuple[str, bytes]] | None = None
    source: bytes | None = None
    content: bytes | None = None

    def headers(self) -> bytes:
        pax: list[tuple[bytes, bytes]] = []
        name, linkname = self.name, self.linkname
        if len(name) > 100 or not name.isascii():
            pax.append((b"path", name))
            name = _ascii_stub(name)
        if len(linkname) > 100 or not linkname.isascii():
            pax.append((b"linkpath", linkname))
            linkname = _ascii_stub(linkname)
        uid, gid, size, mtime = self.uid, self.gid, self.size, self.mtime
        if uid > _MAX_OCTAL_7:
            pax.append((b"uid", b"%d" % uid))
            uid = 0
        if gid > _MAX_OCTAL_7:
            pax.append((b"gid", b"%d" % gid))
            gid = 0
        if size > _MAX_OCTAL_11:
            pax.append((b"size", b"%d" % size))
            size = 0
        if mtime < 0 or mtime > _MAX_OCTAL_11:
            pax.append((b"mtime", b"%d" % mtime))
            mtime = 0
        if self.xattrs:
            for key, value in self.xattrs:
                pax.append((b"SCHILY.xattr." + key.encode("utf-8", "surrogateescape"), value))
        header = _ustar(
            name,
            self.mode & 0o7777,
            uid,
            gid,
            size,
            mtime,
            self.typeflag,
            linkname,
            self.devmajor,
            self.devminor,
        )
        if not pax:
            return bytes(header)
        if any(not _is_utf8(v) for k, v in pax if k in (b"path", b"linkpath")):
            pax.append((b"hdrcharset", b"BINARY"))
        data = b"".join(_pax_record(k, v) for k, v in sorted(pax))
        dirname, _, base = self.name.rstrip(b"/").rpartition(b"/")
        pax_name = _ascii_stub((dirname + b"/" if dirname else b"") + b"PaxHeaders.0/" + base)
        pad = -len(data) % 512
        return (
            bytes(_ustar(pax_name, 0, 0, 0, len(data), 0, _PAXTYPE, b"", 0, 0))
            + data
            + bytes(pad)
            + bytes(header)
        )


class _TarStream:
    """Tar bytes cut into fixed-size blocks handed to ``sink`` as they fill.

    Every block is a fresh zero-filled buffer, so padding is just advancing the position.
    """

    def __init__(self, sink: Callable[[bytearray], None], block_size: int) -> None:
        self._sink = sink
        self._size = block_size
        self._buf = bytearray(block_size)
        self._view = memoryview(self._buf)
        self._pos = 0

    def _emit(self) -> None:
        self._view.release()
        self._sink(self._buf)
        self._buf = bytearray(self._size)
        self._view = memoryview(self._buf)
        self._pos = 0

    def write(self, data: bytes) -> None:
        n = len(data)
        pos = self._pos
        if pos + n < self._size:
            self._buf[pos : pos + n] = data
            self._pos = pos + n
            return
        view = memoryview(data)
        while view:
            room = self._size - self._pos
            take = view[:room]
            self._buf[self._pos : self._pos + len(take)] = take
            self._pos += len(take)
            view = view[len(take) :]
            if self._pos == self._size:
                self._emit()

    def skip(self, n: int) -> None:
        """Advance over ``n`` zero bytes."""
        while n:
            step = min(n, self._size - self._pos)
            self._pos += step
            n -= step
            if self._pos == self._size:
                self._emit()

    def copy_fd(self, fd: int, size: int, what: bytes) -> None:
        """Copy exactly ``size`` bytes of file ``fd`` (plus tar padding) into the stream."""
        left = size
        while left:
            room = self._size - self._pos
            want = min(left, room)
            got = os.readv(fd, [self._view[self._pos : self._pos + want]])
            if got == 0:
                raise ArchiveError(
                    f"{os.fsdecode(what)!r} shrank while being written into the layer "
                    f"({size - left} of {size} bytes)"
                )
            self._pos += got
            left -= got
            if self._pos == self._size:
                self._emit()
        self.skip(-size % 512)

    def add(self, entry: _TarEntry) -> None:
        self.write(entry.headers())
        if entry.typeflag != _REGTYPE or entry.size == 0:
            return
        if entry.content is not None:
            self.write(entry.content)
            self.skip(-entry.size % 512)
            return
        assert entry.source is not None
        fd = os.open(entry.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self.copy_fd(fd, entry.size, entry.source)
        finally:
            os.close(fd)

    def finish(self) -> None:
        self.write(_ZERO_BLOCK_PAIR)
        if self._pos:
            self._view.release()
            self._sink(self._buf[: self._pos])
            self._pos = 0


# ---------------------------------------------------------------------------------------
# Compression pipelines
# ---------------------------------------------------------------------------------------


class _Stage:
    """A thread consuming items from a bounded queue, so hashing and file writes (which
    release the GIL) overlap with tar generation. Errors surface on the next call."""

    _STOP = object()

    def __init__(
        self, fn: Callable[[bytes | bytearray], object], name: str, depth: int = 8
    ) -> None:
        self._fn = fn
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            if self._error is None:
                try:
                    self._fn(item)  # type: ignore[arg-type]
                except BaseException as e:  # re-raised in the producing thread
                    self._error = e

    def put(self, item: bytes | bytearray) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def close(self) -> None:
        """Wait for everything queued; re-raise the stage's error, if any."""
        if self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join()
        if self._error is not None:
            raise self._error


class _CountingSink:
    """The blob side: counts bytes and writes them into the blob writer on a stage thread."""

    def __init__(self, writer: BlobSinkWriter) -> None:
        self.writer = writer
        self.size = 0
        self._stage = _Stage(writer.write, "layer-blob-write")

    def write(self, data: bytes | bytearray) -> None:
        if data:
            self._stage.put(data)
            self.size += len(data)

    def close(self) -> None:
        self._stage.close()


class _Pipeline(Protocol):
    def feed(self, block: bytearray) -> None: ...
    def finish(self) -> None: ...
    def close(self) -> None: ...


class _PlainPipeline:
    def __init__(self, out: _CountingSink) -> None:
        self._out = out

    def feed(self, block: bytearray) -> None:
        self._out.write(block)  # blocks are never written to once emitted

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


_SEGMENT = 128 * 1024
_PROBE = 2048


def _incompressible(seg: memoryview) -> bool:
    """Two level-1 probes say this segment is already compressed (or random) data."""
    n = len(seg)
    for off in (n // 4, (3 * n) // 4):
        sample = seg[off : off + _PROBE]
        if len(zlib.compress(sample, 1)) < len(sample) * 0.95:
            return False
    return True


def _deflate_block(block: bytearray, level: int, zdict: bytes | None) -> bytes:
    """Raw deflate of one block, ending on a byte boundary (sync flush), primed with ``zdict``.

    Segments that are already compressed (jars, archives, images) are stored instead of
    deflated: deflate gains nothing on them and runs at a third of its speed. The decision
    depends on the bytes alone, so output stays reproducible.
    """
    view = memoryview(block)
    n = len(view)
    stored = [level > 0 and _incompressible(view[i : i + _SEGMENT]) for i in range(0, n, _SEGMENT)]
    out: list[bytes] = []
    start = 0
    while start < n:
        kind = stored[start // _SEGMENT]
        end = start + _SEGMENT
        while end < n and stored[end // _SEGMENT] == kind:
            end += _SEGMENT
        piece = view[start : min(end, n)]
        if kind:
            c = zlib.compressobj(0, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)
        else:
            primer = zdict if start == 0 else bytes(view[max(0, start - 32768) : start])
            if primer:
                c = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, primer)
            else:
                c = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)
        out.append(c.compress(piece))
        out.append(c.flush(zlib.Z_SYNC_FLUSH))
        start = min(end, n)
    return b"".join(out)


class _GzipPipeline:
    """pigz-style parallel deflate into one gzip member (see the module docstring)."""

    _WINDOW = 32768

    def __init__(self, out: _CountingSink, level: int, threads: int) -> None:
        self._out = out
        self._level = level
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="deflate")
        self._pending: deque[Future[bytes]] = deque()
        self._max_pending = 2 * threads + 1
        self._crc = 0
        self._isize = 0
        self._tail: bytes | None = None
        xfl = 2 if level >= 9 else 4 if level <= 1 else 0
        # magic, CM=deflate, FLG=0, MTIME=0 (reproducible), XFL, OS=255 (unknown)
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes((xfl, 255)))

    def feed(self, block: bytearray) -> None:
        self._crc = zlib.crc32(block, self._crc)
        self._isize += len(block)
        self._pending.append(self._pool.submit(_deflate_block, block, self._level, self._tail))
        self._tail = bytes(block[-self._WINDOW :])
        while self._pending and (len(self._pending) > self._max_pending or self._pending[0].done()):
            self._out.write(self._pending.popleft().result())

    def finish(self) -> None:
        while self._pending:
            self._out.write(self._pending.popleft().result())
        # an empty final fixed-Huffman block ends the deflate stream
        self._out.write(b"\x03\x00" + struct.pack("<II", self._crc, self._isize & 0xFFFFFFFF))
        self.close()

    def close(self) -> None:
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)


class _ZstdPipeline:
    def __init__(self, out: _CountingSink, level: int, threads: int) -> None:
        self._out = out
        cctx = zstandard.ZstdCompressor(level=level, threads=max(1, threads), write_checksum=True)
        self._cobj = cctx.compressobj()

    def feed(self, block: bytearray) -> None:
        self._out.write(self._cobj.compress(block))

    def finish(self) -> None:
        self._out.write(self._cobj.flush())

    def close(self) -> None:
        pass


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------
# Sources: a directory tree or a list of entries
# ---------------------------------------------------------------------------------------


def _read_xattrs(path: bytes) -> list[tuple[str, bytes]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # filesystem without xattrs
        return []
    out = []
    for name in names:
        try:
            out.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError:
            continue
    out.sort()
    return out


def _is_xwhiteout(path: bytes) -> bool:
    """An overlayfs 6.7+ "xwhiteout": an empty file carrying the overlay whiteout xattr."""
    for name in _XWHITEOUT_XATTRS:
        try:
            os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        return True
    return False


_XWHITEOUT_XATTRS = ("trusted.overlay.whiteout", "user.overlay.whiteout")


def _sort_key(name: bytes) -> tuple[bytes, ...]:
    # walk order: components compared byte-wise, a directory right before its children
    return tuple(name.rstrip(b"/").split(b"/"))


class _EntryFactory:
    """Turns stat results into tar entries with clamped times and hard-link tracking."""

    def __init__(self, source_date_epoch: int | None) -> None:
        self.sde = source_date_epoch
        self.inodes: dict[tuple[int, ...], bytes] = {}

    def mtime(self, seconds: int) -> int:
        if self.sde is not None and seconds > self.sde:
            return self.sde
        return seconds

    def from_stat(
        self,
        name: bytes,
        path: bytes,
        st: os.stat_result,
        xattrs: list[tuple[str, bytes]],
        *,
        uid: int | None = None,
        gid: int | None = None,
        mode: int | None = None,
        mtime: int | None = None,
        link_key: tuple[int, ...] = (),
    ) -> _TarEntry | None:
        fmt = stat.S_IFMT(st.st_mode)
        perm = stat.S_IMODE(st.st_mode) if mode is None else mode
        e = _TarEntry(
            name=name,
            typeflag=_REGTYPE,
            mode=perm,
            uid=st.st_uid if uid is None else uid,
            gid=st.st_gid if gid is None else gid,
            mtime=self.mtime(st.st_mtime_ns // 1_000_000_000 if mtime is None else mtime),
            xattrs=xattrs or None,
        )
        if fmt == stat.S_IFDIR:
            e.typeflag = _DIRTYPE
            e.name = name + b"/"
            return e
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino, *link_key)
            first = self.inodes.get(key)
            if first is not None:
                e.typeflag, e.linkname = _LNKTYPE, first
                return e
            self.inodes[key] = name
        if fmt == stat.S_IFREG:
            e.size, e.source = st.st_size, path
        elif fmt == stat.S_IFLNK:
            e.typeflag, e.linkname = _SYMTYPE, os.readlink(path)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            e.typeflag = _CHRTYPE if fmt == stat.S_IFCHR else _BLKTYPE
            e.devmajor, e.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif fmt == stat.S_IFIFO:
            e.typeflag = _FIFOTYPE
        else:  # sockets (and anything else) cannot be stored in a tar
            return None
        return e

    def marker(self, name: bytes, mtime: int) -> _TarEntry:
        """A whiteout or opaque marker: an empty regular file, mode 0, root-owned."""
        return _TarEntry(
            name=name, typeflag=_REGTYPE, mode=0, uid=0, gid=0, mtime=self.mtime(mtime)
        )


def _walk_directory(
    root: Path, factory: _EntryFactory, overlay: bool, add: Callable[[_TarEntry], None]
) -> None:
    """Emit every entry under ``root`` in walk order (overlay upperdir semantics if asked)."""
    base = os.fsencode(root)
    # explicit stack of (absolute dir, relative prefix, sorted names, next index)
    stack: list[tuple[bytes, bytes, list[bytes], list[int]]] = []

    def push(abs_dir: bytes, prefix: bytes) -> None:
        names = sorted(os.listdir(abs_dir))
        stack.append((abs_dir, prefix, names, [0]))

    push(base, b"")
    while stack:
        abs_dir, prefix, names, idx = stack[-1]
        if idx[0] >= len(names):
            stack.pop()
            continue
        name = names[idx[0]]
        idx[0] += 1
        path = abs_dir + b"/" + name
        rel = prefix + name
        st = os.lstat(path)
        fmt = stat.S_IFMT(st.st_mode)
        if overlay and (
            (fmt == stat.S_IFCHR and st.st_rdev == 0)
            or (fmt == stat.S_IFREG and st.st_size == 0 and _is_xwhiteout(path))
        ):
            add(factory.marker(prefix + WHITEOUT_PREFIX.encode() + name, st.st_mtime_ns // 10**9))
            continue
        raw_xattrs = _read_xattrs(path)
        if overlay and raw_xattrs:
            bad = [k for k, _ in raw_xattrs if k in _UNSUPPORTED_OVERLAY_XATTRS]
            if bad:
                raise ArchiveError(
                    f"{os.fsdecode(path)!r} carries overlayfs {bad[0]}: mount the overlay with "
                    "redirect_dir=off,metacopy=off so the upper directory describes the change"
                )
        xattrs = [(k, v) for k, v in raw_xattrs if _keep_xattr(k)]
        entry = factory.from_stat(rel, path, st, xattrs)
        if entry is None:
            continue
        add(entry)
        if fmt == stat.S_IFDIR:
            if overlay and any(k in _OPAQUE_XATTRS and v == b"y" for k, v in raw_xattrs):
                add(factory.marker(rel + b"/" + OPAQUE_MARKER.encode(), st.st_mtime_ns // 10**9))
            push(path, rel + b"/")


def _entries_to_tar(entries: Iterable[LayerEntry], factory: _EntryFactory) -> list[_TarEntry]:
    # Sort first, then build: hard links are detected in walk order, so the first path in
    # the tar is the one that carries the data.
    keyed: list[tuple[tuple[bytes, ...], LayerEntry, bytes]] = []
    for ent in entries:
        rel = clean_member_name(ent.path)
        if rel == "":
            raise ValueError(f"layer entry {ent.path!r} names the layer root itself")
        name = os.fsencode(rel)
        if ent.kind == "whiteout":
            head, base = split_parent(rel)
            prefix = os.fsencode(head) + b"/" if head else b""
            name = prefix + WHITEOUT_PREFIX.encode() + os.fsencode(base)
        elif ent.kind == "opaque":
            name = name + b"/" + OPAQUE_MARKER.encode()
        keyed.append((_sort_key(name), ent, name))
    keyed.sort(key=lambda k: k[0])
    for a, b in itertools.pairwise(keyed):
        if a[0] == b[0]:
            raise ValueError(f"layer entry {b[1].path!r} appears twice")
    # an explicit hard link must name a regular file that comes earlier in the tar
    position = {k[2]: i for i, k in enumerate(keyed)}
    for i, (_, ent, _) in enumerate(keyed):
        if ent.kind == "hardlink" and ent.link_target:
            target = os.fsencode(clean_member_name(ent.link_target))
            j = position.get(target)
            if j is None or j > i or keyed[j][1].kind not in (None, "file"):
                raise ValueError(
                    f"layer entry {ent.path!r}: hard link target {ent.link_target!r} must be a "
                    "file of this layer that sorts before the link"
                )
    return [_entry_to_tar(ent, name, factory) for _, ent, name in keyed]


def _entry_to_tar(ent: LayerEntry, name: bytes, factory: _EntryFactory) -> _TarEntry:
    kind = ent.kind
    if kind in ("whiteout", "opaque"):
        return factory.marker(name, ent.mtime or 0)
    if ent.source is not None:
        src = os.fsencode(ent.source)
        st = os.lstat(src)
        if kind == "hardlink" or (
            kind is not None and kind != _KIND_OF_FMT.get(stat.S_IFMT(st.st_mode))
        ):
            raise ValueError(
                f"layer entry {ent.path!r}: kind {kind!r} does not match its source "
                f"{str(ent.source)!r}"
            )
        xattrs = (
            sorted((k, bytes(v)) for k, v in ent.xattrs.items())
            if ent.xattrs is not None
            else [(k, v) for k, v in _read_xattrs(src) if _keep_xattr(k)]
        )
        # two paths of one inode become a hard link only when they get the same metadata
        link_key = tuple(-1 if v is None else v for v in (ent.uid, ent.gid, ent.mode, ent.mtime))
        e = factory.from_stat(
            name, src, st, xattrs, uid=ent.uid, gid=ent.gid, mode=ent.mode, mtime=ent.mtime,
            link_key=link_key,
        )  # fmt: skip
        if e is None:
            raise ValueError(f"layer entry {ent.path!r}: {str(ent.source)!r} is a socket")
        if ent.link_target is not None and e.typeflag == _SYMTYPE:
            e.linkname = os.fsencode(ent.link_target)
        return e
    kind = kind or "file"
    e = _TarEntry(
        name=name + b"/" if kind == "dir" else name,
        typeflag=_TYPEFLAG_OF_KIND[kind],
        mode=(0o755 if kind == "dir" else 0o644) if ent.mode is None else ent.mode,
        uid=ent.uid or 0,
        gid=ent.gid or 0,
        mtime=factory.mtime(ent.mtime or 0),
        xattrs=sorted((k, bytes(v)) for k, v in (ent.xattrs or {}).items()) or None,
    )
    if kind == "file":
        e.content = ent.content or b""
        e.size = len(e.content)
    elif kind in ("symlink", "hardlink"):
        if not ent.link_target:
            raise ValueError(f"layer entry {ent.path!r}: a {kind} needs link_target")
        target = ent.link_target if kind == "symlink" else clean_member_name(ent.link_target)
        e.linkname = os.fsencode(target)
    elif kind in ("char", "block"):
        e.devmajor, e.devminor = ent.rdev
    return e


_KIND_OF_FMT = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
}
_TYPEFLAG_OF_KIND = {
    "file": _REGTYPE,
    "dir": _DIRTYPE,
    "symlink": _SYMTYPE,
    "hardlink": _LNKTYPE,
    "fifo": _FIFOTYPE,
    "char": _CHRTYPE,
    "block": _BLKTYPE,
}


# ---------------------------------------------------------------------------------------
# LayerWriter
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _source_errors() -> Iterator[None]:
    """A source file that is missing or unreadable is the user's error, not a traceback."""
    try:
        yield
    except (FileNotFoundError, PermissionError) as e:
        what = os.fsdecode(e.filename) if e.filename is not None else "a source file"
        raise StoreError(f"cannot write layer: {what!r}: {e.strerror}") from None


class LayerWriter:
    """Writes layer blobs into a blob store with one compression setting."""

    def __init__(
        self,
        blobs: BlobSink,
        *,
        compression: str = "gzip",
        level: int | None = None,
        source_date_epoch: int | None = None,
        media_type_family: str = "oci",
        threads: int | None = None,
        block_size: int = BLOCK_SIZE,
    ) -> None:
        if compression == "uncompressed":  # BuildKit's name (--output compression=…)
            compression = "none"
        self.media_type = layer_media_type(compression, media_type_family)
        self.blobs = blobs
        self.compression = compression
        if compression == "gzip":
            self.level = GZIP_DEFAULT_LEVEL if level is None else level
            if not 0 <= self.level <= 9:
                raise ValueError(f"gzip level {self.level} is outside 0..9")
        elif compression == "zstd":
            self.level = ZSTD_DEFAULT_LEVEL if level is None else level
            if not 1 <= self.level <= 22:
                raise ValueError(f"zstd level {self.level} is outside 1..22")
        else:
            self.level = 0
        if block_size < 65536 or block_size % 512:
            raise ValueError("block_size must be a multiple of 512 and at least 64 KiB")
        self.source_date_epoch = source_date_epoch
        self.threads = threads or _default_threads()
        self.block_size = block_size

    def write_directory(self, source: Path, *, overlay: bool = True) -> Layer:
        """A layer of everything under ``source`` (an overlay upperdir when ``overlay``)."""
        source = Path(source)
        if not source.is_dir():
            raise StoreError(f"layer source {str(source)!r} is not a directory")
        factory = _EntryFactory(self.source_date_epoch)
        return self._run(lambda tar: _walk_directory(source, factory, overlay, tar.add))

    def write_entries(self, entries: Iterable[LayerEntry]) -> Layer:
        """A layer of exactly ``entries`` (sorted into walk order; duplicates refused)."""
        factory = _EntryFactory(self.source_date_epoch)
        with _source_errors():
            records = _entries_to_tar(entries, factory)

        def produce(tar: _TarStream) -> None:
            for rec in records:
                tar.add(rec)

        return self._run(produce)

    def _run(self, produce: Callable[[_TarStream], None]) -> Layer:
        writer = self.blobs.writer()
        out = _CountingSink(writer)
        pipeline: _Pipeline
        try:
            if self.compression == "gzip":
                pipeline = _GzipPipeline(out, self.level, self.threads)
            elif self.compression == "zstd":
                pipeline = _ZstdPipeline(out, self.level, self.threads)
            else:
                pipeline = _PlainPipeline(out)
        except BaseException:
            out.close()
            writer.abort()
            raise
        diff = Hasher()
        hashing = _Stage(diff.update, "layer-diff-id")

        def sink(block: bytearray) -> None:
            hashing.put(block)
            pipeline.feed(block)

        try:
            tar = _TarStream(sink, self.block_size)
            with _source_errors():
                produce(tar)
            tar.finish()
            pipeline.finish()
            out.close()
            hashing.close()
            digest = writer.commit()
        except BaseException:
            pipeline.close()
            with contextlib.suppress(BaseException):
                out.close()
            with contextlib.suppress(BaseException):
                hashing.close()
            writer.abort()
            raise
        return Layer(
            digest=digest, diff_id=diff.digest(), size=out.size, media_type=self.media_type
        )


def write_layer(
    source: Path,
    blobs: BlobSink,
    *,
    compression: str = "gzip",
    level: int | None = None,
    source_date_epoch: int | None = None,
    overlay: bool = True,
    media_type_family: str = "oci",
    threads: int | None = None,
) -> Layer:
    """Write directory ``source`` (typically an overlayfs upperdir) as a layer blob."""
    writer = LayerWriter(
        blobs,
        compression=compression,
        level=level,
        source_date_epoch=source_date_epoch,
        media_type_family=media_type_family,
        threads=threads,
    )
    return writer.write_directory(source, overlay=overlay)


def write_layer_from_entries(
    entries: Iterable[LayerEntry],
    blobs: BlobSink,
    *,
    compression: str = "gzip",
    level: int | None = None,
    source_date_epoch: int | None = None,
    media_type_family: str = "oci",
    threads: int | None = None,
) -> Layer:
    """Write a layer of exactly ``entries`` (COPY results, tree-walk diffs)."""
    writer = LayerWriter(
        blobs,
        compression=compression,
        level=level,
        source_date_epoch=source_date_epoch,
        media_type_family=media_type_family,
        threads=threads,
    )
    return writer.write_entries(entries)


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _PrefixedReader(io.RawIOBase):
    """``head`` followed by the rest of ``inner`` (lets us sniff magic bytes on any stream)."""

    def __init__(self, head: bytes, inner: BinaryIO) -> None:
        self._head = head
        self._inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._inner.read(len(buf))
        buf[: len(data)] = data
        return len(data)


class _ReadAhead(io.RawIOBase):
    """Decompresses and hashes on a thread while the caller writes files.

    The thread reads ``inner`` to its end, hashing every byte (the diff ID covers what
    follows the end-of-archive marker too), and hands 1 MiB chunks over a bounded queue.
    Its errors are raised by :meth:`readinto` in the reading thread.
    """

    _CHUNK = 1 << 20

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self.hasher = Hasher()
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=8)
        self._stop = threading.Event()
        self._cur = memoryview(b"")
        self._eof = False
        self._thread = threading.Thread(target=self._run, name="layer-read-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                block = self._inner.read(self._CHUNK)
                if block:
                    self.hasher.update(block)
                if not self._put(block) or not block:
                    return
        except BaseException as e:
            self._put(e)

    def _put(self, item: bytes | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._cur:
            if self._eof:
                return 0
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if not item:
                self._eof = True
                return 0
            self._cur = memoryview(item)
        n = min(len(buf), len(self._cur))
        buf[:n] = self._cur[:n]
        self._cur = self._cur[n:]
        return n

    def drain(self) -> None:
        """Consume the rest, so the hash covers the whole stream."""
        self._cur = memoryview(b"")
        sink = bytearray(self._CHUNK)
        while self.readinto(sink):
            pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def open_uncompressed(raw: BinaryIO) -> BinaryIO:
    """A stream of the tar inside ``raw``: gzip, zstd or plain, told apart by magic bytes."""
    head = raw.read(4)
    stream: BinaryIO = io.BufferedReader(_PrefixedReader(head, raw), 1 << 20)
    if head.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    if head == _ZSTD_MAGIC:
        return io.BufferedReader(_ZstdReader(stream), 1 << 20)
    return stream


class _ZstdReader(io.RawIOBase):
    """Zstd frames decoded one after another; a stream that stops inside a frame is an
    error (``ZstdDecompressor.stream_reader`` silently returns what it has)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._in_frame = False
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            chunk = self._raw.read(1 << 20)
            if not chunk:
                if self._in_frame:
                    raise ArchiveError("zstd stream is truncated (it ends inside a frame)")
                return 0
            out = []
            while chunk:
                self._in_frame = True
                out.append(self._obj.decompress(chunk))
                if not self._obj.eof:
                    break
                self._in_frame = False
                chunk = self._obj.unused_data
                self._obj = self._dctx.decompressobj()
            self._buf = memoryview(b"".join(out))
        n = min(len(buf), len(self._buf))
        buf[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


_HEADER_ONLY = frozenset(b"123456")  # link, symlink, char, block, dir, fifo: no data
_REGULAR = frozenset((ord("0"), 0, ord("7")))
_POSIX_MAGIC = b"ustar\x00"


@dataclass(slots=True)
class TarMember:
    """One entry of a tar stream after PAX / GNU extension headers were folded in."""

    name: str
    type: int  # the typeflag byte
    mode: int
    uid: int
    gid: int
    size: int
    mtime: float
    linkname: str
    devmajor: int
    devminor: int
    xattrs: list[tuple[str, bytes]]
    sparse: bool = False

    def isdir(self) -> bool:
        return self.type == 0x35

    def isreg(self) -> bool:
        return self.type in _REGULAR

    def issym(self) -> bool:
        return self.type == 0x32

    def islnk(self) -> bool:
        return self.type == 0x31

    def ischr(self) -> bool:
        return self.type == 0x33

    def isblk(self) -> bool:
        return self.type == 0x34

    def isfifo(self) -> bool:
        return self.type == 0x36


def _number(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for values octal cannot hold
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] == 0xFF else value
    text = field.split(b"\x00", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise ArchiveError(f"tar header field {what} is not a number: {text!r}") from None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> list[tuple[str, bytes]]:
    out = []
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # some writers pad the record block with NULs
            break
        sp = data.find(b" ", pos)
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise ArchiveError("malformed PAX extended header") from None
        record = data[sp + 1 : pos + length]
        if length <= 0 or sp < 0 or not record.endswith(b"\n") or b"=" not in record:
            raise ArchiveError("malformed PAX extended header")
        key, _, value = record[:-1].partition(b"=")
        out.append((_text(key), value))
        pos += length
    return out


class TarStreamReader:
    """A forward-only tar parser (ustar, PAX, GNU long names) over a buffered stream.

    ``tarfile`` in stream mode re-slices its whole read buffer on every header, which made
    applying a layer of many small files several times slower than ``tar -x``; this reads
    512-byte headers straight from a :class:`io.BufferedReader`. Members are yielded in
    order; the caller reads a regular member's data with :meth:`read` before the next one.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._f = stream
        self._left = 0  # data bytes of the current member not yet read
        self._pad = 0
        self._global: dict[str, bytes] = {}
        self.offset = 0

    def _read_exact(self, n: int) -> bytes:
        data = self._f.read(n)
        if len(data) != n:
            raise ArchiveError(f"tar stream ends early at offset {self.offset + len(data)}")
        self.offset += n
        return data

    def _skip_rest(self) -> None:
        n = self._left + self._pad
        self._left = self._pad = 0
        while n:
            n -= len(self._read_exact(min(n, 1 << 20)))

    def read(self, n: int = 1 << 20) -> bytes:
        """Up to ``n`` bytes of the current member's data; ``b""`` at its end."""
        if self._left == 0:
            return b""
        data = self._read_exact(min(n, self._left))
        self._left -= len(data)
        return data

    def __iter__(self) -> Iterator[TarMember]:
        pax: dict[str, bytes] = {}
        longname: bytes | None = None
        longlink: bytes | None = None
        while True:
            self._skip_rest()
            start = self.offset
            block = self._f.read(512)
            if len(block) == 0:
                if start == 0:
                    raise ArchiveError("layer is empty: not even an end-of-archive marker")
                return  # no end-of-archive marker: accepted, as GNU tar does
            if len(block) != 512:
                raise ArchiveError(f"tar stream ends inside a header at offset {start}")
            self.offset += 512
            if block == _ZERO_BLOCK_PAIR[:512]:
                return
            stored = _number(block[148:156], "chksum")
            unsigned = sum(block[:148]) + 256 + sum(block[156:])
            if stored != unsigned:
                signed = sum(struct.unpack("148b", block[:148])) + 256
                signed += sum(struct.unpack("356b", block[156:]))
                if stored != signed:
                    raise ArchiveError(f"tar header checksum mismatch at offset {start}")
            typeflag = block[156]
            size = _number(block[124:136], "size")
            if typeflag in (0x78, 0x67, 0x4C, 0x4B):  # x, g, L, K: extension headers
                if size > 64 << 20:
                    raise ArchiveError(f"tar extension header of {size} bytes at offset {start}")
                data = self._read_exact(size)
                self._pad = -size % 512
                if typeflag == 0x78:
                    pax.update(_pax_records(data))
                elif typeflag == 0x67:
                    self._global.update(_pax_records(data))
                elif typeflag == 0x4C:
                    longname = data.split(b"\x00", 1)[0]
                else:
                    longlink = data.split(b"\x00", 1)[0]
                continue
            name = block[0:100].split(b"\x00", 1)[0]
            if block[257:263] == _POSIX_MAGIC:
                prefix = block[345:500].split(b"\x00", 1)[0]
                if prefix:
                    name = prefix + b"/" + name
            if longname is not None:
                name = longname
            linkname = longlink if longlink is not None else block[157:257].split(b"\x00", 1)[0]
            if typeflag == 0x30 and name.endswith(b"/"):
                typeflag = 0x35  # pre-POSIX tars mark directories by the trailing slash
            merged = {**self._global, **pax} if self._global else pax
            member = TarMember(
                name=_text(merged.get("path", name)),
                type=typeflag,
                mode=_number(block[100:108], "mode"),
                uid=_number(block[108:116], "uid"),
                gid=_number(block[116:124], "gid"),
                size=size,
                mtime=float(_number(block[136:148], "mtime")),
                linkname=_text(merged.get("linkpath", linkname)),
                devmajor=_number(block[329:337], "devmajor"),
                devminor=_number(block[337:345], "devminor"),
                xattrs=[],
            )
            if merged:
                _apply_pax(member, merged)
            pax, longname, longlink = {}, None, None
            if member.type == 0x53:  # old GNU sparse
                member.sparse = True
            data_size = 0 if member.type in _HEADER_ONLY else member.size
            self._left, self._pad = data_size, -data_size % 512
            yield member


def _apply_pax(m: TarMember, records: dict[str, bytes]) -> None:
    try:
        for key, value in records.items():
            if key == "size":
                m.size = int(value)
            elif key == "uid":
                m.uid = int(value)
            elif key == "gid":
                m.gid = int(value)
            elif key == "mtime":
                m.mtime = float(value)
            elif key.startswith("SCHILY.xattr."):
                m.xattrs.append((key[13:], value))
            elif key.startswith("LIBARCHIVE.xattr."):
                name = urllib.parse.unquote(key[17:])
                m.xattrs.append((name, base64.b64decode(value + b"=" * (-len(value) % 4))))
            elif key.startswith("GNU.sparse."):
                m.sparse = True
    except ValueError as e:
        raise ArchiveError(f"entry {m.name!r}: bad PAX record: {e}") from None
    if m.size < 0:
        raise ArchiveError(f"entry {m.name!r}: negative size")


# PATH_MAX: descriptor-relative walking would let deeper trees through, which no other
# tool could then open or delete
_MAX_NAME = 4096
# deeper trees cannot be removed again by recursive walkers (shutil.rmtree among them)
_MAX_DEPTH = 512
# errors an entry itself causes (a name too long, a link to a directory, …)
_ENTRY_ERRNOS = frozenset(
    {errno.ENAMETOOLONG, errno.EINVAL, errno.EEXIST, errno.ENOTDIR, errno.EISDIR,
     errno.ELOOP, errno.EMLINK, errno.ENOTEMPTY, errno.EXDEV}
)  # fmt: skip


class LayerReader:
    """Applies layer blobs onto directories, never writing outside them.

    ``overlay_form`` unpacks a layer on its own (a snapshot used as an overlayfs lowerdir):
    whiteouts become ``0/0`` character devices and opaque markers the
    ``trusted.overlay.opaque=y`` xattr (``user.overlay.opaque`` when not root, for a
    ``userxattr`` overlay mount) instead of deleting anything. Ownership is applied when
    running as root (``same_owner``); device nodes are created only as root, else skipped
    with a warning.
    """

    def __init__(self, *, overlay_form: bool = False, same_owner: bool | None = None) -> None:
        self.overlay_form = overlay_form
        self.is_root = os.geteuid() == 0
        self.same_owner = self.is_root if same_owner is None else same_owner
        self.opaque_xattr = "trusted.overlay.opaque" if self.is_root else "user.overlay.opaque"

    def apply(
        self, blob: BinaryIO | Path, target: Path, *, media_type: str | None = None
    ) -> ApplyStats:
        if media_type is not None and not MediaType.is_layer(media_type):
            raise ArchiveError(f"{media_type!r} is not a layer media type")
        if isinstance(blob, (str, Path)):
            with open(blob, "rb") as f:
                return self._apply_stream(f, Path(target))
        return self._apply_stream(blob, Path(target))

    def _apply_stream(self, raw: BinaryIO, target: Path) -> ApplyStats:
        target.mkdir(parents=True, exist_ok=True)
        stats = ApplyStats()
        try:
            tar_stream = open_uncompressed(raw)
        except (OSError, zstandard.ZstdError) as e:
            raise ArchiveError(f"layer cannot be decompressed: {e}") from None
        hashing = _ReadAhead(tar_stream)
        with RootDir(target) as root:
            run = _Apply(self, root, stats)
            try:
                tar = TarStreamReader(io.BufferedReader(hashing, 1 << 20))
                for member in tar:
                    if len(member.name) > _MAX_NAME:
                        raise ArchiveError(
                            f"entry {member.name[:80]!r}…: name longer than {_MAX_NAME} bytes"
                        )
                    if member.name.count("/") > _MAX_DEPTH:
                        raise ArchiveError(
                            f"entry {member.name[:80]!r}…: more than {_MAX_DEPTH} directory levels"
                        )
                    try:
                        run.entry(tar, member)
                    except OSError as e:
                        if e.errno not in _ENTRY_ERRNOS:
                            raise  # the machine's problem (ENOSPC, EIO, …), not the layer's
                        raise ArchiveError(f"entry {member.name!r}: {e.strerror}") from None
                    except ValueError as e:  # a NUL in a link target or xattr name
                        raise ArchiveError(f"entry {member.name!r}: {e}") from None
                hashing.drain()
            except (EOFError, zlib.error, zstandard.ZstdError) as e:
                raise ArchiveError(f"layer is not a valid tar stream: {e}") from None
            except gzip.BadGzipFile as e:
                raise ArchiveError(f"layer gzip stream is corrupt: {e}") from None
            finally:
                hashing.stop()
            run.finish()
        stats.diff_id = hashing.hasher.digest()
        return stats


class _Apply:
    """State of one layer application."""

    def __init__(self, reader: LayerReader, root: RootDir, stats: ApplyStats) -> None:
        self.r = reader
        self.root = root
        self.stats = stats
        # canonical paths this layer wrote: whiteouts and opaque markers only hide what
        # came from lower layers, whatever their position in the tar
        self.created: set[str] = set()
        self.dir_times: list[tuple[str, int]] = []
        self._warned: set[str] = set()

    def warn(self, key: str, message: str) -> None:
        self.stats.warnings.append(message)
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)

    def entry(self, tar: TarStreamReader, m: TarMember) -> None:
        name = m.name
        rel = clean_member_name(name)
        self.stats.entries += 1
        if rel == "":
            return  # the root directory itself ("./"): left as it is
        head, base = split_parent(rel)
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(name, head, base)
            return
        if m.sparse:
            raise ArchiveError(f"entry {name!r}: sparse files are not supported in layers")
        if m.islnk():
            self.hardlink(name, rel, m)
            return
        parent = self.root.parent_of(rel, entry=name, create=True)
        assert parent is not None
        pfd, pcanon, base = parent
        try:
            canon = f"{pcanon}/{base}" if pcanon else base
            if m.isdir():
                self.directory(pfd, base, canon, m)
            elif m.isreg():
                self.regular(tar, pfd, base, m)
            elif m.issym():
                self.symlink(pfd, base, m)
            elif m.ischr() or m.isblk() or m.isfifo():
                if not self.node(pfd, base, m):
                    return
            else:
                raise ArchiveError(f"entry {name!r}: unsupported tar entry type {chr(m.type)!r}")
            self.created.add(canon)
        finally:
            os.close(pfd)

    # -- helpers ----------------------------------------------------------------------

    def _clear(self, pfd: int, base: str, *, keep_dir: bool = False) -> bool:
        """Remove what is at ``base`` unless it is a directory and ``keep_dir``; True if a dir stays."""
        st = self.root.lstat(pfd, base)
        if st is None:
            return False
        if keep_dir and stat.S_ISDIR(st.st_mode):
            return True
        self.root.remove(pfd, base, st)
        return False

    def _xattrs(self, m: TarMember, setter: Callable[[str, bytes], None]) -> None:
        for key, value in m.xattrs:
            if not _keep_xattr(key):
                self.warn("overlay-xattr", f"entry {m.name!r}: ignored xattr {key}")
                continue
            try:
                setter(key, value)
            except OSError as e:
                self.warn(f"xattr:{key}", f"entry {m.name!r}: cannot set xattr {key}: {e.strerror}")

    def _owner(self, m: TarMember, fn: Callable[[int, int], None]) -> None:
        if self.r.same_owner:
            try:
                fn(m.uid, m.gid)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.EPERM):
                    raise
                # an id outside a user namespace's mapping: keep going, as rootless
                # Docker and Podman do, but say so
                self.warn(
                    "chown", f"entry {m.name!r}: cannot chown to {m.uid}:{m.gid}: {e.strerror}"
                )

    @staticmethod
    def _ns(m: TarMember) -> int:
        return round(float(m.mtime) * 1_000_000_000)

    # -- entry kinds ------------------------------------------------------------------

    def directory(self, pfd: int, base: str, canon: str, m: TarMember) -> None:
        if not self._clear(pfd, base, keep_dir=True):
            os.mkdir(base, 0o700, dir_fd=pfd)
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            self._owner(m, lambda u, g: os.fchown(fd, u, g))
            self._xattrs(m, lambda k, v: os.setxattr(fd, k, v))
            os.fchmod(fd, m.mode & 0o7777)
        finally:
            os.close(fd)
        self.dir_times.append((canon, self._ns(m)))
        self.stats.dirs += 1

    def regular(self, tar: TarStreamReader, pfd: int, base: str, m: TarMember) -> None:
        self._clear(pfd, base)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, 0o600, dir_fd=pfd)
        try:
            while block := tar.read():
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view) :]
            self._owner(m, lambda u, g: os.fchown(fd, u, g))
            self._xattrs(m, lambda k, v: os.setxattr(fd, k, v))
            os.fchmod(fd, m.mode & 0o7777)
            ns = self._ns(m)
            os.utime(fd, ns=(ns, ns))
        finally:
            os.close(fd)
        self.stats.files += 1
        self.stats.bytes += m.size

    def symlink(self, pfd: int, base: str, m: TarMember) -> None:
        self._clear(pfd, base)
        os.symlink(m.linkname, base, dir_fd=pfd)
        self._owner(m, lambda u, g: os.chown(base, u, g, dir_fd=pfd, follow_symlinks=False))
        proc = self.root.proc_path(pfd, base)
        self._xattrs(m, lambda k, v: os.setxattr(proc, k, v, follow_symlinks=False))
        ns = self._ns(m)
        os.utime(base, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)
        self.stats.symlinks += 1

    def node(self, pfd: int, base: str, m: TarMember) -> bool:
        if m.isfifo():
            self._clear(pfd, base)
            os.mkfifo(base, 0o600, dir_fd=pfd)
        else:
            if not self.r.is_root:
                self.stats.skipped_devices += 1
                self.warn("device", f"entry {m.name!r}: device node skipped (not running as root)")
                return False
            self._clear(pfd, base)
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            try:
                os.mknod(base, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=pfd)
            except PermissionError:  # root in a user namespace: no CAP_MKNOD
                self.stats.skipped_devices += 1
                self.warn("device", f"entry {m.name!r}: device node skipped (mknod not permitted)")
                return False
        self._owner(m, lambda u, g: os.chown(base, u, g, dir_fd=pfd, follow_symlinks=False))
        proc = self.root.proc_path(pfd, base)
        self._xattrs(m, lambda k, v: os.setxattr(proc, k, v, follow_symlinks=False))
        # chmod through an O_PATH descriptor of the node itself, never a path that could
        # have become a symlink
        pathfd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            os.chmod(f"/proc/self/fd/{pathfd}", m.mode & 0o7777)
        finally:
            os.close(pathfd)
        ns = self._ns(m)
        os.utime(base, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)
        self.stats.devices += 1
        return True

    def hardlink(self, name: str, rel: str, m: TarMember) -> None:
        try:
            target_rel = clean_member_name(m.linkname)
        except UnsafePathError as e:
            raise UnsafePathError(name, f"hard link target {m.linkname!r}: {e.reason}") from None
        if target_rel == "":
            raise ArchiveError(f"entry {name!r}: hard link to the root directory")
        dest = self.root.parent_of(rel, entry=name, create=True)
        assert dest is not None
        pfd, pcanon, base = dest
        try:
            existing = self.root.lstat(pfd, base)
            src = self.root.parent_of(target_rel, entry=name)
            if src is None:
                raise ArchiveError(
                    f"entry {name!r}: hard link target {m.linkname!r} does not exist"
                )
            sfd, _, sbase = src
            try:
                tst = self.root.lstat(sfd, sbase)
                if tst is None:
                    raise ArchiveError(
                        f"entry {name!r}: hard link target {m.linkname!r} does not exist"
                    )
                if stat.S_ISDIR(tst.st_mode):
                    raise ArchiveError(f"entry {name!r}: hard link to directory {m.linkname!r}")
                if existing is not None:
                    if (existing.st_dev, existing.st_ino) == (tst.st_dev, tst.st_ino):
                        return
                    if stat.S_ISDIR(existing.st_mode):
                        # removing a directory closes cached descriptors; ours are dups
                        self.root.remove(pfd, base, existing)
                    else:
                        os.unlink(base, dir_fd=pfd)
                os.link(sbase, base, src_dir_fd=sfd, dst_dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(sfd)
            self.created.add(f"{pcanon}/{base}" if pcanon else base)
            self.stats.hardlinks += 1
        finally:
            os.close(pfd)

    def whiteout(self, name: str, head: str, base: str) -> None:
        if base == OPAQUE_MARKER:
            self.opaque(name, head)
            return
        if base.startswith(_AUFS_META_PREFIX):
            return  # aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): ignored like Docker does
        hidden = base[len(WHITEOUT_PREFIX) :]
        if hidden in ("", ".", ".."):
            raise UnsafePathError(name, "whiteout of an invalid name")
        found = self.root.resolve_dir(head, entry=name, create=self.r.overlay_form)
        if found is None:
            return  # nothing below to hide
        dfd, dcanon = found
        try:
            canon = f"{dcanon}/{hidden}" if dcanon else hidden
            if canon in self.created:
                return  # the layer itself re-created it: the whiteout only hides lower content
            if self.r.overlay_form:
                if self.root.lstat(dfd, hidden) is None:
                    os.mknod(hidden, stat.S_IFCHR, os.makedev(0, 0), dir_fd=dfd)
                    self.created.add(canon)
            else:
                st = self.root.lstat(dfd, hidden)
                if st is not None:
                    self.root.remove(dfd, hidden, st)
            self.stats.whiteouts += 1
        finally:
            os.close(dfd)

    def opaque(self, name: str, head: str) -> None:
        found = self.root.resolve_dir(head, entry=name, create=self.r.overlay_form)
        if found is None:
            return
        dfd, dcanon = found
        try:
            if self.r.overlay_form:
                try:
                    os.setxattr(dfd, self.r.opaque_xattr, b"y")
                except PermissionError:
                    if self.r.opaque_xattr == "user.overlay.opaque":
                        raise
                    # root of a user namespace: trusted.* is not ours to set; a
                    # "userxattr" overlay mount reads user.overlay.* instead
                    self.r.opaque_xattr = "user.overlay.opaque"
                    os.setxattr(dfd, self.r.opaque_xattr, b"y")
            else:
                self._clear_lower(dfd, dcanon)
            self.stats.opaque_dirs += 1
        finally:
            os.close(dfd)

    def _clear_lower(self, dfd: int, dcanon: str) -> None:
        """Remove everything under ``dfd`` this layer did not write (recursively)."""
        for child in os.listdir(dfd):
            canon = f"{dcanon}/{child}" if dcanon else child
            st = self.root.lstat(dfd, child)
            if st is None:
                continue
            if canon not in self.created:
                self.root.remove(dfd, child, st)
            elif stat.S_ISDIR(st.st_mode):
                cfd = os.open(
                    child, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd
                )
                try:
                    self._clear_lower(cfd, canon)
                finally:
                    os.close(cfd)

    def finish(self) -> None:
        # directory mtimes last: creating their contents changed them
        for canon, ns in reversed(self.dir_times):
            found = self.root.parent_of(canon, entry=canon)
            if found is None:
                continue
            pfd, _, base = found
            try:
                st = self.root.lstat(pfd, base)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    os.utime(base, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(pfd)


def apply_layer(
    blob: BinaryIO | Path,
    target: Path,
    *,
    media_type: str | None = None,
    overlay_form: bool = False,
    expected_diff_id: Digest | None = None,
) -> ApplyStats:
    """Unpack a layer blob onto ``target`` (see :class:`LayerReader`).

    With ``expected_diff_id`` the uncompressed stream is verified after unpacking
    (:class:`DigestMismatch`; the caller discards the target).
    """
    stats = LayerReader(overlay_form=overlay_form).apply(blob, target, media_type=media_type)
    if expected_diff_id is not None and stats.diff_id != expected_diff_id:
        raise DigestMismatch(expected_diff_id, stats.diff_id, what="layer diff ID")
    return stats
