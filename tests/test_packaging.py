"""The wheel ships the grammar: a plain (non-editable) install parses from any directory."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_ships_grammar_and_parses_outside_the_checkout(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("pybuild-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "builder/dockerfile/dockerfile_grammar.lark" in names
    assert {"builder/__init__.py", "registry/__init__.py", "layerstore/__init__.py"} <= names

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
        check=True,
        capture_output=True,
    )
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("ARG V=1\nFROM scratch AS a\nCOPY x /x\n")
    # The installed copy comes first on sys.path, ahead of the source checkout; run from /.
    code = (
        f"import sys; sys.path.insert(0, {str(target)!r})\n"
        "from builder.dockerfile import grammar\n"
        "print(grammar.grammar_path())\n"
        "from builder.cli import main\n"
        f"main(['parse', '--json', {str(dockerfile)!r}])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    first, _, rest = out.stdout.partition("\n")
    assert first == str(target / "builder" / "dockerfile" / "dockerfile_grammar.lark")
    assert '"instruction": "COPY"' in rest
