"""Build contexts: directory, stdin (Dockerfile or tar), git URL over real HTTP, tarball URL."""

from __future__ import annotations

import functools
import gzip
import http.server
import io
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.context import classify, materialize
from builder.errors import ContextError


@pytest.mark.parametrize(
    ("spec", "kind", "location", "ref", "subdir"),
    [
        (".", "dir", ".", None, None),
        ("-", "stdin", "-", None, None),
        ("https://example.com/app.git", "git", "https://example.com/app.git", None, None),
        (
            "https://example.com/app.git#v1.2:docker",
            "git",
            "https://example.com/app.git",
            "v1.2",
            "docker",
        ),
        ("git@example.com:org/app.git#main", "git", "git@example.com:org/app.git", "main", None),
        ("git://example.com/app#:sub/dir/", "git", "git://example.com/app", None, "sub/dir"),
        ("https://github.com/org/app", "git", "https://github.com/org/app", None, None),
        ("https://example.com/ctx.tar.gz", "url", "https://example.com/ctx.tar.gz", None, None),
        ("http://example.com/Dockerfile", "url", "http://example.com/Dockerfile", None, None),
    ],
)
def test_classify(spec: str, kind: str, location: str, ref: str | None, subdir: str | None) -> None:
    source = classify(spec)
    assert (source.kind, source.location, source.ref, source.subdir) == (
        kind,
        location,
        ref,
        subdir,
    )


def _tar_bytes(files: dict[str, bytes], *, compress: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw) if compress else raw


def test_directory_context(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    with materialize(str(tmp_path)) as ctx:
        assert ctx.root == tmp_path.resolve()
        assert ctx.dockerfile_text is None
    assert (tmp_path / "a.txt").exists()  # a directory context is never removed


def test_missing_directory_is_context_error(tmp_path: Path) -> None:
    with pytest.raises(ContextError, match="not a directory"), materialize(str(tmp_path / "no")):
        pass


def test_stdin_dockerfile_means_no_context() -> None:
    with materialize("-", stdin=io.BytesIO(b"FROM scratch\n")) as ctx:
        assert ctx.root is None
        assert ctx.dockerfile_text == "FROM scratch\n"


@pytest.mark.parametrize("compress", [False, True])
def test_stdin_tar_is_the_context(compress: bool) -> None:
    data = _tar_bytes({"Dockerfile": b"FROM scratch\n", "dir/f": b"x"}, compress=compress)
    with materialize("-", stdin=io.BytesIO(data)) as ctx:
        assert ctx.root is not None
        assert (ctx.root / "dir/f").read_bytes() == b"x"
        root = ctx.root
    assert not root.exists()  # temporary copies are cleaned up


@pytest.mark.parametrize("name", ["../escape", "a/../../escape"])
def test_stdin_tar_cannot_write_outside(tmp_path: Path, name: str) -> None:
    data = _tar_bytes({name: b"bad"})
    with pytest.raises(ContextError), materialize("-", stdin=io.BytesIO(data), workdir=tmp_path):
        pass
    assert not (tmp_path / "escape").exists()


def test_stdin_tar_absolute_names_stay_inside(tmp_path: Path) -> None:
    # As with `docker build -`, a leading "/" is dropped: the file lands inside the context.
    data = _tar_bytes({"/abs/inside": b"ok"})
    with materialize("-", stdin=io.BytesIO(data), workdir=tmp_path) as ctx:
        assert ctx.root is not None
        assert (ctx.root / "abs/inside").read_bytes() == b"ok"
    assert not Path("/abs/inside").exists()


def test_stdin_binary_garbage_is_rejected() -> None:
    with (
        pytest.raises(ContextError, match="neither"),
        materialize("-", stdin=io.BytesIO(b"\xff\xfe\x00garbage")),
    ):
        pass


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on loopback serving ``tmp_path/www``."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", www
    finally:
        server.shutdown()
        server.server_close()


def test_tarball_url_context(http_server: tuple[str, Path]) -> None:
    base, www = http_server
    (www / "ctx.tar.gz").write_bytes(
        _tar_bytes({"Dockerfile": b"FROM x\n", "f": b"1"}, compress=True)
    )
    with materialize(f"{base}/ctx.tar.gz") as ctx:
        assert ctx.root is not None
        assert (ctx.root / "f").read_text() == "1"


def test_url_to_plain_dockerfile(http_server: tuple[str, Path]) -> None:
    base, www = http_server
    (www / "Dockerfile").write_text("FROM scratch\n")
    with materialize(f"{base}/Dockerfile") as ctx:
        assert ctx.root is None
        assert ctx.dockerfile_text == "FROM scratch\n"


def test_url_not_found(http_server: tuple[str, Path]) -> None:
    base, _ = http_server
    with pytest.raises(ContextError, match="404"), materialize(f"{base}/missing.tar"):
        pass


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def _make_repo(tmp_path: Path, www: Path) -> None:
    """A bare repository ``www/app.git``: tag v1 (top.txt=v1) and branch main (top.txt=v2)."""
    work = tmp_path / "work"
    work.mkdir()
    _git("init", "-q", "-b", "main", cwd=work)
    (work / "docker").mkdir()
    (work / "docker" / "Dockerfile").write_text("FROM scratch\n")
    (work / "top.txt").write_text("v1")
    _git("add", ".", cwd=work)
    _git("commit", "-q", "-m", "one", cwd=work)
    _git("tag", "v1", cwd=work)
    (work / "top.txt").write_text("v2")
    _git("commit", "-q", "-am", "two", cwd=work)
    _git("clone", "-q", "--bare", str(work), str(www / "app.git"), cwd=tmp_path)
    _git("update-server-info", cwd=www / "app.git")


def _check_git_contexts(base: str) -> None:
    with materialize(f"{base}/app.git#v1") as ctx:
        assert ctx.root is not None
        assert (ctx.root / "top.txt").read_text() == "v1"
        assert not (ctx.root / ".git").exists()
    with materialize(f"{base}/app.git#main:docker") as ctx:
        assert ctx.root is not None
        assert sorted(p.name for p in ctx.root.iterdir()) == ["Dockerfile"]
    with (
        pytest.raises(ContextError, match="git fetch failed"),
        materialize(f"{base}/app.git#no-such-ref"),
    ):
        pass


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@needs_git
def test_git_url_over_dumb_http(http_server: tuple[str, Path], tmp_path: Path) -> None:
    """Git's dumb HTTP transport cannot fetch shallow: the context falls back to a full fetch."""
    base, www = http_server
    _make_repo(tmp_path, www)
    _check_git_contexts(base)


@pytest.fixture
def git_daemon(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``git daemon`` serving ``tmp_path/gitroot`` on a free loopback port (smart protocol)."""
    import socket
    import time

    root = tmp_path / "gitroot"
    root.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            f"--base-path={root}",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"git://127.0.0.1:{port}", root
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@needs_git
def test_git_url_over_git_daemon_is_shallow(git_daemon: tuple[str, Path], tmp_path: Path) -> None:
    base, root = git_daemon
    _make_repo(tmp_path, root)
    _check_git_contexts(base)
