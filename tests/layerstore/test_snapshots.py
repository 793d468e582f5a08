"""SnapshotStore: unpack once per diff ID, atomically, usable as overlayfs lowerdirs."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

import layerstore.snapshots as snapshots_module
from layerstore.blobs import BlobStore
from layerstore.db import Database
from layerstore.descriptor import Descriptor, MediaType
from layerstore.digest import Digest
from layerstore.errors import DigestMismatch, UnsafePathError
from layerstore.layer import Layer, LayerEntry, apply_layer, write_layer_from_entries
from layerstore.snapshots import SnapshotStore
from layerstore.store import Store

IS_ROOT = os.geteuid() == 0

BASE = [
    LayerEntry("a", content=b"lower a"),
    LayerEntry("keep", content=b"kept"),
    LayerEntry("d", kind="dir"),
    LayerEntry("d/x", content=b"x"),
    LayerEntry("d/y", content=b"y"),
    LayerEntry("bin", kind="dir"),
    LayerEntry("bin/tool", content=b"#!/bin/sh\n", mode=0o4755),
]
TOP = [
    LayerEntry("a", kind="whiteout"),
    LayerEntry("d", kind="dir"),
    LayerEntry("d", kind="opaque"),
    LayerEntry("d/new", content=b"new"),
    LayerEntry("bin", kind="dir"),
    LayerEntry("bin/tool2", content=b"2"),
]


@pytest.fixture
def env(tmp_path: Path) -> tuple[SnapshotStore, BlobStore]:
    blobs = BlobStore(tmp_path / "store")
    db = Database(tmp_path / "store" / "pybuild.db")
    return SnapshotStore(tmp_path / "store" / "snapshots", db, blobs), blobs


def _layer(blobs: BlobStore, entries: list[LayerEntry], compression: str = "gzip") -> Layer:
    return write_layer_from_entries(entries, blobs, compression=compression, source_date_epoch=0)


def test_ensure_unpacks_once_in_overlay_form(
    env: tuple[SnapshotStore, BlobStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    snaps, blobs = env
    layer = _layer(blobs, TOP)
    calls: list[Path] = []
    real = snapshots_module.apply_layer

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(Path(str(args[1])))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshots_module, "apply_layer", counting)
    path = snaps.ensure(layer.descriptor(), layer.diff_id)
    assert snaps.ensure(layer.descriptor(), layer.diff_id) == path
    assert len(calls) == 1
    assert path.parent == snaps.root and path.name.isdigit()  # short: fits many lowerdirs
    assert snaps.path(layer.diff_id) == path
    if IS_ROOT:
        st = os.lstat(path / "a")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        assert os.getxattr(path / "d", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(path / "d")) == ["new"]
    [snap] = snaps.list()
    assert (snap.diff_id, snap.path, snap.layer_digest) == (layer.diff_id, path, layer.digest)
    assert snap.size == len(b"new") + len(b"2")
    assert sorted(os.listdir(snaps.root)) == [".locks", path.name]


def test_wrong_diff_id_leaves_nothing(env: tuple[SnapshotStore, BlobStore]) -> None:
    snaps, blobs = env
    layer = _layer(blobs, BASE)
    with pytest.raises(DigestMismatch):
        snaps.ensure(layer.descriptor(), Digest.of(b"something else"))
    assert snaps.list() == [] and snaps.path(layer.diff_id) is None
    assert os.listdir(snaps.root) == [".locks"]


def test_hostile_layer_leaves_nothing(env: tuple[SnapshotStore, BlobStore]) -> None:
    snaps, blobs = env
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("../../escape")
        tf.addfile(info, io.BytesIO(b""))
    raw = buf.getvalue()
    digest = blobs.put_bytes(raw)
    desc = Descriptor(MediaType.OCI_LAYER, digest, len(raw))
    with pytest.raises(UnsafePathError):
        snaps.ensure(desc, digest)
    assert os.listdir(snaps.root) == [".locks"]
    assert not (snaps.root.parent.parent / "escape").exists()


def test_remove_and_recover(env: tuple[SnapshotStore, BlobStore]) -> None:
    snaps, blobs = env
    layer = _layer(blobs, BASE, compression="zstd")
    first = snaps.ensure(layer.descriptor(), layer.diff_id)
    shutil.rmtree(first)  # deleted behind the store's back: unpacked again
    second = snaps.ensure(layer.descriptor(), layer.diff_id)
    assert second.is_dir() and (second / "keep").read_bytes() == b"kept"
    assert snaps.remove(layer.diff_id) is True
    assert snaps.remove(layer.diff_id) is False
    assert snaps.path(layer.diff_id) is None and not second.exists()
    assert snaps.list() == []


def test_prune_keeps_only_what_is_asked(env: tuple[SnapshotStore, BlobStore]) -> None:
    snaps, blobs = env
    a, b = _layer(blobs, BASE), _layer(blobs, TOP)
    pa = snaps.ensure(a.descriptor(), a.diff_id)
    pb = snaps.ensure(b.descriptor(), b.diff_id)
    assert snaps.prune([a.diff_id]) == [b.diff_id]
    assert pa.is_dir() and not pb.exists()
    assert [s.diff_id for s in snaps.list()] == [a.diff_id]


def test_debris_of_dead_unpackers_is_cleaned(env: tuple[SnapshotStore, BlobStore]) -> None:
    snaps, blobs = env
    layer = _layer(blobs, BASE)
    debris = snaps.root / f".tmp-{layer.diff_id.hex}-999999-dead"
    (debris / "half").mkdir(parents=True)
    orphan = snaps.root / "1"  # renamed into place, then the process died before commit
    (orphan / "stale").mkdir(parents=True)
    path = snaps.ensure(layer.descriptor(), layer.diff_id)
    assert path == orphan and not (path / "stale").exists() and (path / "keep").exists()
    assert not debris.exists()


def test_two_processes_unpack_once(env: tuple[SnapshotStore, BlobStore], tmp_path: Path) -> None:
    snaps, blobs = env
    layer = _layer(blobs, BASE + [LayerEntry(f"many/{i}", content=b"x" * i) for i in range(300)])
    log = tmp_path / "unpacks.log"
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                real = snapshots_module.apply_layer

                def logged(*args: object, real: object = real, **kwargs: object) -> object:
                    with open(log, "a") as f:
                        f.write(f"{os.getpid()}\n")
                    return real(*args, **kwargs)  # type: ignore[operator]

                snapshots_module.apply_layer = logged  # type: ignore[assignment]
                db = Database(tmp_path / "store" / "pybuild.db")
                mine = SnapshotStore(snaps.root, db, BlobStore(tmp_path / "store"))
                p = mine.ensure(layer.descriptor(), layer.diff_id)
                (tmp_path / f"result-{os.getpid()}").write_text(str(p))
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    results = {(tmp_path / f"result-{pid}").read_text() for pid in pids}
    assert len(results) == 1
    assert len(log.read_text().splitlines()) == 1
    assert [s.path for s in snaps.list()] == [Path(results.pop())]


def test_adopt_an_upperdir(env: tuple[SnapshotStore, BlobStore], tmp_path: Path) -> None:
    snaps, blobs = env
    layer = _layer(blobs, BASE)
    upper = tmp_path / "store" / "upper-of-a-run"  # same filesystem as the store
    flat = tmp_path / "flat"
    apply_layer(blobs.path(layer.digest), flat)
    shutil.copytree(flat, upper, symlinks=True)
    path = snaps.adopt(upper, layer.descriptor(), layer.diff_id)
    assert not upper.exists() and (path / "keep").read_bytes() == b"kept"
    assert snaps.path(layer.diff_id) == path and snaps.list()[0].size == sum(
        len(e.content or b"") for e in BASE
    )
    again = tmp_path / "store" / "second"
    again.mkdir()
    assert snaps.adopt(again, layer.descriptor(), layer.diff_id) == path and again.exists()


def test_store_exposes_snapshots(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    try:
        layer = _layer(store.blobs, BASE)
        path = store.snapshots.ensure(layer.descriptor(), layer.diff_id)
        assert path.parent == tmp_path / "s" / "snapshots"
    finally:
        store.close()


@pytest.mark.root
def test_snapshots_stack_as_overlay_lowerdirs(
    env: tuple[SnapshotStore, BlobStore], tmp_path: Path
) -> None:
    if not IS_ROOT:
        pytest.skip("needs root for mount")
    snaps, blobs = env
    base, top = _layer(blobs, BASE), _layer(blobs, TOP, compression="zstd")
    lower = snaps.ensure(base.descriptor(), base.diff_id)
    upper = snaps.ensure(top.descriptor(), top.diff_id)
    merged = tmp_path / "merged"
    merged.mkdir()
    # chdir + relative names: how a builder keeps long stacks under the mount-option limit
    proc = subprocess.run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={upper.name}:{lower.name}",
            str(merged),
        ],
        cwd=snaps.root,
        capture_output=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"overlayfs mount unavailable: {proc.stderr.decode().strip()}")
    try:
        listing = sorted(str(p.relative_to(merged)) for p in merged.rglob("*"))
        contents = {p: (merged / p).read_bytes() for p in listing if (merged / p).is_file()}
        modes = oct(os.stat(merged / "bin" / "tool").st_mode & 0o7777)
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    # the whiteout hides a, the opaque d hides x and y
    assert listing == ["bin", "bin/tool", "bin/tool2", "d", "d/new", "keep"]
    assert contents["d/new"] == b"new" and contents["keep"] == b"kept"
    assert modes == "0o4755"
    # the same result as applying both layers onto one directory
    flat = tmp_path / "flat"
    for layer in (base, top):
        apply_layer(blobs.path(layer.digest), flat)
    assert sorted(str(p.relative_to(flat)) for p in flat.rglob("*")) == listing
