"""BlobStore: atomic verified writes, crash safety with real killed processes, and two
processes writing into one store at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from layerstore.blobs import BlobStore
from layerstore.digest import Digest, digest_file
from layerstore.errors import BlobNotFound, DigestMismatch, StoreError
from layerstore.store import Store

ROOT = Path(__file__).resolve().parents[2]


def _ingest_files(store: BlobStore) -> list[str]:
    try:
        return sorted(os.listdir(store.ingest_dir))
    except FileNotFoundError:
        return []


def test_put_and_read(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    d = blobs.put_bytes(b"hello")
    assert d == Digest.of(b"hello")
    assert blobs.path(d) == tmp_path / "blobs" / "sha256" / d.hex
    assert blobs.has(d) and d in blobs
    assert blobs.size(d) == 5
    assert blobs.read_bytes(d) == b"hello"
    with blobs.open(d) as f:
        assert f.read() == b"hello"
    assert list(blobs) == [d]
    assert blobs.verify(d)
    assert _ingest_files(blobs) == []


def test_missing_blob_errors_name_the_digest(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    d = Digest.of(b"absent")
    assert not blobs.has(d)
    for call in (blobs.size, blobs.open, blobs.read_bytes):
        with pytest.raises(BlobNotFound, match=d.hex):
            call(d)
    blobs.delete(d)  # deleting something absent is not an error


def test_expected_digest_mismatch_leaves_nothing(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    wrong = Digest.of(b"something else")
    with pytest.raises(DigestMismatch) as info:
        blobs.put_bytes(b"actual", wrong)
    assert info.value.expected == wrong
    assert info.value.actual == Digest.of(b"actual")
    assert not blobs.has(wrong) and not blobs.has(Digest.of(b"actual"))
    assert list(blobs) == []
    assert _ingest_files(blobs) == []


def test_writer_streams_and_counts(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    data = os.urandom(3 << 20)
    with blobs.writer(Digest.of(data)) as w:
        for i in range(0, len(data), 100_000):
            assert w.write(memoryview(data)[i : i + 100_000]) == len(data[i : i + 100_000])
        assert w.size == len(data)
        # Not visible before commit.
        assert not blobs.has(Digest.of(data))
        d = w.commit()
    assert d == Digest.of(data)
    assert digest_file(str(blobs.path(d))) == d
    assert w.commit() == d  # idempotent


def test_writer_aborts_on_exception_and_without_commit(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    with pytest.raises(RuntimeError), blobs.writer() as w:
        w.write(b"partial")
        raise RuntimeError("boom")
    with blobs.writer() as w2:
        w2.write(b"forgotten")
    assert list(blobs) == []
    assert _ingest_files(blobs) == []
    with pytest.raises(StoreError, match="already committed or aborted"):
        w2.write(b"more")
    with pytest.raises(StoreError, match="aborted"):
        w2.commit()


def test_same_blob_twice_keeps_one_file(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    d1 = blobs.put_bytes(b"same")
    old = time.time() - 3600
    os.utime(blobs.path(d1), (old, old))
    d2 = blobs.put_bytes(b"same", d1)
    assert d1 == d2 and list(blobs) == [d1]
    # A re-put refreshes mtime, so a gc grace period sees the blob as just used.
    assert blobs.path(d1).stat().st_mtime > old + 1000
    assert _ingest_files(blobs) == []


def test_sha512_expected_digest(tmp_path: Path) -> None:
    import hashlib

    blobs = BlobStore(tmp_path)
    want = Digest("sha512", hashlib.sha512(b"x").hexdigest())
    assert blobs.put_bytes(b"x", want) == want
    assert blobs.path(want).parent.name == "sha512"
    assert want in list(blobs)


def test_iteration_ignores_foreign_files(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    d = blobs.put_bytes(b"a")
    (tmp_path / "blobs" / "sha256" / "README").write_text("not a blob")
    (tmp_path / "blobs" / "sha256" / ("0" * 10)).write_text("short name")
    assert list(blobs) == [d]


_SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from layerstore.blobs import BlobStore
    blobs = BlobStore(Path(sys.argv[1]))
    w = blobs.writer()
    w.write(b"x" * 65536)
    w.flush()
    print("writing", flush=True)
    if sys.argv[2] == "hang":
        time.sleep(60)
    else:
        sys.stdin.readline()  # wait until the parent has tried to clean up
        w.write(b"y")
        print(w.commit(), flush=True)
    """
)


def _start_writer(root: Path, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(root), mode],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_killed_writer_leaves_no_blob_and_is_cleaned(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    proc = _start_writer(tmp_path, "hang")
    try:
        parts = _ingest_files(blobs)
        assert len(parts) == 1 and parts[0].endswith(".part")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    partial = b"x" * 65536
    # Nothing under any digest: neither the partial content nor anything else.
    assert list(blobs) == []
    assert not blobs.has(Digest.of(partial))
    # The dead writer's temp file is still there, until a cleaner finds its lock free.
    assert len(_ingest_files(blobs)) == 1
    removed = blobs.clean_ingest()
    assert len(removed) == 1
    assert _ingest_files(blobs) == []
    # A new write of the same content succeeds.
    assert blobs.put_bytes(partial) == Digest.of(partial)
    assert blobs.verify(Digest.of(partial))


def test_cleaner_never_removes_a_live_writers_temp(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    proc = _start_writer(tmp_path, "wait")
    try:
        assert blobs.clean_ingest() == []
        assert len(_ingest_files(blobs)) == 1
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        committed = Digest.parse(proc.stdout.readline().strip())
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert committed == Digest.of(b"x" * 65536 + b"y")
    assert blobs.verify(committed)
    assert _ingest_files(blobs) == []


_CONCURRENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from layerstore.store import Store
    from layerstore.manifest import Manifest
    from layerstore.config import ImageConfig
    from layerstore.descriptor import Descriptor, MediaType
    from layerstore.digest import Digest

    root, who, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    store = Store.open(root)
    if who == "gc":
        for i in range(rounds * 4):
            store.gc(prune_dangling=True)
            time.sleep(0.01)
        print("done", flush=True)
        raise SystemExit(0)
    shared = b"shared layer " * 50000
    for i in range(rounds):
        own = f"{who} layer {i} ".encode() * 5000
        with store.lease():  # blobs written before they are named: gc must wait
            layers = []
            for data in (shared, own):
                d = store.blobs.put_bytes(data, Digest.of(data))
                layers.append(Descriptor(MediaType.OCI_LAYER, d, len(data)))
            time.sleep(0.02)  # a build's work between writing a layer and naming the image
            cfg = ImageConfig(created="2024-01-01T00:00:00Z").with_layer(layers[1].digest)
            m = Manifest.build(config=store.put_config(cfg), layers=layers)
            store.commit_image(m, [f"localhost/{who}:{i}", "localhost/shared:latest"])
    print("done", flush=True)
    """
)


def _run_concurrently(root: Path, roles: tuple[str, ...], rounds: int) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT, str(root), who, str(rounds)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in roles
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip() == "done"


def test_two_processes_write_one_store(tmp_path: Path) -> None:
    rounds = 15
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT, str(tmp_path), who, str(rounds)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in ("alpha", "beta")
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip() == "done"
    store = Store.open(tmp_path)
    assert store.check() == []
    names = store.images.names()
    assert len(names) == 2 * rounds + 1
    assert {n for n in names if "alpha" in n} == {f"localhost/alpha:{i}" for i in range(rounds)}
    # Every blob hashes to its name; one copy of the shared layer, one per image otherwise.
    blobs = list(store.blobs)
    assert all(store.blobs.verify(d) for d in blobs)
    assert len(blobs) == 1 + 2 * rounds * 3  # shared + (own layer, config, manifest) each
    assert os.listdir(store.blobs.ingest_dir) == []
    store.close()


def test_gc_running_beside_writers_never_breaks_an_image(tmp_path: Path) -> None:
    rounds = 12
    _run_concurrently(tmp_path, ("alpha", "gc", "beta"), rounds)
    store = Store.open(tmp_path)
    assert store.check() == []
    # Every named image is complete: gc never took a blob a writer was about to name.
    names = store.images.names()
    assert len(names) == 2 * rounds + 1
    for name in names:
        img = store.image(name)
        assert img.manifest is not None
        for layer in img.manifest.layers:
            assert store.blobs.verify(layer.digest)
    store.close()


def test_clean_ingest_ages_out_unlocked_new_files_only(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    blobs.ingest_dir.mkdir(parents=True)
    old = blobs.ingest_dir / "aaaa.new"
    fresh = blobs.ingest_dir / "bbbb.new"
    unrelated = blobs.ingest_dir / "notes.txt"
    for p in (old, fresh, unrelated):
        p.write_bytes(b"x")
    past = time.time() - 3600
    os.utime(old, (past, past))
    # A .new file exists only between create and lock: young ones may belong to a live writer.
    assert blobs.clean_ingest() == [old]
    assert sorted(_ingest_files(blobs)) == ["bbbb.new", "notes.txt"]
