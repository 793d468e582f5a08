"""RUN --mount (cache, bind, tmpfs), --network=none, COPY --exclude, and the other exporters."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Pybuild, tree

pytestmark = pytest.mark.root


def test_mounts_network_and_exclude(
    fresh_store: Pybuild, context: Callable[[str], Path], tmp_path: Path
) -> None:
    ctx = context("mounts")
    first = fresh_store.build(ctx, "-t", "mounts:1")
    assert "cache runs: 1" in first.stderr
    out = tree(fresh_store.export(ctx, tmp_path / "out", "--no-cache"))
    assert "cache" not in out and "data" not in out  # mount targets leave nothing behind
    assert "scratch" not in out
    assert out["from-bind.txt"][4] == "bound input\n"
    assert out["netdevs"][4].strip() == "1"  # only lo in a --network=none step
    assert sorted(p for p in out if p.startswith("data-copied/")) == ["data-copied/input.txt"]
    hist = {
        h["created_by"]: h.get("empty_layer", False)
        for h in fresh_store.config("mounts:1")["history"]
    }
    tmpfs_step = next(k for k in hist if "type=tmpfs" in k or "/scratch" in k)
    assert hist[tmpfs_step] is True  # a step that changed nothing adds no layer
    again = fresh_store.build(ctx, "--no-cache")
    assert "cache runs: 3" in again.stderr  # the cache mount persists between builds


def test_tar_output_and_stdout(
    pybuild: Pybuild, context: Callable[[str], Path], tmp_path: Path
) -> None:
    ctx = context("basic")
    dest = tmp_path / "fs.tar"
    pybuild.build(ctx, "-o", f"type=tar,dest={dest}")
    with tarfile.open(dest) as tar:
        names = tar.getnames()
    assert "app/run.txt" in names and "bin/busybox" in names
    proc = subprocess.run(
        [sys.executable, "-m", "builder", "build", "-q", "-o", "-", str(ctx)],
        capture_output=True,
        env=dict(os.environ, PYBUILD_ROOT=str(pybuild.store)),
        check=True,
    )
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:  # stdout is only the tar
        assert "app/run.txt" in tar.getnames()
    assert proc.stderr.decode().strip().startswith("sha256:")


def test_global_network_none(pybuild: Pybuild, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox:test\nRUN echo devs=$(tail -n +3 /proc/net/dev | wc -l)\n"
    )
    res = pybuild.build(tmp_path, "--network", "none", "--no-cache")
    assert "devs=1" in res.stderr


def test_copy_errors_name_the_line(pybuild: Pybuild, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox:test\n\nCOPY missing.txt /x\n")
    res = pybuild.build(tmp_path, check=False)
    assert res.returncode == 1
    assert "Dockerfile:3" in res.stderr and "missing.txt" in res.stderr
    (tmp_path / "Dockerfile").write_text("FROM busybox:test\nUSER ghost\nRUN true\n")
    res = pybuild.build(tmp_path, check=False)
    assert res.returncode == 1 and "Dockerfile:3: RUN: unable to find user ghost" in res.stderr


def test_bind_mount_from_stage(pybuild: Pybuild, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox:test AS tools\nRUN mkdir /kit && echo from-tools > /kit/note\n"
        "RUN echo second-layer > /kit/more\n"
        "FROM busybox:test\n"
        "RUN --mount=type=bind,from=tools,source=/kit,target=/mnt/kit cat /mnt/kit/note "
        "/mnt/kit/more > /copied\n"
    )
    out = tree(pybuild.export(tmp_path, tmp_path / "out"))
    assert out["copied"][4] == "from-tools\nsecond-layer\n"
    assert "mnt" not in out and "kit" not in out


def test_secrets_reach_run_but_not_the_image(pybuild: Pybuild, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox:test\n"
        "RUN --mount=type=secret,id=token cat /run/secrets/token > /tmp/leak-check; "
        "echo file:$(wc -c < /tmp/leak-check); rm /tmp/leak-check\n"
        "RUN --mount=type=secret,id=token,env=TOKEN echo env:${#TOKEN}\n"
        "RUN --mount=type=secret,id=absent echo optional-skipped\n"
    )
    secret = tmp_path / "token.txt"
    secret.write_text("s3cr3t-value")
    res = pybuild.build(tmp_path, "--secret", f"id=token,src={secret}", "-t", "secret:1")
    assert "file:12" in res.stderr and "env:12" in res.stderr
    assert "optional-skipped" in res.stderr
    out = tree(pybuild.export(tmp_path, tmp_path / "out", "--secret", f"id=token,src={secret}"))
    assert "run/secrets/token" not in out
    assert not any("s3cr3t" in entry[4] for entry in out.values())
    assert "s3cr3t" not in pybuild("inspect", "secret:1").stdout
    bad = pybuild.build(tmp_path, "--secret", "id=token,src=/nonexistent", check=False)
    assert bad.returncode == 2 and "cannot read" in bad.stderr
