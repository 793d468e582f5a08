"""Golden tests: every fixtures/dockerfile/<case> parses to its expected.json, and every
fixtures/dockerfile-errors/<case> fails with the message in its expected.txt.

expected.json is the ``pybuild parse --json`` document plus the warnings printed on stderr;
the plan uses a fixed linux/amd64 build and target platform so results do not depend on the
machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.cli.parse import document
from builder.cli.parse import parse as parse_command
from builder.dockerfile import parse
from builder.errors import DockerfileError
from builder.plan import automatic_platform_args, build_plan

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
GOOD = sorted(p for p in (FIXTURES / "dockerfile").iterdir() if p.is_dir())
BAD = sorted(p for p in (FIXTURES / "dockerfile-errors").iterdir() if p.is_dir())
PLATFORMS = automatic_platform_args("linux/amd64", "linux/amd64")


def _read(path: Path) -> str:
    # newline="" keeps CRLF fixtures as written
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def test_fixture_counts() -> None:
    assert len(GOOD) >= 60
    assert len(BAD) >= 20


@pytest.mark.parametrize("case", GOOD, ids=[p.name for p in GOOD])
def test_parses_to_expected(case: Path) -> None:
    dockerfile = parse(_read(case / "Dockerfile"), "Dockerfile")
    plan = build_plan(dockerfile, platform_args=PLATFORMS)
    got = document(dockerfile, plan)
    got["warnings"] = [str(w) for w in dockerfile.warnings]
    expected = json.loads((case / "expected.json").read_text(encoding="utf-8"))
    assert got == expected


@pytest.mark.parametrize("case", BAD, ids=[p.name for p in BAD])
def test_fails_with_expected_message(case: Path) -> None:
    expected = (case / "expected.txt").read_text(encoding="utf-8").strip()
    with pytest.raises(DockerfileError) as info:
        dockerfile = parse(_read(case / "Dockerfile"), "Dockerfile")
        build_plan(dockerfile, platform_args=PLATFORMS)
    assert str(info.value) == expected
    # FILE:LINE[:COL]: message
    filename, line, *_ = str(info.value).split(":")
    assert filename == "Dockerfile" and line.isdigit()


@pytest.mark.parametrize("case", BAD[:5], ids=[p.name for p in BAD[:5]])
def test_cli_reports_error_and_exits_1(case: Path) -> None:
    result = CliRunner().invoke(parse_command, [str(case / "Dockerfile")])
    assert result.exit_code == 1
    expected = (case / "expected.txt").read_text(encoding="utf-8").strip()
    # the CLI names the file as given on the command line
    assert expected.replace("Dockerfile", str(case / "Dockerfile"), 1) in result.output
    assert "Traceback" not in result.output


def test_cli_json_shape_and_stdin() -> None:
    text = (FIXTURES / "dockerfile" / "heredoc-run" / "Dockerfile").read_text()
    result = CliRunner().invoke(parse_command, ["--json", "-"], input=text)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert set(doc) == {"directives", "meta_args", "instructions", "stages", "plan"}
    run = doc["instructions"][1]
    assert set(run) == {
        "instruction",
        "line",
        "end_line",
        "flags",
        "args",
        "json_form",
        "heredocs",
        "trigger",
    }
    assert run["heredocs"] == [
        {"name": "EOF", "content": "apk add curl\necho done\n", "expand": True, "chomp": False}
    ]
    assert (run["line"], run["end_line"]) == (2, 5)


def test_cli_syntax_only_skips_typed_checks() -> None:
    text = "FROM alpine\nRUNN typo\nCOPY --bogus a b\n"
    runner = CliRunner()
    assert runner.invoke(parse_command, ["-"], input=text).exit_code == 1
    result = runner.invoke(parse_command, ["--syntax-only", "--json", "-"], input=text)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert [i["instruction"] for i in doc["instructions"]] == ["FROM", "RUNN", "COPY"]
    assert doc["stages"] == [] and doc["plan"] == []


def test_cli_target_and_build_arg() -> None:
    text = (
        "ARG BASE=alpine\nFROM ${BASE} AS a\nFROM busybox AS b\nFROM scratch\nCOPY --from=a /x /x\n"
    )
    result = CliRunner().invoke(
        parse_command, ["--json", "--target", "A", "--build-arg", "BASE=debian:12", "-"], input=text
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["plan"] == [0]
    assert doc["stages"][0]["base"] == "debian:12"
    bad = CliRunner().invoke(parse_command, ["--target", "nope", "-"], input=text)
    assert bad.exit_code == 1
    assert "target stage 'nope' could not be found" in bad.output


def test_cli_usage_error_exits_2() -> None:
    result = CliRunner().invoke(parse_command, ["--no-such-option", "Dockerfile"])
    assert result.exit_code == 2


def test_cli_outline_lists_stages() -> None:
    case = FIXTURES / "dockerfile" / "parallel-stages" / "Dockerfile"
    result = CliRunner().invoke(parse_command, [str(case)])
    assert result.exit_code == 0, result.output
    assert "stage 2 'unused'" in result.output and "not needed for the target" in result.output
    assert "levels (parallel within a level): 0, 1 | 3" in result.output


def test_warnings_go_to_stderr_without_failing() -> None:
    case = FIXTURES / "dockerfile" / "maintainer-deprecated" / "Dockerfile"
    result = CliRunner().invoke(parse_command, [str(case)])
    assert result.exit_code == 0
    assert "Dockerfile:2: warning: MAINTAINER instruction is deprecated" in result.stderr
    assert "warning" not in result.stdout


def test_parse_command_imports_no_heavy_modules(tmp_path: Path) -> None:
    """`pybuild parse` must start fast: no httpx, rich, zstandard or layerstore import."""
    import subprocess
    import sys

    dockerfile = FIXTURES / "dockerfile" / "parallel-stages" / "Dockerfile"
    code = (
        "import sys\n"
        "from builder.cli import main\n"
        "try:\n"
        f"    main(['parse', '--json', {str(dockerfile)!r}])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "heavy = [m for m in ('httpx', 'rich', 'zstandard', 'layerstore', 'registry')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stderr
    assert '"plan": [' in result.stdout


def test_cli_build_arg_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASE", "busybox:1.36")
    text = "ARG BASE=alpine\nFROM ${BASE}\n"
    result = CliRunner().invoke(parse_command, ["--json", "--build-arg", "BASE", "-"], input=text)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["stages"][0]["base"] == "busybox:1.36"


def test_cli_directory_is_a_usage_error(tmp_path: Path) -> None:
    assert CliRunner().invoke(parse_command, [str(tmp_path)]).exit_code == 2


def test_cli_missing_file_exits_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(parse_command, [str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "cannot read" in result.output
