"""Multi-stage builds: COPY --from (stage name, index, image), --target, global/stage ARGs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Pybuild, tree

pytestmark = pytest.mark.root


def test_copy_from_stages_and_image(
    pybuild: Pybuild, context: Callable[[str], Path], tmp_path: Path
) -> None:
    ctx = context("multistage")
    res = pybuild.build(ctx, "-t", "multi:test")
    assert "should-not-run" not in res.output  # stage "unused" is not needed
    assert "testing:" not in res.output  # nor is "test"
    # a global ARG is not visible in a stage that does not declare it
    assert "[stage-3] final: \n" in res.output
    out = tree(pybuild.export(ctx, tmp_path / "out"))
    import platform

    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    assert out["info.txt"][4] == f"version=1.0 stage=default arch={arch}\n"
    assert out["copied-out/info.txt"][4] == out["info.txt"][4]
    assert out["group-from-image"][4].startswith("root:x:0:")
    assert pybuild("run", "multi:test", "cat", "/info.txt").stdout == out["info.txt"][4]


def test_build_args_reach_global_and_stage_args(
    pybuild: Pybuild, context: Callable[[str], Path], tmp_path: Path
) -> None:
    ctx = context("multistage")
    out = pybuild.export(
        ctx,
        tmp_path / "out",
        "--build-arg",
        "VERSION=2.5",
        "--build-arg",
        "STAGE_ONLY=given",
        "--build-arg",
        "UNUSED_ARG=x",
    )
    text = (out / "info.txt").read_text()
    assert text.startswith("version=2.5 stage=given ")


def test_unused_build_arg_warns(pybuild: Pybuild, context: Callable[[str], Path]) -> None:
    res = pybuild.build(context("multistage"), "--build-arg", "NOT_DECLARED=1")
    assert "NOT_DECLARED" in res.stderr and "not consumed" in res.stderr


def test_target_builds_only_what_it_needs(pybuild: Pybuild, context: Callable[[str], Path]) -> None:
    res = pybuild.build(context("multistage"), "--target", "test", "-t", "multi:target")
    assert "testing: version=1.0" in res.output
    assert "should-not-run" not in res.output
    assert "final:" not in res.output
    assert "[test] STEP" in res.stderr
    bad = pybuild.build(context("multistage"), "--target", "nope", check=False)
    assert bad.returncode == 1 and "nope" in bad.stderr


def test_independent_stages_run_concurrently(pybuild: Pybuild, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox:test AS left\nRUN echo left-start; sleep 2; echo left-end\n"
        "FROM busybox:test AS right\nRUN echo right-start; sleep 2; echo right-end\n"
        "FROM busybox:test\nCOPY --from=left /etc/passwd /l\nCOPY --from=right /etc/passwd /r\n"
    )

    def position(output: str, stage: str, word: str) -> int:
        return output.index(f"[{stage}] {word}\n")

    out = pybuild.build(tmp_path, "--no-cache", "--jobs", "2").stderr
    starts = max(position(out, "left", "left-start"), position(out, "right", "right-start"))
    ends = min(position(out, "left", "left-end"), position(out, "right", "right-end"))
    assert starts < ends
    serial = pybuild.build(tmp_path, "--no-cache", "--jobs", "1").stderr
    assert position(serial, "left", "left-end") < position(serial, "right", "right-start")
