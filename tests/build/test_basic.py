"""A simple build end to end: config, files/modes/owners in the export, run, cache, id files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Pybuild, history, steps, tree

pytestmark = pytest.mark.root


def test_build_tags_image_and_config(pybuild: Pybuild, context: Callable[[str], Path]) -> None:
    ctx = context("basic")
    result = pybuild.build(ctx, "-t", "basic:1")
    assert "[stage-0] hello" in result.stderr  # the RUN step's output
    assert "as basic:1" in result.stdout
    config = pybuild.config("basic:1")
    cc = config["config"]
    assert cc["Cmd"] == ["cat", "/app/run.txt"]
    assert cc["User"] == "app"
    assert cc["WorkingDir"] == "/app"
    assert "GREETING=hi" in cc["Env"]
    assert history(config)[1:] == [
        "ENV GREETING=hi",
        "WORKDIR /app # buildkit",
        "COPY hello.txt . # buildkit",
        "COPY src/ /opt/src/ # buildkit",
        "COPY --chown=app:app --chmod=640 hello.txt /home/app/owned.txt # buildkit",
        'RUN /bin/sh -c echo "$GREETING from run" > /app/run.txt && cat /app/hello.txt # buildkit',
        "USER app",
        "RUN /bin/sh -c id -un > /tmp/whoami && ls / > /dev/null # buildkit",
        'CMD ["cat" "/app/run.txt"]',
    ]
    assert "basic" in pybuild("images").stdout


def test_export_has_files_modes_owners(
    pybuild: Pybuild, context: Callable[[str], Path], tmp_path: Path
) -> None:
    out = pybuild.export(context("basic"), tmp_path / "out")
    files = tree(out)
    assert files["app/hello.txt"] == ("file", 0o644, 0, 0, "hello\n")
    assert files["app/run.txt"] == ("file", 0o644, 0, 0, "hi from run\n")
    assert files["opt/src/tool.sh"][:2] == ("file", 0o755)
    assert files["opt/src/link"] == ("link", 0, 0, 0, "tool.sh")  # copied as a symlink
    assert files["opt/src/sub/deep.txt"][4] == "deep\n"
    assert files["home/app/owned.txt"] == ("file", 0o640, 1000, 1000, "hello\n")
    assert files["app"][:2] == ("dir", 0o755)
    # a RUN as a non-root USER can reach / (the step's upper dir must not be 0700)
    assert files["tmp/whoami"] == ("file", 0o644, 1000, 1000, "app\n")


def test_run_prints_command_output_and_exit_code(
    pybuild: Pybuild, context: Callable[[str], Path]
) -> None:
    pybuild.build(context("basic"), "-t", "basic:run")
    assert pybuild("run", "--rm", "basic:run").stdout == "hi from run\n"
    res = pybuild("run", "basic:run", "sh", "-c", "id -u; pwd; exit 7", check=False)
    assert res.returncode == 7
    assert res.stdout.split() == ["1000", "/app"]
    res = pybuild("run", "-e", "X=1", "--user", "root", "basic:run", "sh", "-c", "echo $X $(id -u)")
    assert res.stdout == "1 0\n"


def test_second_build_is_fully_cached_and_same_image(
    pybuild: Pybuild, context: Callable[[str], Path], tmp_path: Path
) -> None:
    ctx = context("basic")
    first = tmp_path / "first.json"
    pybuild.build(ctx, "-t", "basic:cache", "--metadata-file", str(first))
    again = pybuild.build(ctx, "-t", "basic:cache", "--iidfile", str(tmp_path / "iid"))
    assert len(steps(again.stderr)) == 9  # every step after FROM
    meta = json.loads(first.read_text())
    assert (tmp_path / "iid").read_text() == meta["containerimage.config.digest"]
    assert meta["containerimage.digest"] in again.stdout
    assert meta["tags"] == ["docker.io/library/basic:cache"]
    no_cache = pybuild.build(ctx, "--no-cache")
    assert steps(no_cache.stderr) == []


def test_failing_run_reports_line_and_exit_code(pybuild: Pybuild, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox:test\nRUN echo before\nRUN echo some output; exit 3\n"
    )
    res = pybuild.build(tmp_path, check=False)
    assert res.returncode == 1
    assert "Dockerfile:3" in res.stderr
    assert "exit code 3" in res.stderr
    assert "some output" in res.stderr.split("error:", 1)[1]


def test_usage_errors_exit_2(pybuild: Pybuild, tmp_path: Path) -> None:
    assert pybuild("build", "--network", "bogus", str(tmp_path), check=False).returncode == 2
    assert pybuild("build", "-o", "type=nope", str(tmp_path), check=False).returncode == 2
    res = pybuild("build", "--platform", "linux/s390x", str(tmp_path), check=False)
    assert res.returncode == 1 and "platform" in res.stderr
