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


def _stat(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


@pytest.mark.parametrize(
    ("from_context", "owner", "expected_file", "expected_dir"),
    [
        # Build context: root-owned, setuid/setgid cleared (docker build), sticky kept.
        (True, None, (0o755, 0, 0), (0o1755, 0, 0)),
        # COPY --from another stage: owners and all mode bits kept.
        (False, None, (0o4755, 1000, 10), (0o3755, 1000, 10)),
        # --chown wins either way; the mode is still the source's (setid cleared for context).
        (True, Ownership(7, 8), (0o755, 7, 8), (0o1755, 7, 8)),
        (False, Ownership(7, 8), (0o4755, 7, 8), (0o3755, 7, 8)),
    ],
)
def test_owners_and_setid_bits_by_source_kind(
    tmp_path: Path,
    from_context: bool,
    owner: Ownership | None,
    expected_file: tuple[int, int, int],
    expected_dir: tuple[int, int, int],
) -> None:
    src = tmp_path / "src"
    (src / "tree" / "sub").mkdir(parents=True)
    tool = src / "tree" / "tool"
    tool.write_text("x")
    # setuid file; setgid + sticky directory (chmod after chown, which clears setid bits)
    for path, mode in ((tool, 0o4755), (src / "tree" / "sub", 0o3755)):
        os.chown(path, 1000, 10)
        os.chmod(path, mode)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    sources = resolve_sources(src, ["tree"])
    copy_sources(sources, rootfs, "/out", owner=owner, from_context=from_context)
    assert _stat(rootfs / "out" / "tool") == expected_file
    assert _stat(rootfs / "out" / "sub") == expected_dir
    # The destination directory itself is made afresh: 0755, --chown's owner or root.
    new_owner = owner or Ownership()
    assert _stat(rootfs / "out") == (0o755, new_owner.uid, new_owner.gid)


def test_new_destination_directory_is_not_the_source_directory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "f").write_text("f")
    os.chmod(src / "dir", 0o700)
    os.utime(src / "dir", (1_000_000_000, 1_000_000_000))
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    copy_sources(resolve_sources(src, ["dir"]), rootfs, "/d")
    assert _stat(rootfs / "d") == (0o755, 0, 0)
    assert os.lstat(rootfs / "d").st_mtime > 1_000_000_000
    copy_sources(resolve_sources(src, ["dir"]), rootfs, "/c", chmod=0o750)
    assert _stat(rootfs / "c")[0] == 0o750  # --chmod applies to it (moby/buildkit#4945)


def test_extended_attributes_are_copied(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    plain, tool = src / "plain", src / "tool"
    plain.write_text("p")
    tool.write_text("t")
    try:
        os.setxattr(plain, "user.origin", b"context")
    except OSError as e:
        pytest.skip(f"user xattrs not supported on {tmp_path}: {e}")
    capability = bytes.fromhex("0100000200200000000000000000000000000000")
    os.setxattr(tool, "security.capability", capability)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    copy_sources(resolve_sources(src, ["plain", "tool"]), rootfs, "/x/", owner=Ownership(5, 5))
    assert os.getxattr(rootfs / "x" / "plain", "user.origin") == b"context"
    # set after chown (which drops file capabilities)
    assert os.getxattr(rootfs / "x" / "tool", "security.capability") == capability
