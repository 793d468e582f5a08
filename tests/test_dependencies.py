"""The import direction is builder → registry → layerstore; this test enforces it.

Every module's imports are read with ``ast`` (including imports inside functions), as
go-containerregistry's depcheck does, so a wrong-way import fails CI even when it is lazy.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package → top-level packages of this project it must never import
FORBIDDEN = {
    "layerstore": {"registry", "builder"},
    "registry": {"builder"},
    "builder": set(),
}

# Inside builder, the front end is pure: text in, typed Dockerfile out.
FRONT_END_ALLOWED_THIRD_PARTY = {"lark"}
HEAVY = {"httpx", "rich", "zstandard"}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package: str) -> None:
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules(package)
        for name in _imports(path)
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert not bad, "imports against the direction builder → registry → layerstore:\n" + "\n".join(
        bad
    )


def test_front_end_imports_only_lark_and_stdlib() -> None:
    import sys

    stdlib = sys.stdlib_module_names
    bad = []
    for path in _modules("builder/dockerfile"):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in stdlib or top in FRONT_END_ALLOWED_THIRD_PARTY:
                continue
            if name.startswith(("builder.dockerfile", "builder.errors")):
                continue
            bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)
