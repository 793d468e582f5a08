"""Hostile layers: every trick is refused (or neutralised) and nothing outside the root changes.

Each case is a generated tar (plus, for some, what an earlier layer left in the root). The
root sits three levels below the test's temp dir, beside an ``outside/`` directory holding
a sentinel, so ``../../../outside`` and absolute symlinks both reach real files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerstore.errors import ArchiveError, StoreError, UnsafePathError
from layerstore.layer import apply_layer

OUT = "<outside>"  # replaced by the absolute path of the outside directory


@dataclass(frozen=True)
class M:
    """One tar member: kind is file, dir, symlink, hardlink, char, fifo."""

    kind: str
    name: str
    target: str = ""
    data: bytes = b"evil"
    mode: int = 0o644


@dataclass(frozen=True)
class Case:
    id: str
    members: list[M]
    entry: str = ""  # the member the error must name (default: the last one)
    base: list[M] = field(default_factory=list)  # an earlier layer, applied first
    fmt: int = tarfile.PAX_FORMAT
    root_only: bool = False
    raises: type[Exception] | None = None  # for contained cases refused as malformed


def _sub(text: str, outside: Path) -> str:
    return text.replace(OUT, str(outside))


def make_tar(members: list[M], outside: Path, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for m in members:
            info = tarfile.TarInfo(_sub(m.name, outside))
            info.mode = m.mode
            data = None
            if m.kind == "file":
                info.size = len(m.data)
                data = io.BytesIO(m.data)
            elif m.kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o777
            elif m.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, _sub(m.target, outside)
            elif m.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, _sub(m.target, outside)
            elif m.kind == "char":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            elif m.kind == "fifo":
                info.type = tarfile.FIFOTYPE
            else:
                raise AssertionError(m.kind)
            tf.addfile(info, data)
    return buf.getvalue()


LONG = "x" * 120

REFUSED = [
    Case("dotdot-leading", [M("file", "../../../outside/evil")]),
    Case("dotdot-middle", [M("file", "a/../../../../outside/evil")]),
    Case("absolute-then-dotdot", [M("file", "/../../../outside/evil")]),
    Case("dot-prefix-dotdot", [M("file", "./../../../outside/evil")]),
    Case("dotdot-overwrites-sentinel", [M("file", "../../../outside/sentinel", data=b"pwned")]),
    Case("dir-entry-dotdot", [M("dir", "../../../outside/newdir")]),
    Case("symlink-absolute-parent", [M("symlink", "l", OUT), M("file", "l/evil")]),
    Case("symlink-relative-parent", [M("symlink", "l", "../../../outside"), M("file", "l/evil")]),
    Case(
        "symlink-chain-parent",
        [M("symlink", "a", "b"), M("symlink", "b", "../../../outside"), M("file", "a/evil")],
    ),
    Case(
        "symlink-nested-parent-dir-entry",
        [M("dir", "d"), M("symlink", "d/l", "../../../../outside"), M("dir", "d/l/newdir")],
    ),
    Case(
        "symlink-hidden-in-dotdot",
        [
            M("dir", "d/sub"),
            M("symlink", "d/l", "sub/../../../../../outside"),
            M("file", "d/l/e"),
        ],
    ),
    Case("symlink-loop", [M("symlink", "a", "b"), M("symlink", "b", "a"), M("file", "a/x")]),
    Case("hardlink-dotdot-target", [M("hardlink", "h", "../../../outside/sentinel")]),
    Case(
        "hardlink-through-absolute-symlink",
        [M("symlink", "l", OUT), M("hardlink", "h", "l/sentinel")],
    ),
    Case(
        "symlink-then-hardlink-chain",
        [
            M("symlink", "l", "../../../outside"),
            M("symlink", "m", "l"),
            M("hardlink", "h", "m/sentinel"),
        ],
    ),
    Case(
        "earlier-layer-symlink-parent",
        [M("file", "evil/x")],
        base=[M("symlink", "evil", OUT)],
    ),
    Case(
        "earlier-layer-symlink-hardlink-target",
        [M("hardlink", "h", "evil/sentinel")],
        base=[M("symlink", "evil", "../../../outside")],
    ),
    Case("whiteout-through-symlink", [M("symlink", "l", OUT), M("file", "l/.wh.sentinel")]),
    Case("opaque-through-symlink", [M("symlink", "l", OUT), M("file", "l/.wh..wh..opq")]),
    Case("whiteout-dotdot", [M("file", "../../../outside/.wh.sentinel")]),
    Case("device-through-symlink", [M("symlink", "l", OUT), M("char", "l/null")]),
    Case("fifo-through-symlink", [M("symlink", "l", "../../../outside"), M("fifo", "l/pipe")]),
    Case("pax-path-escape", [M("file", "../../../outside/é-pax")], fmt=tarfile.PAX_FORMAT),
    Case("gnu-longname-escape", [M("file", f"../../../outside/{LONG}")], fmt=tarfile.GNU_FORMAT),
    Case(
        "gnu-longlink-hardlink-escape",
        [M("hardlink", "h", f"../../../outside/{LONG}")],
        fmt=tarfile.GNU_FORMAT,
    ),
    # non-ASCII, so the name travels in a PAX record, NUL and all
    Case("nul-in-pax-name", [M("file", "é\x00/../../../../outside/evil")], fmt=tarfile.PAX_FORMAT),
]

# Tricks that must not be refused (real layers do these) but must stay inside the root.
# check(root) asserts what the layer did inside.
CONTAINED: list[tuple[Case, Callable[[Path], bool]]] = [
    (Case("absolute-path-is-rooted", [M("file", "/etc/evil")]), lambda r: (r / "etc/evil").is_file()),
    (
        Case("file-replaces-symlink-to-outside", [M("file", "s", data=b"new")],
             base=[M("symlink", "s", f"{OUT}/sentinel")]),
        lambda r: (r / "s").read_bytes() == b"new" and not (r / "s").is_symlink(),
    ),
    (
        Case("same-layer-symlink-then-file", [M("symlink", "s", f"{OUT}/sentinel"), M("file", "s")]),
        lambda r: not (r / "s").is_symlink(),
    ),
    (
        Case("dir-replaces-symlink-to-outside", [M("dir", "l")], base=[M("symlink", "l", OUT)]),
        lambda r: (r / "l").is_dir() and not (r / "l").is_symlink(),
    ),
    (
        Case("hardlink-to-symlink-then-file",
             [M("symlink", "s", f"{OUT}/sentinel"), M("hardlink", "h", "s"), M("file", "h")]),
        lambda r: (r / "s").is_symlink() and not (r / "h").is_symlink(),
    ),
    (
        Case("fifo-then-file", [M("fifo", "p"), M("file", "p", data=b"x")]),
        lambda r: (r / "p").read_bytes() == b"x",
    ),
    (
        Case("device-then-file", [M("char", "n"), M("file", "n", data=b"x")], root_only=True),
        lambda r: stat.S_ISREG(os.lstat(r / "n").st_mode),
    ),
    (
        Case("whiteout-removes-link-not-target", [M("file", ".wh.s")],
             base=[M("symlink", "s", f"{OUT}/sentinel")]),
        lambda r: not os.path.lexists(r / "s"),
    ),
    (
        Case("opaque-root-removes-links-only", [M("file", ".wh..wh..opq")],
             base=[M("symlink", "s", OUT), M("symlink", "t", "../../../outside")]),
        lambda r: os.listdir(r) == [],
    ),
    (
        Case("dangling-symlink-parent", [M("symlink", "l", "nowhere/deeper"), M("file", "l/x")],
             raises=ArchiveError),
        lambda r: sorted(os.listdir(r)) == ["l"],
    ),
    (
        # a ustar name field ends at its first NUL: what follows is never seen
        Case("nul-in-ustar-name", [M("file", "ok\x00/../../../../outside/evil")], fmt=tarfile.USTAR_FORMAT),
        lambda r: os.listdir(r) == ["ok"],
    ),
    (
        Case("symlink-inside-root-is-followed", [M("dir", "usr/lib"), M("symlink", "lib", "usr/lib"),
                                                   M("file", "lib/libc.so")]),
        lambda r: (r / "usr/lib/libc.so").is_file(),
    ),
]  # fmt: skip


def _snapshot(top: Path, skip: Path) -> dict[str, tuple[int, int, str]]:
    """Everything under ``top`` except ``skip``: type/mode, size and content digest."""
    out: dict[str, tuple[int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if Path(dirpath) == skip.parent:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = os.lstat(p)
            digest = (
                hashlib.sha256(p.read_bytes()).hexdigest()
                if p.is_file() and not p.is_symlink()
                else ""
            )
            out[str(p.relative_to(top))] = (st.st_mode, st.st_size, digest)
    return out


@pytest.fixture
def arena(tmp_path: Path) -> tuple[Path, Path]:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("untouched")
    (outside / "dir").mkdir()
    (outside / "dir" / "inner").write_text("inner")
    root = tmp_path / "a" / "b" / "root"
    root.mkdir(parents=True)
    return root, outside


def _apply_case(case: Case, root: Path, outside: Path, *, gz: bool) -> None:
    if case.root_only and os.geteuid() != 0:
        pytest.skip("needs root")
    if case.base:
        apply_layer(io.BytesIO(make_tar(case.base, outside)), root)
    blob = make_tar(case.members, outside, case.fmt)
    apply_layer(io.BytesIO(gzip.compress(blob) if gz else blob), root)


@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tar.gz"])
@pytest.mark.parametrize("case", REFUSED, ids=lambda c: c.id)
def test_refused(case: Case, gz: bool, arena: tuple[Path, Path], tmp_path: Path) -> None:
    root, outside = arena
    before = _snapshot(tmp_path, root)
    with pytest.raises(UnsafePathError) as info:
        _apply_case(case, root, outside, gz=gz)
    named = case.entry or case.members[-1].name
    assert info.value.entry.rstrip("/") == _sub(named, outside)  # as written in the tar
    assert str(info.value).startswith("unsafe path ")
    assert _snapshot(tmp_path, root) == before
    assert (outside / "sentinel").read_text() == "untouched"


@pytest.mark.parametrize(("case", "check"), CONTAINED, ids=[c.id for c, _ in CONTAINED])
def test_contained(
    case: Case, check: Callable[[Path], bool], arena: tuple[Path, Path], tmp_path: Path
) -> None:
    root, outside = arena
    before = _snapshot(tmp_path, root)
    if case.raises is not None:
        with pytest.raises(case.raises):
            _apply_case(case, root, outside, gz=False)
    else:
        _apply_case(case, root, outside, gz=False)
    assert check(root)
    assert _snapshot(tmp_path, root) == before
    assert (outside / "sentinel").read_text() == "untouched"


def test_hardlink_to_missing_target_is_an_archive_error(arena: tuple[Path, Path]) -> None:
    root, outside = arena
    blob = make_tar([M("hardlink", "h", f"{OUT}/sentinel")], outside)  # rooted: not there
    with pytest.raises(ArchiveError, match="does not exist"):
        apply_layer(io.BytesIO(blob), root)
    assert (outside / "sentinel").read_text() == "untouched"


@pytest.mark.parametrize(
    "name",
    ["/".join(["d"] * 2100), "n" * 300, "/".join(["d"] * 600)],
    ids=["deeper-than-path-max", "component-too-long", "too-many-levels"],
)
def test_oversized_names_are_archive_errors(name: str, arena: tuple[Path, Path]) -> None:
    root, outside = arena
    with pytest.raises(ArchiveError, match=r"name longer|too long|directory levels"):
        apply_layer(io.BytesIO(make_tar([M("file", name)], outside)), root)


def test_file_as_parent_is_an_archive_error(arena: tuple[Path, Path]) -> None:
    root, outside = arena
    blob = make_tar([M("file", "f"), M("file", "f/child")], outside)
    with pytest.raises(ArchiveError, match="not a directory"):
        apply_layer(io.BytesIO(blob), root)


def _fuzz_seed_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, link in [
            ("d", tarfile.DIRTYPE, ""),
            ("d/f", tarfile.REGTYPE, ""),
            ("l", tarfile.SYMTYPE, "d/f"),
            ("h", tarfile.LNKTYPE, "d/f"),
            ("é" * 60, tarfile.REGTYPE, ""),
            (".wh.x", tarfile.REGTYPE, ""),
            ("d/.wh..wh..opq", tarfile.REGTYPE, ""),
        ]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            data = b"hello" * 30 if kind == tarfile.REGTYPE and not name.startswith(".wh") else b""
            info.size = len(data)
            if name == "d/f":
                info.pax_headers = {"SCHILY.xattr.user.a": "b"}
            tf.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


FUZZ_SEED = _fuzz_seed_tar()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    edits=st.lists(
        st.tuples(
            st.integers(0, len(FUZZ_SEED) - 1),
            st.sampled_from(b"\x00/.0125x\xff") | st.integers(0, 255),
        ),
        min_size=1,
        max_size=8,
    ),
    cut=st.none() | st.integers(0, len(FUZZ_SEED)),
    compress=st.booleans(),
)
def test_mutated_layers_fail_cleanly(
    edits: list[tuple[int, int]], cut: int | None, compress: bool, tmp_path: Path
) -> None:
    """Any damage to a tar gives a StoreError (never another exception), and stays inside."""
    blob = bytearray(FUZZ_SEED)
    for pos, value in edits:
        blob[pos] = value
    data = bytes(blob[:cut] if cut is not None else blob)
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    (work / "outside").mkdir()
    root = work / "a" / "root"
    root.mkdir(parents=True)
    try:
        apply_layer(io.BytesIO(gzip.compress(data, mtime=0) if compress else data), root)
    except StoreError:
        pass
    assert sorted(os.listdir(work)) == ["a", "outside"] and os.listdir(work / "a") == ["root"]
    assert os.listdir(work / "outside") == []
