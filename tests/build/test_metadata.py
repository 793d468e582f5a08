"""Every metadata instruction lands in the image config (and history) as Docker's would."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import FIXTURES, Pybuild, history, steps

pytestmark = pytest.mark.root


def test_metadata_instructions_in_config(pybuild: Pybuild, context: Callable[[str], Path]) -> None:
    expected = json.loads((FIXTURES / "metadata" / "expected.json").read_text())
    pybuild.build(context("metadata"), "-t", "meta:test", "--label", "extra=from-cli")
    config = pybuild.config("meta:test")
    want = dict(expected["config"])
    want["Labels"] = {**want["Labels"], "extra": "from-cli"}
    assert config["config"] == want
    assert config["author"] == expected["author"]
    assert history(config)[1:] == expected["history"]
    empty = [h.get("empty_layer", False) for h in config["history"][1:]]
    # only the two WORKDIRs created something (the directories)
    assert [not e for e in empty].count(True) == 2
    res = pybuild("run", "meta:test", check=False)
    assert res.stdout == "entry from cmd\n"


def test_entrypoint_resets_inherited_cmd(pybuild: Pybuild, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text('FROM busybox:test\nENTRYPOINT ["echo", "only"]\n')
    pybuild.build(tmp_path, "-t", "entry:test")
    config = pybuild.config("entry:test")["config"]
    assert "Cmd" not in config  # the base's CMD ["sh"] is dropped
    assert pybuild("run", "entry:test").stdout == "only\n"


def test_onbuild_triggers_run_in_child(
    pybuild: Pybuild, context: Callable[[str], Path], tmp_path: Path
) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox:test\nONBUILD RUN echo triggered > /onbuild.txt\n"
        "ONBUILD ENV FROM_TRIGGER=yes\n"
    )
    pybuild.build(tmp_path, "-t", "meta-onbuild:test")
    assert pybuild.config("meta-onbuild:test")["config"]["OnBuild"] == [
        "RUN echo triggered > /onbuild.txt",
        "ENV FROM_TRIGGER=yes",
    ]
    res = pybuild.build(context("onbuild-child"), "-t", "child:test")
    assert "STEP 2/4: RUN echo triggered > /onbuild.txt" in res.stderr
    child = pybuild.config("child:test")
    assert "OnBuild" not in child["config"]  # triggers are not inherited further
    assert "FROM_TRIGGER=yes" in child["config"]["Env"]
    assert pybuild("run", "child:test", "cat", "/onbuild.txt").stdout == "triggered\n"
    again = pybuild.build(context("onbuild-child"))
    assert len(steps(again.stderr)) == 3


def test_shell_instruction_applies_to_run_and_cmd(pybuild: Pybuild, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        'FROM busybox:test\nSHELL ["/bin/sh", "-ec"]\nRUN false; echo should-not-print\n'
    )
    res = pybuild.build(tmp_path, check=False)
    assert res.returncode == 1 and "[stage-0] should-not-print" not in res.stderr
    (tmp_path / "Dockerfile").write_text(
        'FROM busybox:test\nSHELL ["/bin/sh", "-xc"]\nCMD echo traced\n'
    )
    pybuild.build(tmp_path, "-t", "shell:1")
    assert pybuild.config("shell:1")["config"]["Cmd"] == ["/bin/sh", "-xc", "echo traced"]
