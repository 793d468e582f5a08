"""Heredocs: RUN bodies through the shell, #! bodies as scripts, COPY bodies as files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Pybuild, tree

pytestmark = pytest.mark.root


def test_heredoc_run_and_copy(
    pybuild: Pybuild, context: Callable[[str], Path], tmp_path: Path
) -> None:
    ctx = context("heredoc")
    res = pybuild.build(ctx, "-t", "heredoc:test", "--build-arg", "NAME=there")
    assert "heredoc run: there" in res.stderr
    out = tree(pybuild.export(ctx, tmp_path / "out", "--build-arg", "NAME=there"))
    assert out["out/one.txt"][4] == "one\n"
    assert out["out/script.txt"][4].startswith("script as /")
    assert out["out/native.txt"][4] == "native there\n"
    assert out["out/copied.txt"] == ("file", 0o644, 0, 0, "hello there\n")
    assert out["usr/local/bin/greet"] == ("file", 0o755, 0, 0, '#!/bin/sh\necho "greet $1"\n')
    assert pybuild("run", "heredoc:test").stdout == "greet you\n"
