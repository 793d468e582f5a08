"""Layer writing and applying: round trips, reproducibility, interop with GNU tar, overlayfs."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from layerstore.blobs import BlobStore
from layerstore.descriptor import MediaType
from layerstore.digest import Digest
from layerstore.errors import ArchiveError, DigestMismatch, StoreError, UnsafePathError
from layerstore.layer import (
    Layer,
    LayerEntry,
    LayerReader,
    apply_layer,
    layer_media_type,
    write_layer,
    write_layer_from_entries,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "layers"
CASES = json.loads((FIXTURES / "roundtrip.json").read_text())["cases"]
IS_ROOT = os.geteuid() == 0
FIXED_NS = 1_500_000_000 * 10**9
COMPRESSIONS = ["gzip", "zstd", "none"]

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (devices, ownership, trusted.*)")


# ---------------------------------------------------------------------------------------
# Trees: built from op lists, compared through a model
# ---------------------------------------------------------------------------------------


def _mkparents(root: Path, rel: str) -> Path:
    p = root / rel
    parts = Path(rel).parts[:-1]
    cur = root
    for part in parts:
        cur = cur / part
        if not cur.exists():
            cur.mkdir()
            os.chmod(cur, 0o755)
    return p


def build_tree(root: Path, ops: list[list[Any]], *, fixed_times: bool = True) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for op in ops:
        kind, rel = op[0], op[1]
        p = _mkparents(root, rel) if kind not in ("xattr", "chown") else root / rel
        if kind == "file":
            p.write_bytes(op[2].encode())
            os.chmod(p, int(op[3], 8))
        elif kind == "bytes":
            p.write_bytes(random.Random(op[3]).randbytes(op[2]))
        elif kind == "text":
            words = [b"layer", b"tar", b"gzip", b"digest", b"overlay", b"whiteout", b"\n"]
            rnd = random.Random(1)
            out = bytearray()
            while len(out) < op[2]:
                out += rnd.choice(words) + b" "
            p.write_bytes(bytes(out[: op[2]]))
        elif kind == "dir":
            p.mkdir(parents=True, exist_ok=True)
            os.chmod(p, int(op[2], 8))
        elif kind == "opaque":
            p.mkdir(parents=True, exist_ok=True)
            os.chmod(p, 0o755)
            os.setxattr(p, "trusted.overlay.opaque", b"y")
        elif kind == "symlink":
            os.symlink(op[2], p)
        elif kind == "hardlink":
            os.link(root / op[2], p)
        elif kind == "fifo":
            os.mkfifo(p, 0o644)
        elif kind in ("char", "block"):
            fmt = stat.S_IFCHR if kind == "char" else stat.S_IFBLK
            os.mknod(p, fmt | 0o644, os.makedev(op[2], op[3]))
        elif kind == "whiteout":
            os.mknod(p, stat.S_IFCHR, os.makedev(0, 0))
        elif kind == "xattr":
            os.setxattr(p, op[2], bytes.fromhex(op[3]), follow_symlinks=False)
        elif kind == "chown":
            mode = os.lstat(p).st_mode
            os.chown(p, op[2], op[3], follow_symlinks=False)
            if not stat.S_ISLNK(mode):
                os.chmod(p, stat.S_IMODE(mode))  # chown cleared setuid/setgid
        else:
            raise AssertionError(f"unknown op {kind}")
    if fixed_times:
        for dirpath, dirnames, filenames in os.walk(root, topdown=False):
            for name in filenames + dirnames:
                os.utime(
                    os.path.join(dirpath, name), ns=(FIXED_NS, FIXED_NS), follow_symlinks=False
                )


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(
        sorted(
            (n, os.getxattr(path, n, follow_symlinks=False))
            for n in names
            if not n.startswith(("trusted.overlay.", "security.selinux"))
        )
    )


def tree_model(root: Path, *, mtimes: bool = True) -> dict[str, Any]:
    """Everything a layer must preserve, per path, plus the hard-link groups."""
    model: dict[str, Any] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            fmt = stat.S_IFMT(st.st_mode)
            entry: dict[str, Any] = {
                "type": stat.filemode(st.st_mode)[0],
                "mode": oct(stat.S_IMODE(st.st_mode)),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "xattrs": _xattrs(full),
            }
            if mtimes:
                entry["mtime"] = st.st_mtime_ns
            if fmt == stat.S_IFREG:
                entry["size"] = st.st_size
                entry["sha256"] = hashlib.sha256(Path(full).read_bytes()).hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(rel)
            elif fmt == stat.S_IFLNK:
                entry["target"] = os.readlink(full)
                del entry["mode"]
            elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
                entry["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            model[rel] = entry
    model["<hardlinks>"] = sorted(sorted(v) for v in inodes.values() if len(v) > 1)
    return model


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "store")


def _case_id(case: dict[str, Any]) -> str:
    return str(case["name"])


def _skip_unless_allowed(case: dict[str, Any]) -> None:
    if case["root"] and not IS_ROOT:
        pytest.skip("case needs root")


# ---------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_round_trip(
    case: dict[str, Any], compression: str, tmp_path: Path, blobs: BlobStore
) -> None:
    _skip_unless_allowed(case)
    upper, target, expected = tmp_path / "upper", tmp_path / "target", tmp_path / "expected"
    build_tree(upper, case["upper"])
    build_tree(target, case["base"])
    exp_ops = case["upper"] if case["expected"] == "upper" else case["expected"]
    build_tree(expected, exp_ops)

    layer = write_layer(upper, blobs, compression=compression)
    assert layer.media_type == layer_media_type(compression)
    assert layer.size == blobs.size(layer.digest)
    with blobs.open(layer.digest) as f:
        stats = apply_layer(f, target, media_type=layer.media_type)
    assert stats.diff_id == layer.diff_id
    assert stats.warnings == []
    assert tree_model(target) == tree_model(expected)


@pytest.mark.parametrize("case", [c for c in CASES if c["gnu_tar"]], ids=_case_id)
def test_gnu_tar_extracts_the_same_tree(
    case: dict[str, Any], tmp_path: Path, blobs: BlobStore
) -> None:
    """GNU tar (the reference reader) and Python's tarfile both read our layers."""
    _skip_unless_allowed(case)
    upper, out = tmp_path / "upper", tmp_path / "out"
    build_tree(upper, case["upper"])
    layer = write_layer(upper, blobs, compression="gzip", overlay=False)
    out.mkdir()
    cmd = [
        "tar",
        "-x",
        "-f",
        str(blobs.path(layer.digest)),
        "-C",
        str(out),
        "--xattrs",
        "--xattrs-include=*",
        "--numeric-owner",
        "-p",
    ]
    if IS_ROOT:
        cmd.append("--same-owner")
    subprocess.run(cmd, check=True, capture_output=True)
    assert tree_model(out) == tree_model(upper)

    listing = (
        subprocess.run(
            ["tar", "-tf", str(blobs.path(layer.digest))], check=True, capture_output=True
        )
        .stdout.decode()
        .splitlines()
    )
    with tarfile.open(blobs.path(layer.digest)) as tf:
        names = [m.name + ("/" if m.isdir() else "") for m in tf.getmembers()]
    assert listing == names
    assert len(names) == len(tree_model(upper)) - 1
    # tar -tvf: mode string and numeric owner per entry (uname/gname are empty)
    verbose = subprocess.run(
        ["tar", "-tvf", str(blobs.path(layer.digest))], check=True, capture_output=True
    ).stdout.decode()
    model = tree_model(upper)
    for line, name in zip(verbose.splitlines(), names, strict=True):
        perms, owner = line.split()[:2]
        entry = model[name.rstrip("/")]
        kind = "h" if any(name in g[1:] for g in model["<hardlinks>"]) else entry["type"]
        assert perms[0] == kind, line
        assert owner == f"{entry['uid']}/{entry['gid']}", line
        if "mode" in entry and kind != "h":
            assert stat.filemode(int(entry["mode"], 8) | stat.S_IFREG)[1:] == perms[1:], line


def test_walk_order_is_parents_first_then_bytewise(tmp_path: Path, blobs: BlobStore) -> None:
    ops = [["file", n, "", "0644"] for n in ("b", "a.txt", "a-b", "A", "a/z", "a/b/c", "ä")]
    build_tree(tmp_path / "src", ops)
    layer = write_layer(tmp_path / "src", blobs, compression="none")
    with tarfile.open(blobs.path(layer.digest)) as tf:
        names = [m.name for m in tf.getmembers()]
    # containerd/BuildKit walk order: a directory's entries sorted byte-wise, each
    # directory followed by its children
    assert names == ["A", "a", "a/b", "a/b/c", "a/z", "a-b", "a.txt", "b", "ä"]


def test_tar_headers_are_normalised(tmp_path: Path, blobs: BlobStore) -> None:
    build_tree(tmp_path / "src", CASES[0]["upper"], fixed_times=False)
    layer = write_layer(tmp_path / "src", blobs, compression="none", source_date_epoch=1234)
    with tarfile.open(blobs.path(layer.digest)) as tf:
        members = tf.getmembers()
    assert {m.uname for m in members} == {""} and {m.gname for m in members} == {""}
    assert {m.mtime for m in members} == {1234}
    raw = blobs.path(layer.digest).read_bytes()
    assert raw[257:265] == b"ustar\x0000"
    assert raw.endswith(bytes(1024)) and len(raw) % 512 == 0


@pytest.mark.parametrize(
    ("fields", "pax_keys"),
    [
        ({"name": b"plain", "size": 3}, set()),
        ({"name": b"n" * 101}, {"path"}),
        ({"name": "ünï".encode()}, {"path"}),
        ({"name": b"bad-\xff-utf8"}, {"path", "hdrcharset"}),
        ({"name": b"l", "typeflag": b"2", "linkname": b"t" * 150}, {"linkpath"}),
        ({"name": b"big", "size": 9 << 30}, {"size"}),
        ({"name": b"ids", "uid": 1 << 21, "gid": 1 << 30}, {"uid", "gid"}),
        ({"name": b"old", "mtime": -86400}, {"mtime"}),
        (
            {"name": b"x", "xattrs": [("security.capability", b"\x01\x00\x00\x02" + bytes(16))]},
            {"SCHILY.xattr.security.capability"},
        ),
    ],
    ids=[
        "ustar",
        "long",
        "unicode",
        "binary",
        "longlink",
        "8gib",
        "ids",
        "negative-mtime",
        "xattr",
    ],
)
def test_header_encoding(fields: dict[str, Any], pax_keys: set[str]) -> None:
    """Our headers as GNU/PAX readers see them: PAX records exactly when a field needs one."""
    from layerstore.layer import TarStreamReader, _TarEntry

    base: dict[str, Any] = {"typeflag": b"0", "mode": 0o644, "uid": 0, "gid": 0, "mtime": 5}
    entry = _TarEntry(**{**base, **fields})
    raw = entry.headers()
    assert len(raw) % 512 == 0
    size = entry.size
    if size and size < 1 << 20:
        raw += bytes(size) + bytes(-size % 512)
    with tarfile.open(fileobj=io.BytesIO(raw + bytes(1024)), mode="r|") as tf:
        info = tf.next()
        assert info is not None
        assert set(info.pax_headers) == pax_keys
        assert os.fsencode(info.name) == entry.name
        assert (info.size, info.uid, info.gid, int(info.mtime)) == (
            size,
            entry.uid,
            entry.gid,
            entry.mtime,
        )
        assert os.fsencode(info.linkname) == entry.linkname
    [ours] = list(TarStreamReader(io.BytesIO(raw + bytes(1024)))) if size < 1 << 20 else [None]
    if ours is not None:
        assert (os.fsencode(ours.name), ours.size, ours.uid, ours.gid, ours.mtime) == (
            entry.name,
            size,
            entry.uid,
            entry.gid,
            entry.mtime,
        )
        assert ours.xattrs == (entry.xattrs or [])


# ---------------------------------------------------------------------------------------
# Reproducibility
# ---------------------------------------------------------------------------------------


def _build_shuffled(root: Path, ops: list[list[Any]], seed: int) -> None:
    """The same tree, created in another order (other inode numbers, other readdir order)."""
    root.mkdir(parents=True)
    for i in range(seed * 7):  # burn inode numbers
        (root / f"decoy{i}").write_text("x")
    for i in range(seed * 7):
        (root / f"decoy{i}").unlink()
    dirs = sorted((o for o in ops if o[0] == "dir"), key=lambda o: len(o[1]), reverse=bool(seed))
    plain = [o for o in ops if o[0] not in ("dir", "hardlink", "xattr", "chown")]
    random.Random(seed).shuffle(plain)
    rest = [o for o in ops if o[0] in ("hardlink", "xattr", "chown")]
    build_tree(root, dirs + plain + rest, fixed_times=False)


REPRO_OPS = (
    CASES[0]["upper"]
    + CASES[1]["upper"]
    + CASES[3]["upper"]
    + [
        ["bytes", "blob/random", 1500000, 1],
        ["text", "blob/text", 2500000],
    ]
)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_reproducible_with_source_date_epoch(
    compression: str, tmp_path: Path, blobs: BlobStore
) -> None:
    _build_shuffled(tmp_path / "one", REPRO_OPS, 0)
    _build_shuffled(tmp_path / "two", REPRO_OPS, 3)
    sde = 1_700_000_000
    a = write_layer(tmp_path / "one", blobs, compression=compression, source_date_epoch=sde)
    b = write_layer(tmp_path / "two", blobs, compression=compression, source_date_epoch=sde)
    assert (a.digest, a.diff_id, a.size) == (b.digest, b.diff_id, b.size)
    c = write_layer(tmp_path / "one", blobs, compression=compression, source_date_epoch=sde + 1)
    assert c.diff_id != a.diff_id  # the epoch really is in the tar


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_thread_count_does_not_change_bytes(
    compression: str, tmp_path: Path, blobs: BlobStore
) -> None:
    build_tree(tmp_path / "src", REPRO_OPS)
    digests = {
        write_layer(tmp_path / "src", blobs, compression=compression, threads=n).digest
        for n in (1, 2, 5)
    }
    assert len(digests) == 1


def test_gzip_output_is_standard_and_level_matters(tmp_path: Path, blobs: BlobStore) -> None:
    build_tree(tmp_path / "src", REPRO_OPS)
    plain = write_layer(tmp_path / "src", blobs, compression="none")
    fast = write_layer(tmp_path / "src", blobs, compression="gzip", level=1)
    best = write_layer(tmp_path / "src", blobs, compression="gzip", level=9)
    assert fast.diff_id == best.diff_id == plain.diff_id
    assert best.size < fast.size
    # one gzip member that gzip(1) verifies and the stdlib decodes to the same tar
    subprocess.run(["gzip", "-t", str(blobs.path(best.digest))], check=True)
    data = gzip.decompress(blobs.path(best.digest).read_bytes())
    assert Digest.of(data) == plain.diff_id
    if shutil.which("zstd"):
        z = write_layer(tmp_path / "src", blobs, compression="zstd")
        subprocess.run(["zstd", "-q", "-t", str(blobs.path(z.digest))], check=True)


def test_docker_media_types(tmp_path: Path, blobs: BlobStore) -> None:
    build_tree(tmp_path / "src", [["file", "f", "x", "0644"]])
    layer = write_layer(tmp_path / "src", blobs, media_type_family="docker")
    assert layer.media_type == MediaType.DOCKER_LAYER_GZIP
    assert layer.descriptor().to_json() == {
        "mediaType": MediaType.DOCKER_LAYER_GZIP,
        "digest": str(layer.digest),
        "size": layer.size,
    }
    plain = write_layer(tmp_path / "src", blobs, compression="uncompressed")
    assert plain.media_type == MediaType.OCI_LAYER and plain.digest == plain.diff_id
    with pytest.raises(ValueError, match="unknown layer format"):
        write_layer(tmp_path / "src", blobs, compression="bzip2")


# ---------------------------------------------------------------------------------------
# Entry lists (COPY)
# ---------------------------------------------------------------------------------------


def _members(blobs: BlobStore, layer: Layer) -> list[tarfile.TarInfo]:
    with tarfile.open(blobs.path(layer.digest)) as tf:
        return tf.getmembers()


def test_entries_layer(tmp_path: Path, blobs: BlobStore) -> None:
    src = tmp_path / "ctx"
    build_tree(
        src,
        [
            ["file", "main.py", "print(1)\n", "0600"],
            ["hardlink", "alias.py", "main.py"],
            ["symlink", "cur", "main.py"],
            ["xattr", "main.py", "user.k", "76"],
        ],
    )
    entries = [
        LayerEntry("app/main.py", source=src / "main.py", uid=1000, gid=1000),
        LayerEntry("/app/alias.py", source=src / "alias.py", uid=1000, gid=1000),
        LayerEntry("app", kind="dir", mode=0o755, uid=1000, gid=1000),
        LayerEntry("app/cur", source=src / "cur"),
        LayerEntry("app/VERSION", content=b"1.2\n", mode=0o444, mtime=99),
        LayerEntry("app/bin/run", content=b"#!/bin/sh\n", mode=0o4755),
        LayerEntry("app/bin", kind="dir"),
        LayerEntry("etc/motd", kind="whiteout"),
        LayerEntry("var/cache", kind="opaque"),
    ]
    layer = write_layer_from_entries(entries, blobs, compression="none", source_date_epoch=50)
    got = [
        (m.name, m.type, oct(m.mode), m.uid, m.gid, m.mtime, m.linkname, m.size)
        for m in _members(blobs, layer)
    ]
    assert got == [
        ("app", tarfile.DIRTYPE, "0o755", 1000, 1000, 0, "", 0),
        ("app/VERSION", tarfile.REGTYPE, "0o444", 0, 0, 50, "", 4),
        ("app/alias.py", tarfile.REGTYPE, "0o600", 1000, 1000, 50, "", 9),
        ("app/bin", tarfile.DIRTYPE, "0o755", 0, 0, 0, "", 0),
        ("app/bin/run", tarfile.REGTYPE, "0o4755", 0, 0, 0, "", 10),
        ("app/cur", tarfile.SYMTYPE, "0o777", os.getuid(), os.getgid(), 50, "main.py", 0),
        # the first path in walk order is the file, later ones link to it
        ("app/main.py", tarfile.LNKTYPE, "0o600", 1000, 1000, 50, "app/alias.py", 0),
        ("etc/.wh.motd", tarfile.REGTYPE, "0o0", 0, 0, 0, "", 0),
        ("var/cache/.wh..wh..opq", tarfile.REGTYPE, "0o0", 0, 0, 0, "", 0),
    ]
    members = {m.name: m for m in _members(blobs, layer)}
    assert members["app/alias.py"].pax_headers["SCHILY.xattr.user.k"] == "v"


@pytest.mark.parametrize(
    ("entries", "error", "match"),
    [
        (
            [LayerEntry("a", content=b"1"), LayerEntry("./a", content=b"2")],
            ValueError,
            "appears twice",
        ),
        ([LayerEntry("../a", content=b"1")], UnsafePathError, "climbs above the root"),
        ([LayerEntry("/", kind="dir")], ValueError, "layer root itself"),
        ([LayerEntry("l", kind="symlink")], ValueError, "needs link_target"),
        (
            [LayerEntry("x", kind="dir", source=FIXTURES / "roundtrip.json")],
            ValueError,
            "does not match",
        ),
        (
            [LayerEntry("a", kind="hardlink", link_target="b"), LayerEntry("b", content=b"")],
            ValueError,
            "sorts before",
        ),
        ([LayerEntry("b", kind="hardlink", link_target="a")], ValueError, "sorts before"),
        (
            [LayerEntry("d", kind="dir"), LayerEntry("e", kind="hardlink", link_target="d")],
            ValueError,
            "sorts before",
        ),
    ],
    ids=[
        "duplicate",
        "dotdot",
        "root",
        "symlink-without-target",
        "kind-mismatch",
        "hardlink-before-target",
        "hardlink-to-missing",
        "hardlink-to-dir",
    ],
)
def test_bad_entries(
    entries: list[LayerEntry], error: type[Exception], match: str, blobs: BlobStore
) -> None:
    with pytest.raises(error, match=match):
        write_layer_from_entries(entries, blobs)


def test_missing_source_is_a_clear_error(tmp_path: Path, blobs: BlobStore) -> None:
    with pytest.raises(StoreError, match=r"gone\.txt"):
        write_layer_from_entries([LayerEntry("a", source=tmp_path / "gone.txt")], blobs)
    with pytest.raises(StoreError, match="not a directory"):
        write_layer(tmp_path / "nope", blobs)
    assert list(blobs) == []


def test_explicit_hardlink_entry(tmp_path: Path, blobs: BlobStore) -> None:
    entries = [LayerEntry("b", kind="hardlink", link_target="/a"), LayerEntry("a", content=b"data")]
    layer = write_layer_from_entries(entries, blobs, compression="none")
    assert [(m.name, m.type, m.linkname) for m in _members(blobs, layer)] == [
        ("a", tarfile.REGTYPE, ""),
        ("b", tarfile.LNKTYPE, "a"),
    ]
    apply_layer(blobs.path(layer.digest), tmp_path / "out")
    assert os.path.samefile(tmp_path / "out" / "a", tmp_path / "out" / "b")


@needs_root
def test_xwhiteout_in_upperdir(tmp_path: Path, blobs: BlobStore) -> None:
    """overlayfs 6.7+ may mark a whiteout as an empty file with trusted.overlay.whiteout."""
    src = tmp_path / "upper"
    build_tree(src, [["file", "gone", "", "0644"], ["file", "empty", "", "0644"]])
    os.setxattr(src / "gone", "trusted.overlay.whiteout", b"")
    layer = write_layer(src, blobs, compression="none")
    # a whiteout sits where the deleted path sorts, as in containerd's change walk
    assert [m.name for m in _members(blobs, layer)] == ["empty", ".wh.gone"]


# ---------------------------------------------------------------------------------------
# Applying
# ---------------------------------------------------------------------------------------


def _tar_bytes(files: dict[str, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


_ZSTD_TAR = zstandard.ZstdCompressor(write_checksum=True).compress(
    _tar_bytes({"f": random.Random(5).randbytes(300_000)})
)


def _tar_of(
    members: list[tuple[tarfile.TarInfo, bytes]], fmt: int, pax: dict[str, str] | None = None
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=pax or {}) as tf:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def _info(name: str, **kw: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(info, k, v)
    return info


LONG_DIR = "/".join(["segment"] * 20)  # 159 bytes: ustar needs its prefix field


@pytest.mark.parametrize(
    "fmt",
    [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
    ids=["ustar", "gnu", "pax"],
)
def test_reader_handles_tar_formats(fmt: int, tmp_path: Path) -> None:
    """ustar prefix names, GNU long names and base-256 numbers, PAX records, global headers."""
    long_name = "n" * 130 if fmt != tarfile.USTAR_FORMAT else "short"
    big_uid = 70_000_000 if fmt != tarfile.USTAR_FORMAT else 1000
    members = [
        (_info(f"{LONG_DIR}/file", mode=0o640, uid=big_uid, gid=5, mtime=1_234_567), b"deep"),
        (_info(long_name, mode=0o644), b"long"),
        (_info("dir", type=tarfile.DIRTYPE, mode=0o750, mtime=42), b""),
        (_info("dir/link", type=tarfile.SYMTYPE, linkname="../" + long_name), b""),
        (_info("dir/hard", type=tarfile.LNKTYPE, linkname=long_name), b""),
    ]
    if fmt == tarfile.PAX_FORMAT:
        members.append((_info("x", pax_headers={"SCHILY.xattr.user.k": "v", "mtime": "7.5"}), b"x"))
    raw = _tar_of(members, fmt, {"comment": "global header"} if fmt == tarfile.PAX_FORMAT else None)
    out = tmp_path / "out"
    stats = apply_layer(io.BytesIO(raw), out)
    assert stats.diff_id == Digest.of(raw) and stats.entries == len(members)
    st = os.stat(out / LONG_DIR / "file")
    assert (out / LONG_DIR / "file").read_bytes() == b"deep"
    assert (oct(stat.S_IMODE(st.st_mode)), st.st_mtime) == ("0o640", 1_234_567)
    if IS_ROOT:
        assert (st.st_uid, st.st_gid) == (big_uid, 5)
    assert (out / long_name).read_bytes() == b"long"
    assert os.readlink(out / "dir" / "link") == "../" + long_name
    assert os.path.samefile(out / "dir" / "hard", out / long_name)
    assert (oct(stat.S_IMODE(os.stat(out / "dir").st_mode)), os.stat(out / "dir").st_mtime) == (
        "0o750",
        42,
    )
    if fmt == tarfile.PAX_FORMAT:
        assert os.getxattr(out / "x", "user.k") == b"v"
        assert os.stat(out / "x").st_mtime_ns == 7_500_000_000


def test_decompression_follows_magic_bytes_not_media_type(tmp_path: Path) -> None:
    raw = _tar_bytes({"a": b"1" * 5000, "b": b"2"})
    half = len(raw) // 2
    multi = gzip.compress(raw[:half]) + gzip.compress(raw[half:])  # two gzip members
    for i, blob in enumerate([raw, gzip.compress(raw), multi]):
        out = tmp_path / str(i)
        stats = apply_layer(io.BytesIO(blob), out, media_type=MediaType.OCI_LAYER_ZSTD)
        assert (out / "a").read_bytes() == b"1" * 5000 and (out / "b").read_bytes() == b"2"
        assert stats.diff_id == Digest.of(raw)


def test_tar_made_by_gnu_tar_applies(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_tree(src, CASES[0]["upper"] + CASES[1]["upper"])
    blob = tmp_path / "gnu.tar.gz"
    subprocess.run(["tar", "-C", str(src), "-czf", str(blob), "."], check=True)
    apply_layer(blob, tmp_path / "out")
    assert tree_model(tmp_path / "out") == tree_model(src)


@pytest.mark.parametrize(
    "blob",
    [
        b"not a tar at all, just text" * 40,
        b"\x1f\x8b\x08\x00garbage",
        gzip.compress(b"x" * 700)[:-9],
        b"\x28\xb5\x2f\xfdjunk",
        _ZSTD_TAR[: len(_ZSTD_TAR) // 2],
        _ZSTD_TAR[:-3],
        b"",
        _tar_bytes({"a": b"1" * 3000})[:1200],
        b"\x00" * 100 + b"\x01" * 412,
    ],
    ids=[
        "text",
        "bad-gzip",
        "truncated-gzip",
        "bad-zstd",
        "truncated-zstd",
        "zstd-no-checksum",
        "empty",
        "truncated-tar",
        "bad-header-checksum",
    ],
)
def test_corrupt_blobs_are_archive_errors(blob: bytes, tmp_path: Path) -> None:
    with pytest.raises(ArchiveError):
        apply_layer(io.BytesIO(blob), tmp_path / "out")


def test_diff_id_is_verified(tmp_path: Path, blobs: BlobStore) -> None:
    build_tree(tmp_path / "src", [["file", "f", "x", "0644"]])
    layer = write_layer(tmp_path / "src", blobs)
    with pytest.raises(DigestMismatch), blobs.open(layer.digest) as f:
        apply_layer(f, tmp_path / "out", expected_diff_id=Digest.of(b"other"))
    stats = apply_layer(blobs.path(layer.digest), tmp_path / "ok", expected_diff_id=layer.diff_id)
    assert stats.files == 1


def test_whiteouts_ignore_what_the_same_layer_wrote(tmp_path: Path) -> None:
    """A whiteout or opaque marker hides lower content only, wherever it sits in the tar."""
    (tmp_path / "t" / "d").mkdir(parents=True)
    (tmp_path / "t" / "d" / "lower").write_text("l")
    (tmp_path / "t" / "x").write_text("lower x")
    raw = _tar_bytes({"d/mine": b"m", "d/.wh..wh..opq": b"", "x": b"new x", ".wh.x": b""})
    stats = apply_layer(io.BytesIO(raw), tmp_path / "t")
    assert sorted(os.listdir(tmp_path / "t" / "d")) == ["mine"]
    assert (tmp_path / "t" / "x").read_text() == "new x"
    assert stats.opaque_dirs == 1


@needs_root
def test_overlay_form(tmp_path: Path, blobs: BlobStore) -> None:
    case = next(c for c in CASES if c["name"] == "opaque-dir")
    build_tree(
        tmp_path / "upper",
        case["upper"] + [["whiteout", "e"], ["dir", "w", "0755"], ["whiteout", "w/gone"]],
    )
    layer = write_layer(tmp_path / "upper", blobs)
    snap = tmp_path / "snap"
    stats = LayerReader(overlay_form=True).apply(blobs.path(layer.digest), snap)
    assert stats.whiteouts == 2 and stats.opaque_dirs == 1
    for wh in ("e", "w/gone"):
        st = os.lstat(snap / wh)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(snap / "d", "trusted.overlay.opaque") == b"y"
    assert tree_model(snap, mtimes=False) == tree_model(tmp_path / "upper", mtimes=False)


@needs_root
def test_unprivileged_apply_skips_devices_and_ownership(tmp_path: Path, blobs: BlobStore) -> None:
    build_tree(
        tmp_path / "src",
        [
            ["char", "null", 1, 3],
            ["file", "f", "x", "4755"],
            ["chown", "f", 1000, 1000],
            ["fifo", "p"],
        ],
    )
    layer = write_layer(tmp_path / "src", blobs)
    out = tmp_path / "out"
    out.mkdir()
    os.chown(out, 65534, 65534)
    pid = os.fork()
    if pid == 0:  # child: open what pytest's 0700 tmp dirs hide, drop to nobody, apply
        code = 1
        try:
            blob = open(blobs.path(layer.digest), "rb")  # noqa: SIM115
            os.chdir(out)
            os.setgid(65534)
            os.setuid(65534)
            s = apply_layer(blob, Path("."))
            code = 0 if (s.skipped_devices, s.files, s.devices) == (1, 1, 1) else 2
        except BaseException as e:
            os.write(2, repr(e).encode())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not (out / "null").exists()
    st = os.stat(out / "f")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (65534, 0o4755)
    assert stat.S_ISFIFO(os.lstat(out / "p").st_mode)


def test_apply_in_user_namespace_tolerates_unmapped_ids(tmp_path: Path, blobs: BlobStore) -> None:
    """Mapped root without CAP_MKNOD and with one mapped id: files land, chown/mknod warn."""
    if not shutil.which("unshare"):
        pytest.skip("needs util-linux unshare")
    entries = [
        LayerEntry("f", content=b"x", uid=1000, gid=1000, mode=0o640),
        LayerEntry("dev/null", kind="char", rdev=(1, 3)),
        LayerEntry("mine", content=b"y"),
    ]
    layer = write_layer_from_entries(entries, blobs, compression="zstd")
    out = tmp_path / "out"
    out.mkdir()
    blob = tmp_path / "layer.bin"
    shutil.copyfile(blobs.path(layer.digest), blob)
    script = (
        "import sys; from pathlib import Path; from layerstore.layer import apply_layer\n"
        "s = apply_layer(Path(sys.argv[1]), Path(sys.argv[2]))\n"
        "print(s.files, s.skipped_devices, len(s.warnings))\n"
    )
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", sys.executable, "-c", script, str(blob), str(out)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    if proc.returncode != 0 and "unshare failed" in proc.stderr:
        pytest.skip(f"user namespaces unavailable: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    files, skipped, warnings = map(int, proc.stdout.split())
    assert (files, skipped) == (2, 1) and warnings >= 2
    assert (out / "f").read_bytes() == b"x" and oct(os.stat(out / "f").st_mode & 0o777) == "0o640"


def test_overlay_form_in_user_namespace_uses_user_xattrs(tmp_path: Path, blobs: BlobStore) -> None:
    """Rootless snapshots: 0/0 whiteouts still work, opaque dirs get user.overlay.opaque."""
    if not shutil.which("unshare"):
        pytest.skip("needs util-linux unshare")
    entries = [LayerEntry("d", kind="dir"), LayerEntry("d", kind="opaque"),
               LayerEntry("gone", kind="whiteout"), LayerEntry("d/f", content=b"x")]  # fmt: skip
    layer = write_layer_from_entries(entries, blobs)
    blob = tmp_path / "layer.bin"
    shutil.copyfile(blobs.path(layer.digest), blob)
    snap = tmp_path / "snap"
    script = (
        "import sys; from pathlib import Path; from layerstore.layer import LayerReader\n"
        "LayerReader(overlay_form=True).apply(Path(sys.argv[1]), Path(sys.argv[2]))\n"
    )
    proc = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            sys.executable,
            "-c",
            script,
            str(blob),
            str(snap),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    if proc.returncode != 0 and "unshare failed" in proc.stderr:
        pytest.skip(f"user namespaces unavailable: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert os.listxattr(snap / "d") == ["user.overlay.opaque"]
    st = os.lstat(snap / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


# ---------------------------------------------------------------------------------------
# A real overlayfs upperdir
# ---------------------------------------------------------------------------------------


def _mount_overlay(lower: str, upper: Path, work: Path, merged: Path) -> None:
    for d in (upper, work, merged):
        d.mkdir(exist_ok=True)
    subprocess.run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={lower},upperdir={upper},workdir={work}",
            str(merged),
        ],
        check=True,
        capture_output=True,
    )


def _can_mount_overlay(tmp: Path) -> bool:
    if not IS_ROOT or not shutil.which("mount"):
        return False
    lower = tmp / "probe-l"
    lower.mkdir()
    try:
        _mount_overlay(str(lower), tmp / "probe-u", tmp / "probe-w", tmp / "probe-m")
    except subprocess.CalledProcessError:
        return False
    subprocess.run(["umount", str(tmp / "probe-m")], check=True)
    return True


@pytest.mark.root
def test_overlay_upperdir_diff_round_trip(tmp_path: Path, blobs: BlobStore) -> None:
    if not _can_mount_overlay(tmp_path):
        pytest.skip("needs root and overlayfs")
    lower, merged = tmp_path / "lower", tmp_path / "merged"
    build_tree(
        lower,
        [
            ["file", "keep", "k", "0644"],
            ["file", "drop", "d", "0644"],
            ["dir", "cfg", "0755"],
            ["file", "cfg/a", "a", "0644"],
            ["file", "cfg/b", "b", "0644"],
            ["dir", "cache/deep", "0755"],
            ["file", "cache/deep/f", "f", "0644"],
            ["file", "mode", "m", "0644"],
        ],
    )
    _mount_overlay(str(lower), tmp_path / "upper", tmp_path / "work", merged)
    try:
        (merged / "drop").unlink()
        (merged / "cfg" / "a").unlink()
        (merged / "cfg" / "new").write_text("new")
        shutil.rmtree(merged / "cache")
        (merged / "cache").mkdir()  # a directory deleted and re-made: opaque in the upper
        (merged / "cache" / "fresh").write_text("fresh")
        os.chmod(merged / "mode", 0o4711)
        (merged / "keep2").write_text("k")
        os.link(merged / "keep2", merged / "keep3")
        expected = tree_model(merged, mtimes=False)
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    layer = write_layer(tmp_path / "upper", blobs)
    names = [m.name for m in _members(blobs, layer)]
    assert ".wh.drop" in names and "cfg/.wh.a" in names and "cache/.wh..wh..opq" in names
    with tarfile.open(blobs.path(layer.digest)) as tf:
        assert not any("overlay" in k for m in tf.getmembers() for k in m.pax_headers)
    target = tmp_path / "target"
    shutil.copytree(lower, target, symlinks=True)
    apply_layer(blobs.path(layer.digest), target)
    assert tree_model(target, mtimes=False) == expected


@pytest.mark.tools
def test_umoci_unpacks_our_layers(tmp_path: Path) -> None:
    """A Go implementation (umoci: archive/tar, gzip, whiteouts) reads what we write."""
    if not shutil.which("umoci"):
        pytest.skip("needs umoci")
    layout = tmp_path / "layout"
    blobs = BlobStore(layout)
    base_tree = tmp_path / "base"
    build_tree(base_tree, CASES[0]["upper"] + CASES[1]["upper"])
    base = write_layer(base_tree, blobs, overlay=False, source_date_epoch=0)
    top = write_layer_from_entries(
        [
            LayerEntry("etc/shadow", kind="whiteout"),
            LayerEntry("etc", kind="dir"),
            LayerEntry("etc/hello", content=b"hi\n"),
            LayerEntry("srv", kind="opaque"),
            LayerEntry("srv", kind="dir", mode=0o700),
            LayerEntry("srv/new", content=b"n"),
        ],
        blobs,
        level=9,
    )
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "config": {},
         "rootfs": {"type": "layers", "diff_ids": [str(base.diff_id), str(top.diff_id)]}}
    ).encode()  # fmt: skip
    config_digest = blobs.put_bytes(config)
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": MediaType.OCI_MANIFEST,
         "config": {"mediaType": MediaType.OCI_CONFIG, "digest": str(config_digest), "size": len(config)},
         "layers": [base.descriptor().to_json(), top.descriptor().to_json()]}
    ).encode()  # fmt: skip
    manifest_digest = blobs.put_bytes(manifest)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(
        json.dumps(
            {"schemaVersion": 2, "manifests": [{"mediaType": MediaType.OCI_MANIFEST,
             "digest": str(manifest_digest), "size": len(manifest),
             "annotations": {"org.opencontainers.image.ref.name": "t"}}]}
        )
    )  # fmt: skip
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:t", str(bundle)], check=True, capture_output=True
    )
    rootfs = bundle / "rootfs"
    assert sorted(os.listdir(rootfs / "etc")) == ["hello", "hostname"]
    assert os.listdir(rootfs / "srv") == ["new"]
    assert (rootfs / "usr" / "bin" / "su").stat().st_mode & 0o7777 == 0o4755
    assert os.path.samefile(rootfs / "bin" / "sh", rootfs / "sbin" / "init")
