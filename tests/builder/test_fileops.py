"""COPY semantics, table-driven from fixtures/fileops/cases.json, on real directories."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from builder.errors import ContextError
from builder.fileops import (
    Ownership,
    PatternError,
    copy_sources,
    match_component,
    resolve_sources,
    walk_source,
)

CASES_FILE = Path(__file__).resolve().parents[2] / "fixtures" / "fileops" / "cases.json"
TABLE = json.loads(CASES_FILE.read_text(encoding="utf-8"))

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="copies set ownership: needs root")


def make_tree(root: Path, spec: dict[str, str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for rel, what in sorted(spec.items()):
        path = root / rel
        kind, _, rest = what.partition(":")
        if kind == "d":
            path.mkdir(exist_ok=True)
            os.chmod(path, int(rest or "755", 8))
        elif kind == "f":
            content, _, mode = rest.rpartition(":") if rest.count(":") else (rest, "", "644")
            path.write_text(content, encoding="utf-8")
            os.chmod(path, int(mode or "644", 8))
        elif kind == "l":
            os.symlink(rest, path)
        else:
            raise ValueError(what)


def describe(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = os.lstat(path)
            mode = f"{stat.S_IMODE(st.st_mode):o}"
            owner = f"{st.st_uid}:{st.st_gid}"
            if stat.S_ISLNK(st.st_mode):
                out.append(f"{rel} l {mode} {owner} ->{os.readlink(path)}")
            elif stat.S_ISDIR(st.st_mode):
                out.append(f"{rel} d {mode} {owner}")
            else:
                out.append(f"{rel} f {mode} {owner} {path.read_text(encoding='utf-8')}")
    return sorted(out)


@pytest.mark.parametrize("case", TABLE["cases"], ids=[c["name"] for c in TABLE["cases"]])
def test_copy_case(case: dict[str, Any], tmp_path: Path) -> None:
    context = tmp_path / "context"
    rootfs = tmp_path / "rootfs"
    make_tree(context, TABLE["context"])
    make_tree(rootfs, case.get("rootfs", {}))
    excluded_set = set(case.get("excluded", []))
    excluded = (lambda rel: rel.split("/")[0] in excluded_set) if excluded_set else None
    chown = case.get("chown")
    chmod = case.get("chmod")

    def run() -> None:
        sources = resolve_sources(context, case["sources"], excluded=excluded)
        copy_sources(
            sources,
            rootfs,
            case["dest"],
            workdir=case.get("workdir", "/"),
            owner=Ownership(*chown) if chown else None,
            chmod=int(chmod, 8) if chmod else None,
            excluded=excluded,
        )

    if "error" in case:
        with pytest.raises(ContextError, match=case["error"].replace("?", r"\?")):
            run()
    else:
        run()
        assert describe(rootfs) == sorted(case["expect"])
    # nothing is ever written outside the root filesystem or into the context
    assert sorted(p.name for p in tmp_path.iterdir()) == ["context", "rootfs"]


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("*", "abc", True),
        ("*", "", True),
        ("a*c", "abbbc", True),
        ("a?c", "abc", True),
        ("a?c", "ac", False),
        ("[a-c]x", "bx", True),
        ("[^a-c]x", "bx", False),
        ("[^a-c]x", "dx", True),
        ("[]a]", "]", True),
        ("[\\]]", "]", True),
        ("a\\*", "a*", True),
        ("a\\*", "ab", False),
        ("*.go", "x.go", True),
        ("*.go", ".go", True),
        ("[!a]", "!", True),
    ],
)
def test_go_filepath_match(pattern: str, name: str, matches: bool) -> None:
    assert match_component(pattern, name) is matches


@pytest.mark.parametrize("pattern", ["[", "[a-", "a\\", "[]", "[z-a]"])
def test_bad_patterns(pattern: str) -> None:
    with pytest.raises(PatternError):
        match_component(pattern, "x")


def test_walk_source_lists_what_a_copy_reads(tmp_path: Path) -> None:
    make_tree(tmp_path, TABLE["context"])
    (source,) = resolve_sources(tmp_path, ["dir"])
    assert list(walk_source(source)) == ["dir", "dir/link", "dir/sub", "dir/sub/y", "dir/x"]
    assert list(walk_source(source, excluded=lambda r: r == "dir/sub")) == [
        "dir",
        "dir/link",
        "dir/x",
    ]
