"""Containment rules: lexical cleaning and descriptor-relative resolution under a root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from layerstore.errors import ArchiveError, UnsafePathError
from layerstore.safepath import RootDir, clean_member_name


@pytest.mark.parametrize(
    ("name", "cleaned"),
    [
        ("a/b", "a/b"),
        ("./a/b/", "a/b"),
        ("/etc/passwd", "etc/passwd"),
        ("//a//b", "a/b"),
        ("a/./b/.", "a/b"),
        ("a/../b", "b"),
        ("a/b/../../c", "c"),
        (".", ""),
        ("./", ""),
        ("/", ""),
        ("a/..", ""),
        ("...", "..."),
        ("..a/b..", "..a/b.."),
        (".wh..wh..opq", ".wh..wh..opq"),
    ],
)
def test_clean_member_name(name: str, cleaned: str) -> None:
    assert clean_member_name(name) == cleaned


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("..", "climbs above"),
        ("../x", "climbs above"),
        ("/../x", "climbs above"),
        ("a/../../x", "climbs above"),
        ("./a/b/../../../x", "climbs above"),
        ("a\x00b", "NUL"),
    ],
)
def test_clean_member_name_refuses(name: str, reason: str) -> None:
    with pytest.raises(UnsafePathError, match=reason) as info:
        clean_member_name(name)
    assert info.value.entry == name


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "usr" / "lib").mkdir(parents=True)
    (r / "usr" / "lib" / "libc.so").write_text("")
    os.symlink("usr/lib", r / "lib")  # merged /usr, relative: followed
    os.symlink("../usr", r / "usr" / "self")  # relative, stays inside: followed
    os.symlink("/usr/lib", r / "abs")  # absolute: refused
    os.symlink("../../..", r / "usr" / "up")  # climbs out: refused
    os.symlink("loop2", r / "loop1")
    os.symlink("loop1", r / "loop2")
    (r / "file").write_text("")
    os.symlink("missing/dir", r / "dangling")
    return r


@pytest.mark.parametrize(
    ("path", "canonical"),
    [
        ("", ""),
        ("usr", "usr"),
        ("usr/lib", "usr/lib"),
        ("lib", "usr/lib"),
        ("usr/self/lib", "usr/lib"),
        ("usr/self/self/self", "usr"),
    ],
)
def test_resolve_dir_follows_inside_symlinks(root: Path, path: str, canonical: str) -> None:
    with RootDir(root) as rd:
        found = rd.resolve_dir(path, entry=path)
        assert found is not None
        fd, canon = found
        try:
            assert canon == canonical
            assert os.path.samestat(os.fstat(fd), os.stat(root / canonical))
        finally:
            os.close(fd)
        # a second lookup comes from the cache and gives the same answer
        again = rd.resolve_dir(path, entry=path)
        assert again is not None and again[1] == canonical
        os.close(again[0])


@pytest.mark.parametrize(
    ("path", "error", "match"),
    [
        ("abs", UnsafePathError, "absolute path"),
        ("abs/x", UnsafePathError, "absolute path"),
        ("usr/up", UnsafePathError, "climbs above the root"),
        ("lib/../up/x", UnsafePathError, "climbs above the root"),
        ("loop1", UnsafePathError, "too many symlinks"),
        ("file/x", ArchiveError, "not a directory"),
        ("dangling/x", ArchiveError, "dangling symlink"),
    ],
)
def test_resolve_dir_refuses(root: Path, path: str, error: type[Exception], match: str) -> None:
    with RootDir(root) as rd, pytest.raises(error, match=match) as info:
        rd.resolve_dir(path, entry="the-entry", create=True)
    if isinstance(info.value, UnsafePathError):
        assert info.value.entry == "the-entry"


def test_resolve_dir_creates_missing_parents(root: Path) -> None:
    with RootDir(root) as rd:
        assert rd.resolve_dir("new/deeper", entry="x") is None
        found = rd.resolve_dir("new/deeper", entry="x", create=True, mode=0o750)
        assert found is not None
        os.close(found[0])
    assert (root / "new" / "deeper").is_dir()
    assert oct((root / "new").stat().st_mode & 0o777) == "0o750"


def test_remove_never_follows(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("k")
    os.symlink(outside, root / "out")
    with RootDir(root) as rd:
        assert rd.remove(rd.fd, "out") is True
        assert rd.remove(rd.fd, "usr") is True
        assert rd.remove(rd.fd, "missing") is False
    assert (outside / "keep").read_text() == "k"
    assert not (root / "usr").exists()
