"""The step cache: what hits, what misses, and from which step on."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Pybuild

pytestmark = pytest.mark.root

ALL = set(range(2, 11))  # steps after FROM in fixtures/build/cache/Dockerfile


def cached(output: str) -> set[int]:
    return {int(m) for m in re.findall(r"STEP (\d+)/\d+: CACHED", output)}


@pytest.fixture
def primed(fresh_store: Pybuild, context: Callable[[str], Path]) -> tuple[Pybuild, Path]:
    ctx = context("cache")
    first = fresh_store.build(ctx)
    assert cached(first.stderr) == set()
    return fresh_store, ctx


def test_unchanged_build_is_all_cached(primed: tuple[Pybuild, Path]) -> None:
    pybuild, ctx = primed
    assert cached(pybuild.build(ctx).stderr) == ALL


def test_mtime_only_change_stays_cached(primed: tuple[Pybuild, Path]) -> None:
    pybuild, ctx = primed
    os.utime(ctx / "a.txt", (1, 1))
    os.utime(ctx / "b.txt", None)
    assert cached(pybuild.build(ctx).stderr) == ALL


def test_content_change_misses_from_that_copy(primed: tuple[Pybuild, Path]) -> None:
    pybuild, ctx = primed
    (ctx / "b.txt").write_text("changed\n")
    res = pybuild.build(ctx)
    assert cached(res.stderr) == {2, 3, 4, 5, 6}
    assert "[stage-0] changed" in res.stderr


def test_ignored_file_change_stays_cached(primed: tuple[Pybuild, Path], tmp_path: Path) -> None:
    pybuild, ctx = primed
    (ctx / "dir" / "ignored.log").write_text("other noise\n")
    (ctx / "dir" / "new.log").write_text("new\n")
    assert cached(pybuild.build(ctx).stderr) == ALL
    out = tmp_path / "out"
    pybuild.build(ctx, "-o", f"type=local,dest={out}")
    assert sorted(os.listdir(out / "dir")) == ["kept.txt"]
    (ctx / "dir" / "kept.txt").write_text("changed\n")
    assert cached(pybuild.build(ctx).stderr) == {2}


def test_build_arg_misses_only_from_the_step_using_it(primed: tuple[Pybuild, Path]) -> None:
    pybuild, ctx = primed
    res = pybuild.build(ctx, "--build-arg", "USED=2")
    assert cached(res.stderr) == {2, 3, 4, 5}
    assert "used=2" in res.stderr
    res = pybuild.build(ctx, "--build-arg", "USED=2", "--build-arg", "LATE=9")
    assert cached(res.stderr) == {2, 3, 4, 5, 6, 7, 8, 9}
    assert "late=9" in res.stderr


def test_no_cache_and_debug_cache(primed: tuple[Pybuild, Path]) -> None:
    pybuild, ctx = primed
    assert cached(pybuild.build(ctx, "--no-cache").stderr) == set()
    res = pybuild.build(ctx, "--debug-cache")
    assert "cache key" in res.stderr and "'sources': 'sha256:" in res.stderr


def test_proxy_args_stay_out_of_keys_and_history(primed: tuple[Pybuild, Path]) -> None:
    pybuild, ctx = primed
    res = pybuild.build(ctx, "--build-arg", "HTTP_PROXY=http://proxy.invalid:3128", "-t", "px:1")
    assert cached(res.stderr) == ALL
    assert "proxy.invalid" not in str(pybuild.config("px:1"))


def test_source_date_epoch_reproduces_the_digest(
    fresh_store: Pybuild, context: Callable[[str], Path], busybox_rootfs: Path
) -> None:
    ctx = context("cache")
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    one = fresh_store.build(ctx, "--no-cache", "-q", env=env).stdout
    two = fresh_store.build(ctx, "--no-cache", "-q", env=env).stdout
    assert one == two and one.startswith("sha256:")
    assert fresh_store.build(ctx, "--no-cache", "-q").stdout != one


def test_inline_cache_from_a_local_image(primed: tuple[Pybuild, Path]) -> None:
    pybuild, ctx = primed
    pybuild.build(ctx, "-t", "inline:1", "--cache-to", "type=inline")
    pybuild("prune", "--all")  # drops the local records (and unnamed blobs)
    res = pybuild.build(ctx, "--cache-from", "inline:1")
    assert "9 step records imported" in res.stderr
    assert cached(res.stderr) == ALL
