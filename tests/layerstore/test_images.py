"""ImageStore and Store: names, resolution, index.json kept in step, provenance, rmi
semantics and garbage collection by reachability."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerstore.config import ImageConfig
from layerstore.descriptor import Descriptor, MediaType, Platform
from layerstore.digest import Digest
from layerstore.errors import ImageNotFound, StoreError
from layerstore.images import REF_NAME
from layerstore.manifest import Index, Manifest
from layerstore.store import Store, default_root


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_image(
    store: Store,
    files: dict[str, bytes],
    *,
    arch: str = "amd64",
    base: list[Descriptor] | None = None,
    base_diffs: list[Digest] | None = None,
) -> Manifest:
    """A one-more-layer image stored in ``store`` (documents only; not named)."""
    raw = layer_tar(files)
    gz = gzip.compress(raw, mtime=0)
    layer = Descriptor(MediaType.OCI_LAYER_GZIP, store.blobs.put_bytes(gz), len(gz))
    cfg = ImageConfig(architecture=arch, created="2024-01-01T00:00:00Z")
    for d in base_diffs or []:
        cfg = cfg.with_layer(d)
    cfg = cfg.with_layer(Digest.of(raw), created_by="COPY").with_container_config(cmd=("sh",))
    m = Manifest.build(config=store.put_config(cfg), layers=[*(base or []), layer])
    store.put_manifest(m)
    return m


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store")
    yield s
    s.close()


def test_new_store_is_an_oci_layout(store: Store) -> None:
    assert json.loads((store.root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((store.root / "index.json").read_bytes())
    assert index == {"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": []}
    assert (store.root / "blobs" / "sha256").is_dir()
    assert store.check() == []


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYBUILD_ROOT", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "explicit"
    monkeypatch.delenv("PYBUILD_ROOT")
    assert default_root() == tmp_path / "xdg" / "pybuild"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / ".local" / "share" / "pybuild"


def test_tag_resolve_list_and_index_json(store: Store) -> None:
    m = make_image(store, {"a": b"1"})
    desc = m.descriptor()
    store.images.tag("docker.io/library/app:1.2", desc)
    store.images.tag("127.0.0.1:5000/team/app:latest", desc)
    assert store.images.resolve("docker.io/library/app:1.2") == desc
    assert store.images.names_for(m.digest) == [
        "127.0.0.1:5000/team/app:latest",
        "docker.io/library/app:1.2",
    ]
    # By document digest, by image ID (config digest), full or short, and name@digest.
    assert store.images.resolve(str(m.digest)).digest == m.digest
    assert store.images.resolve(m.config.digest.short).digest == m.digest
    assert store.images.resolve(m.digest.hex[:6]).digest == m.digest
    assert store.images.resolve(f"docker.io/library/app@{m.digest}").digest == m.digest
    records = store.images.list()
    assert {r.name for r in records} == {
        "docker.io/library/app:1.2",
        "127.0.0.1:5000/team/app:latest",
    }
    rec = records[0]
    assert rec.image_id == m.config.digest
    assert rec.size == m.size  # config + compressed layers, as docker images shows
    assert rec.created == "2024-01-01T00:00:00Z"
    index = json.loads((store.root / "index.json").read_bytes())
    assert sorted(e["annotations"][REF_NAME] for e in index["manifests"]) == [
        "127.0.0.1:5000/team/app:latest",
        "docker.io/library/app:1.2",
    ]
    assert all(e["digest"] == str(m.digest) for e in index["manifests"])
    assert store.check() == []


def test_retag_moves_the_name(store: Store) -> None:
    a = make_image(store, {"a": b"1"})
    b = make_image(store, {"b": b"2"})
    store.images.tag("localhost/app:1", a.descriptor())
    store.images.tag("localhost/app:1", b.descriptor())
    assert store.images.resolve("localhost/app:1").digest == b.digest
    # The old image stays as a dangling root until pruned.
    dangling = [r for r in store.images.list() if r.name is None]
    assert [r.descriptor.digest for r in dangling] == [a.digest]
    assert store.check() == []


@pytest.mark.parametrize(
    "ref", ["nope", "localhost/absent:1", "sha256:" + "0" * 64, "abcdef", "ab"]
)
def test_resolve_unknown(store: Store, ref: str) -> None:
    make_image(store, {"a": b"1"})
    with pytest.raises(ImageNotFound, match="no local image"):
        store.images.resolve(ref)


@pytest.mark.parametrize("name", ["", "has space:1", "trailing/", "UPPER:ok/../x", "a//b"])
def test_tag_rejects_bad_names(store: Store, name: str) -> None:
    m = make_image(store, {"a": b"1"})
    with pytest.raises(StoreError, match="invalid image name"):
        store.images.tag(name, m.descriptor())


def test_tag_requires_stored_document(store: Store) -> None:
    ghost = Descriptor(MediaType.OCI_MANIFEST, Digest.of(b"ghost"), 5)
    with pytest.raises(ImageNotFound, match="not stored"):
        store.images.tag("localhost/ghost:1", ghost)


def test_ambiguous_prefix(store: Store) -> None:
    # Add images until two IDs share a 3-character prefix (about 60 on average).
    seen: dict[str, Digest] = {}
    for i in range(400):
        m = make_image(store, {str(i): b"x"})
        store.commit_image(m, [f"localhost/app:{i}"])
        clash = next((d for d in (m.digest, m.config.digest) if d.hex[:3] in seen), None)
        if clash is not None:
            break
        seen.update({m.digest.hex[:3]: m.digest, m.config.digest.hex[:3]: m.config.digest})
    assert clash is not None
    with pytest.raises(ImageNotFound, match="ambiguous"):
        store.images.resolve(clash.hex[:3])
    # A longer prefix is unique again.
    assert store.images.resolve(clash.hex[:20]).digest == m.digest


def test_rmi_semantics(store: Store) -> None:
    m = make_image(store, {"a": b"1"})
    store.images.tag("localhost/app:1", m.descriptor())
    store.images.tag("localhost/app:2", m.descriptor())
    # By ID with two names: refused without force.
    with pytest.raises(StoreError, match="referenced by 2 names"):
        store.images.remove(m.config.digest.short)
    # By name: untag only while other names remain.
    r1 = store.images.remove("localhost/app:1")
    assert (r1.untagged, r1.deleted) == (["localhost/app:1"], [])
    r2 = store.images.remove("localhost/app:2")
    assert (r2.untagged, r2.deleted) == (["localhost/app:2"], [m.digest])
    assert store.images.list() == []
    # Force by ID removes every name.
    store.images.tag("localhost/app:1", m.descriptor())
    store.images.tag("localhost/app:3", m.descriptor())
    r3 = store.images.remove(m.digest.hex[:12], force=True)
    assert sorted(r3.untagged) == ["localhost/app:1", "localhost/app:3"]
    assert store.images.list() == []
    with pytest.raises(ImageNotFound):
        store.images.remove("localhost/app:1")


def test_blob_sources(store: Store) -> None:
    d = store.blobs.put_bytes(b"layer")
    store.images.add_blob_source(d, "registry-1.docker.io", "library/busybox")
    store.images.add_blob_source(d, "127.0.0.1:5000", "team/base")
    store.images.add_blob_source(d, "127.0.0.1:5000", "team/base")
    assert sorted(store.images.blob_sources(d)) == [
        ("127.0.0.1:5000", "team/base"),
        ("registry-1.docker.io", "library/busybox"),
    ]
    assert store.images.blob_sources(Digest.of(b"other")) == []


def test_gc_keeps_reachable_and_deletes_the_rest(store: Store) -> None:
    base = make_image(store, {"base": b"b"})
    child = make_image(
        store,
        {"child": b"c"},
        base=list(base.layers),
        base_diffs=list(
            ImageConfig.from_bytes(store.blobs.read_bytes(base.config.digest)).rootfs.diff_ids
        ),
    )
    store.images.tag("localhost/child:1", child.descriptor())
    stray = store.blobs.put_bytes(b"stray")
    result = store.gc()
    # base's manifest and config are unreachable; its layer is shared with child.
    assert set(result.deleted) == {stray, base.digest, base.config.digest}
    assert result.freed > 0
    assert store.blobs.has(base.layers[0].digest)
    for d in (child.digest, child.config.digest, *(layer.digest for layer in child.layers)):
        assert store.blobs.has(d)
    assert store.check() == []
    # After the last name goes, prune removes everything.
    store.images.remove("localhost/child:1")
    store.gc(prune_dangling=True)
    assert list(store.blobs) == []
    assert store.check() == []


def test_gc_dangling_images_survive_plain_gc(store: Store) -> None:
    m = make_image(store, {"a": b"1"})
    store.commit_image(m)  # no name: a build without -t
    assert store.gc().deleted == []
    result = store.gc(prune_dangling=True)
    assert result.dangling_images == [m.digest]
    assert m.digest in result.deleted


def test_gc_grace_keeps_recent_blobs(store: Store) -> None:
    fresh = store.blobs.put_bytes(b"fresh")
    old = store.blobs.put_bytes(b"old")
    past = time.time() - 7200
    os.utime(store.blobs.path(old), (past, past))
    result = store.gc(grace_seconds=3600)
    assert result.deleted == [old]
    assert store.blobs.has(fresh)


def test_gc_waits_for_leases(store: Store) -> None:
    stray = store.blobs.put_bytes(b"in-flight")
    finished = threading.Event()

    def collect() -> None:
        store.gc()
        finished.set()

    with store.lease():
        t = threading.Thread(target=collect)
        t.start()
        time.sleep(0.3)
        assert not finished.is_set()
        assert store.blobs.has(stray)
        # The lease holder names its blobs before letting go.
        m = make_image(store, {"x": b"y"})
        store.commit_image(m, ["localhost/leased:1"])
    t.join(timeout=10)
    assert finished.is_set()
    assert store.blobs.has(m.digest)
    assert not store.blobs.has(stray)


def test_index_image_and_platform_selection(store: Store) -> None:
    amd = make_image(store, {"amd": b"1"}, arch="amd64")
    arm = make_image(store, {"arm": b"2"}, arch="arm64")
    idx = Index.build(
        manifests=[
            amd.descriptor(Platform("linux", "amd64")),
            arm.descriptor(Platform("linux", "arm64", "v8")),
        ]
    )
    store.commit_image(idx, ["localhost/multi:1"])
    img = store.image("localhost/multi:1", Platform.parse("linux/arm64"))
    assert img.manifest == arm
    assert img.config is not None and img.config.architecture == "arm64"
    rec = store.images.list()[0]
    assert rec.image_id == idx.digest
    assert rec.size >= amd.size + arm.size
    # Reachability walks the index.
    assert store.gc().deleted == []
    info = store.inspect_json("localhost/multi:1", Platform.parse("linux/amd64"))
    assert info["RepoTags"] == ["localhost/multi:1"]
    assert info["Manifest"]["mediaType"] == MediaType.OCI_INDEX
    assert info["PlatformManifest"] == json.loads(amd.to_bytes())
    assert info["Config"]["architecture"] == "amd64"


def test_index_with_absent_children_is_fine(store: Store) -> None:
    amd = make_image(store, {"amd": b"1"})
    absent = Descriptor(
        MediaType.OCI_MANIFEST, Digest.of(b"never pulled"), 100, platform=Platform("linux", "s390x")
    )
    idx = Index.build(manifests=[amd.descriptor(Platform("linux", "amd64")), absent])
    store.commit_image(idx, ["localhost/partial:1"])
    assert store.check() == []
    with pytest.raises(StoreError, match="not stored locally"):
        store.image("localhost/partial:1", Platform.parse("linux/s390x"))


def test_index_json_rewritten_when_tampered(store: Store) -> None:
    m = make_image(store, {"a": b"1"})
    store.images.tag("localhost/app:1", m.descriptor())
    (store.root / "index.json").write_text("{}")
    assert store.check() == ["index.json differs from the database"]
    store.images.sync_index()
    assert store.check() == []


def test_gc_drop_caches_removes_snapshots_no_image_uses(store: Store) -> None:
    keep = make_image(store, {"keep": b"k"})
    drop = make_image(store, {"drop": b"d"})
    store.commit_image(keep, ["localhost/keep:1"])
    store.commit_image(drop, ["localhost/drop:1"])
    paths = {}
    for m in (keep, drop):
        diff_id = store.read_config(m.config.digest).rootfs.diff_ids[-1]
        paths[m.digest] = store.snapshots.ensure(m.layers[-1], diff_id)
        assert paths[m.digest].is_dir()
    store.images.remove("localhost/drop:1")
    cache_calls: list[str] = []
    store.cache_pruners.append(lambda: cache_calls.append("cache") or 7)
    # A plain gc leaves snapshots (they are cache) alone.
    store.gc()
    assert paths[drop.digest].is_dir()
    result = store.gc(prune_dangling=True, drop_caches=True)
    assert result.snapshots_removed == 1
    assert cache_calls == ["cache"]
    assert result.cache_freed >= 7
    assert paths[keep.digest].is_dir()
    assert not paths[drop.digest].exists()
    assert [s.diff_id for s in store.snapshots.list()] == list(
        store.read_config(keep.config.digest).rootfs.diff_ids
    )


# -- the CLI ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.5, "Less than a second"),
        (1, "1 second"),
        (59, "59 seconds"),
        (60, "About a minute"),
        (150, "2 minutes"),
        (3599, "59 minutes"),
        (3600, "About an hour"),
        (5 * 3600, "5 hours"),
        (47 * 3600, "47 hours"),
        (3 * 86400, "3 days"),
        (15 * 86400, "2 weeks"),
        (70 * 86400, "2 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    from builder.cli.images import human_duration

    assert human_duration(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (999, "999B"),
        (1000, "1kB"),
        (11_400, "11.4kB"),
        (7_049_999, "7.05MB"),
        (2 * 10**9, "2GB"),
    ],
)
def test_human_size(size: int, text: str) -> None:
    from builder.cli.images import human_size

    assert human_size(size) == text


def test_cli_images_rmi_prune(store_root: Path) -> None:
    from click.testing import CliRunner

    from builder.cli import cli

    store = Store.open(store_root)
    m = make_image(store, {"a": b"1" * 3000})
    fresh = ImageConfig(created=format_now()).with_layer(Digest.of(b"x"))
    m2 = Manifest.build(config=store.put_config(fresh), layers=list(m.layers))
    store.commit_image(m, ["docker.io/library/app:1.2", "127.0.0.1:5000/team/app:latest"])
    store.commit_image(m2, ["docker.io/library/app:new"])
    store.commit_image(make_image(store, {"d": b"dangling"}))
    runner = CliRunner()
    result = runner.invoke(cli, ["images"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    rows = {tuple(line.split()[:3]) for line in lines[1:]}
    assert rows == {
        ("app", "1.2", m.config.digest.short),
        ("127.0.0.1:5000/team/app", "latest", m.config.digest.short),
        ("app", "new", m2.config.digest.short),
        ("<none>", "<none>", rows_none_id(store)),
    }
    new_line = next(line for line in lines if " new " in line)
    assert "seconds ago" in new_line or "Less than a second ago" in new_line
    assert human_size_of(m2) in new_line
    # Columns line up like docker's tabwriter: every row's IMAGE ID starts where the header's does.
    col = lines[0].index("IMAGE ID")
    assert all(line[col : col + 12].strip() for line in lines[1:])
    result = runner.invoke(cli, ["images", "app"])
    assert sorted(line.split()[1] for line in result.output.splitlines()[1:]) == ["1.2", "new"]
    result = runner.invoke(cli, ["images", "-q"])
    assert len(result.output.split()) == 3  # unique IDs
    result = runner.invoke(cli, ["images", "--format", "json", "app:new"])
    (row,) = [json.loads(line) for line in result.output.splitlines()]
    assert row["Repository"] == "app" and row["Tag"] == "new"
    assert row["ID"] == m2.config.digest.short and row["Digest"] == str(m2.digest)
    assert row["SizeBytes"] == m2.size
    # rmi: by ID refuses while two names point at it.
    result = runner.invoke(cli, ["rmi", m.config.digest.short])
    assert result.exit_code == 1
    assert "referenced by 2 names" in result.output
    result = runner.invoke(cli, ["rmi", "-f", m.config.digest.short])
    assert result.exit_code == 0, result.output
    assert sorted(result.output.splitlines()) == sorted(
        ["Untagged: app:1.2", "Untagged: 127.0.0.1:5000/team/app:latest", f"Deleted: {m.digest}"]
    )
    # The shared layer survives (app:new uses it); m's config went.
    assert store.blobs.has(m.layers[0].digest)
    assert not store.blobs.has(m.config.digest)
    result = runner.invoke(cli, ["rmi", "absent:1"])
    assert result.exit_code == 1 and "no local image" in result.output
    result = runner.invoke(cli, ["prune"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Deleted Images:\ndeleted: sha256:")
    assert "Total reclaimed space: " in result.output
    assert [r.name for r in store.images.list()] == ["docker.io/library/app:new"]
    assert store.check() == []
    store.close()


def format_now() -> str:
    from datetime import UTC, datetime

    from layerstore.config import format_created

    return format_created(datetime.now(UTC))


def rows_none_id(store: Store) -> str:
    (dangling,) = [r for r in store.images.list() if r.name is None]
    return dangling.image_id.short


def human_size_of(m: Manifest) -> str:
    from builder.cli.images import human_size

    return human_size(m.size)


def test_cli_prune_keeps_build_cache_blobs_until_all(store_root: Path) -> None:
    from click.testing import CliRunner

    from builder.cache import CachedState, CacheIndex, LayerRef
    from builder.cachekey import CacheKey
    from builder.cli import cli

    store = Store.open(store_root)
    m = make_image(store, {"cached": b"layer"})  # stored but never named: only the cache needs it
    diff_id = store.read_config(m.config.digest).rootfs.diff_ids[0]
    CacheIndex(store).put(
        CacheKey("ab" * 32, {}), CachedState(m.config.digest, (LayerRef(m.layers[0], diff_id),))
    )
    stray = store.blobs.put_bytes(b"stray")
    runner = CliRunner()
    result = runner.invoke(cli, ["prune"])
    assert result.exit_code == 0, result.output
    assert not store.blobs.has(stray)
    assert store.blobs.has(m.layers[0].digest) and store.blobs.has(m.config.digest)
    result = runner.invoke(cli, ["prune", "--all"])
    assert result.exit_code == 0, result.output
    assert "Deleted snapshots: 0" in result.output
    assert not store.blobs.has(m.layers[0].digest)
    assert len(CacheIndex(store)) == 0
    store.close()


def test_entries_another_tool_adds_to_index_json_are_adopted(store: Store) -> None:
    m = make_image(store, {"a": b"1"})
    store.images.tag("localhost/ours:1", m.descriptor())
    index = json.loads((store.root / "index.json").read_bytes())
    index["manifests"].append(m.descriptor(annotations={REF_NAME: "localhost/theirs:1"}).to_json())
    index["manifests"].append(  # an entry whose document is not stored is ignored
        Descriptor(
            MediaType.OCI_MANIFEST, Digest.of(b"x"), 1, annotations=((REF_NAME, "x:1"),)
        ).to_json()
    )
    (store.root / "index.json").write_text(json.dumps(index, indent=1))
    assert store.images.adopt_external() == ["localhost/theirs:1"]
    assert store.images.names() == ["localhost/ours:1", "localhost/theirs:1"]
    assert store.check() == []
    assert store.images.adopt_external() == []  # nothing new once rewritten


def test_gc_inside_a_lease_is_refused_not_deadlocked(store: Store) -> None:
    with store.lease(), pytest.raises(StoreError, match="holds a lease"):
        store.gc()
    assert store.gc().deleted == []  # fine again once released


def test_cli_images_empty_store_header_matches_docker(store_root: Path) -> None:
    from click.testing import CliRunner

    from builder.cli import cli

    result = CliRunner().invoke(cli, ["images"])
    assert result.exit_code == 0
    # Byte for byte what `docker images` prints for an empty store (tabwriter 10/1/3).
    assert result.output == "REPOSITORY   TAG       IMAGE ID   CREATED   SIZE\n"


def test_open_repairs_index_json_left_stale_by_a_killed_process(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    m = make_image(store, {"a": b"1"})
    store.images.add(m.descriptor())
    # The database changed but the process died before rewriting index.json.
    with store.db.transaction() as conn:
        conn.execute(
            "INSERT INTO tags(name, digest, tagged) VALUES (?, ?, ?)",
            ("localhost/app:1", str(m.digest), 0.0),
        )
    assert store.check() == ["index.json differs from the database"]
    store.close()
    reopened = Store.open(tmp_path / "s")
    assert reopened.check() == []
    index = json.loads((reopened.root / "index.json").read_bytes())
    assert [e.get("annotations", {}).get(REF_NAME) for e in index["manifests"]] == [
        "localhost/app:1"
    ]
    reopened.close()
