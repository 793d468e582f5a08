"""The CLI shell: version, help, default command and exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from builder.cli import COMMANDS, cli


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip().startswith("pybuild ")


def test_help_lists_only_available_commands() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in cli.list_commands(None):  # type: ignore[arg-type]
        assert name in result.output
    assert set(cli.list_commands(None)) <= set(COMMANDS)  # type: ignore[arg-type]


def test_unknown_option_is_usage_error() -> None:
    result = CliRunner().invoke(cli, ["--no-such-option-anywhere"])
    assert result.exit_code == 2


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_startup_does_not_import_heavy_modules(args: list[str]) -> None:
    code = (
        "import sys; from builder.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('httpx', 'rich', 'zstandard') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY=", out.stdout
