"""Build contexts: where a build's files come from, turned into one local directory.

``pybuild build CONTEXT`` accepts, like ``docker build``:

* a local directory;
* ``-``: standard input holds either a Dockerfile (then there is no context) or a tar
  archive, plain or compressed (then it is the context), told apart by content;
* a git URL (``https://host/repo.git#ref:subdir``, ``git@host:repo.git#ref``,
  ``git://host/repo#ref``): a shallow clone of the ref with the git CLI, ``.git`` removed;
* an ``http(s)://`` URL of a tarball (or of a plain Dockerfile, which then is the only input).

Every non-directory source is materialised into a private temporary directory, so the rest
of the builder only ever reads a directory. Archives are extracted with tarfile's ``data``
filter: no absolute paths, no ``..``, no links pointing outside, no device nodes.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from builder.errors import ContextError

_GIT_SCHEMES = ("git://", "git@", "ssh://")
# A URL is a git repository when it says so, as BuildKit's `IsGitURL` decides.
_GIT_HTTP_RE = re.compile(r"^https?://[^#]+\.git(?:#.*)?$|^https?://(?:github\.com|gitlab\.com)/")


@dataclass(frozen=True)
class ContextSource:
    """Where the context comes from, as parsed from the CONTEXT argument."""

    kind: str  # "dir" | "stdin" | "git" | "url"
    location: str
    ref: str | None = None
    subdir: str | None = None


def classify(spec: str) -> ContextSource:
    """Tell what kind of context ``spec`` names (no I/O)."""
    if spec == "-":
        return ContextSource("stdin", "-")
    if spec.startswith(_GIT_SCHEMES) or _GIT_HTTP_RE.match(spec):
        url, _, fragment = spec.partition("#")
        ref, _, subdir = fragment.partition(":")
        return ContextSource("git", url, ref or None, subdir.strip("/") or None)
    if spec.startswith(("http://", "https://")):
        return ContextSource("url", spec)
    return ContextSource("dir", spec)


@dataclass
class MaterializedContext:
    """A context as a local directory (``None`` when the build has no context)."""

    root: Path | None
    # The Dockerfile text when the source itself was a Dockerfile (stdin or URL).
    dockerfile_text: str | None = None


_TAR_MAGIC_OFFSET = 257


def _decompressor(head: bytes) -> str | None:
    """The compression of an archive by its magic bytes, or None for plain data."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return None


def _open_decompressed(data: BinaryIO, compression: str | None) -> BinaryIO:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=data)  # type: ignore[return-value]
    if compression == "bzip2":
        return bz2.BZ2File(data)  # type: ignore[return-value]
    if compression == "xz":
        return lzma.LZMAFile(data)  # type: ignore[return-value]
    if compression == "zstd":
        import zstandard

        return cast(BinaryIO, zstandard.ZstdDecompressor().stream_reader(data))
    return data


def looks_like_tar(head: bytes) -> bool:
    """True when ``head`` (≥ 262 bytes, decompressed) starts a tar archive."""
    magic = head[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + 5]
    return magic == b"ustar"


class _Prepended(io.RawIOBase):
    """A stream that yields ``head`` and then the rest of ``tail`` (to sniff magic bytes)."""

    def __init__(self, head: bytes, tail: BinaryIO) -> None:
        self._head = head
        self._tail = tail

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        buffer = memoryview(buffer)
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._tail.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def extract_tar(data: BinaryIO, dest: Path) -> None:
    """Extract a (possibly compressed) tar stream into ``dest`` safely."""
    head = data.read(8)
    compression = _decompressor(head)
    stream = _open_decompressed(io.BufferedReader(_Prepended(head, data)), compression)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ContextError(f"cannot extract the context archive: {e}") from None


@contextmanager
def materialize(
    spec: str, *, stdin: BinaryIO | None = None, workdir: Path | None = None
) -> Iterator[MaterializedContext]:
    """Yield the context named by ``spec`` as a local directory; temporary copies are removed."""
    source = classify(spec)
    if source.kind == "dir":
        root = Path(source.location)
        if not root.is_dir():
            raise ContextError(f"context {spec!r} is not a directory (or does not exist)")
        yield MaterializedContext(root.resolve())
        return
    tmp = Path(tempfile.mkdtemp(prefix="pybuild-context-", dir=workdir))
    try:
        if source.kind == "stdin":
            yield _from_stream(stdin, tmp, what="standard input")
        elif source.kind == "url":
            yield _from_url(source.location, tmp)
        else:
            yield MaterializedContext(_from_git(source, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _from_stream(stream: BinaryIO | None, tmp: Path, *, what: str) -> MaterializedContext:
    if stream is None:
        raise ContextError(f"no {what} to read the context from")
    data = stream.read()
    # Compressed data is taken to be an archive; plain data is one when it has tar's magic.
    if _decompressor(data[:8]) is None and not looks_like_tar(data[:512]):
        try:
            return MaterializedContext(None, data.decode("utf-8"))
        except UnicodeDecodeError:
            raise ContextError(
                f"{what} is neither a Dockerfile (UTF-8 text) nor a tar archive"
            ) from None
    root = tmp / "context"
    root.mkdir()
    extract_tar(io.BytesIO(data), root)
    return MaterializedContext(root)


def _from_url(url: str, tmp: Path) -> MaterializedContext:
    import httpx

    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=60.0) as response:
            if response.status_code >= 400:
                raise ContextError(f"cannot download context {url}: HTTP {response.status_code}")
            path = tmp / "download"
            with open(path, "wb") as f:
                for chunk in response.iter_bytes(1 << 20):
                    f.write(chunk)
    except httpx.HTTPError as e:
        raise ContextError(f"cannot download context {url}: {e}") from None
    with open(path, "rb") as f:
        return _from_stream(f, tmp, what=url)


def _run_git(args: list[str], cwd: Path) -> None:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise ContextError(f"git {args[0]} failed: {detail[0]}")


def _from_git(source: ContextSource, tmp: Path) -> Path:
    if shutil.which("git") is None:
        raise ContextError("a git context needs the git command (apt-get install git)")
    repo = tmp / "repo"
    repo.mkdir()
    _run_git(["init", "-q"], repo)
    _run_git(["remote", "add", "origin", source.location], repo)
    ref = source.ref or "HEAD"
    # A shallow fetch of exactly the ref (branch, tag or commit), as BuildKit's git source does;
    # servers that cannot do shallow fetches (git's "dumb" HTTP transport) get a full one.
    try:
        _run_git(["fetch", "-q", "--depth", "1", "--no-tags", "origin", ref], repo)
    except ContextError as e:
        if "shallow" not in str(e):
            raise
        _run_git(["fetch", "-q", "--no-tags", "origin", ref], repo)
    _run_git(["checkout", "-q", "FETCH_HEAD"], repo)
    _run_git(["submodule", "update", "-q", "--init", "--recursive", "--depth", "1"], repo)
    shutil.rmtree(repo / ".git", ignore_errors=True)
    root = repo
    if source.subdir:
        root = (repo / source.subdir).resolve()
        if not root.is_relative_to(repo.resolve()) or not root.is_dir():
            raise ContextError(f"git context has no directory {source.subdir!r}")
    return root
