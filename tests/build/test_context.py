"""Contexts: .dockerignore (and <Dockerfile>.dockerignore), -f -, '-' tar, git URL, tarball URL."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .conftest import Pybuild, tree

pytestmark = pytest.mark.root


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A loopback HTTP server for a directory: (directory, base URL)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def tar_of(directory: Path, *, gzip: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gzip else "w") as tar:
        for name in sorted(os.listdir(directory)):
            tar.add(directory / name, arcname=name)
    return buf.getvalue()


def test_dockerignore_applies(
    pybuild: Pybuild, context: Callable[[str], Path], tmp_path: Path
) -> None:
    ctx = context("context")
    out = tree(pybuild.export(ctx, tmp_path / "out"))
    names = {p for p in out if p.startswith("ctx/")}
    assert "ctx/app/main.txt" in names
    assert "ctx/NOTES.md" not in names and "ctx/app/secret.env" not in names
    # <Dockerfile>.dockerignore wins over .dockerignore
    out2 = tree(pybuild.export(ctx, tmp_path / "out2", "-f", str(ctx / "Dockerfile.custom")))
    assert "ctx/app/secret.env" in out2 and "ctx/NOTES.md" not in out2


def test_dockerfile_from_stdin(pybuild: Pybuild, context: Callable[[str], Path]) -> None:
    ctx = context("context")
    dockerfile = b"FROM busybox:test\nCOPY app/main.txt /m.txt\nCMD cat /m.txt\n"
    pybuild("build", "-q", "-t", "stdin-df:1", "-f", "-", str(ctx), input=dockerfile)
    assert pybuild("run", "stdin-df:1").stdout == "app file\n"


def test_stdin_dockerfile_without_context(pybuild: Pybuild) -> None:
    pybuild("build", "-q", "-t", "noctx:1", "-", input=b"FROM busybox:test\nCMD echo bare\n")
    assert pybuild("run", "noctx:1").stdout == "bare\n"
    res = pybuild("build", "-", input=b"FROM busybox:test\nCOPY x /x\n", check=False)
    assert res.returncode == 1 and "context" in res.stderr


def test_stdin_tar_context(pybuild: Pybuild, context: Callable[[str], Path]) -> None:
    ctx = context("context")
    pybuild("build", "-q", "-t", "tarctx:1", "-", input=tar_of(ctx))
    res = pybuild("run", "tarctx:1", "cat", "/ctx/app/main.txt")
    assert res.stdout == "app file\n"


def test_tarball_url_context(
    pybuild: Pybuild, context: Callable[[str], Path], http_dir: tuple[Path, str]
) -> None:
    root, base = http_dir
    (root / "ctx.tar.gz").write_bytes(tar_of(context("context")))
    pybuild("build", "-q", "-t", "urlctx:1", f"{base}/ctx.tar.gz")
    assert pybuild("run", "urlctx:1", "cat", "/ctx/app/main.txt").stdout == "app file\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def git_daemon(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    base = tmp_path / "git"
    base.mkdir()
    port = _free_port()
    proc = subprocess.Popen(
        [
            "git",
            "daemon",
            "--export-all",
            "--reuseaddr",
            f"--base-path={base}",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(base),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield base, f"git://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_git_url_context(
    pybuild: Pybuild, context: Callable[[str], Path], git_daemon: tuple[Path, str]
) -> None:
    base, url = git_daemon
    work = base / "work"
    shutil.copytree(context("context"), work / "sub")
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@e",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@e",
    )
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "x"]):
        subprocess.run(["git", *args], cwd=work, check=True, env=env)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(base / "repo.git")], check=True)
    pybuild("build", "-q", "-t", "gitctx:1", f"{url}/repo.git#main:sub")
    assert pybuild("run", "gitctx:1", "cat", "/ctx/app/main.txt").stdout == "app file\n"
    assert "secret.env" not in pybuild("run", "gitctx:1", "ls", "/ctx/app").stdout


def test_add_archives_and_url(
    pybuild: Pybuild, context: Callable[[str], Path], http_dir: tuple[Path, str], tmp_path: Path
) -> None:
    import hashlib

    import zstandard

    ctx = context("add")
    payload = ctx / "payload"
    payload.mkdir()
    (payload / "a.txt").write_text("from tar\n")
    (payload / "bin").mkdir()
    (payload / "bin" / "x").write_text("#!/bin/sh\n")
    (payload / "bin" / "x").chmod(0o750)
    (ctx / "bundle.tar.gz").write_bytes(tar_of(payload))
    (ctx / "plain.tar").write_bytes(tar_of(payload, gzip=False))
    (ctx / "bundle.tar.zst").write_bytes(
        zstandard.ZstdCompressor().compress(tar_of(payload, gzip=False))
    )
    shutil.rmtree(payload)
    root, base = http_dir
    body = b"downloaded bytes\n"
    (root / "remote.txt").write_bytes(body)
    os.utime(root / "remote.txt", (1600000000, 1600000000))
    good = "sha256:" + hashlib.sha256(body).hexdigest()
    args = ("--build-arg", f"URL={base}/remote.txt", "--build-arg", f"SUM={good}")
    out = pybuild.export(ctx, tmp_path / "out", *args)
    files = tree(out)
    for prefix in ("unpacked", "plain", "zst"):
        assert files[f"{prefix}/a.txt"][4] == "from tar\n"
        assert files[f"{prefix}/bin/x"][1] == 0o750
    assert files["not-an-archive/in-tar.txt"][4] == "inside tar\n"
    assert files["downloads/remote.txt"] == ("file", 0o600, 0, 0, "downloaded bytes\n")
    assert (out / "downloads" / "remote.txt").stat().st_mtime == 1600000000
    bad = ("--build-arg", f"URL={base}/remote.txt", "--build-arg", "SUM=sha256:" + "0" * 64)
    res = pybuild.build(ctx, *bad, check=False)
    assert res.returncode == 1 and "checksum mismatch" in res.stderr
