"""save/load: docker-archive (Docker ≥ 25 dual form), OCI archive, OCI layout directories,
legacy docker-archives, compressed archives and pipes, and malformed input."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner

from builder.cli import cli
from layerstore.config import ImageConfig
from layerstore.descriptor import Descriptor, MediaType, Platform
from layerstore.digest import Digest
from layerstore.errors import ArchiveError
from layerstore.layout import (
    ExportImage,
    export_images,
    load_archive,
    load_path,
    save,
    save_to_path,
    split_name,
)
from layerstore.manifest import Index, Manifest
from layerstore.store import Store

ROOT = Path(__file__).resolve().parents[2]


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def compress(raw: bytes, how: str) -> tuple[bytes, str]:
    if how == "gzip":
        return gzip.compress(raw, mtime=0), MediaType.OCI_LAYER_GZIP
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(raw), MediaType.OCI_LAYER_ZSTD
    return raw, MediaType.OCI_LAYER


def make_image(
    store: Store,
    layers: list[dict[str, bytes]],
    *,
    compression: str = "gzip",
    arch: str = "amd64",
    cmd: tuple[str, ...] = ("sh",),
) -> Manifest:
    cfg = ImageConfig(architecture=arch, created="2024-01-01T00:00:00Z")
    descs = []
    for files in layers:
        raw = layer_tar(files)
        blob, media_type = compress(raw, compression)
        descs.append(Descriptor(media_type, store.blobs.put_bytes(blob), len(blob)))
        cfg = cfg.with_layer(Digest.of(raw), created_by=f"COPY {sorted(files)}")
    cfg = cfg.with_container_config(cmd=cmd, env=("PATH=/bin",), labels={"org.test": "yes"})
    m = Manifest.build(config=store.put_config(cfg), layers=descs)
    store.put_manifest(m)
    return m


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "src")
    yield s
    s.close()


@pytest.fixture
def dest(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "dst")
    yield s
    s.close()


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {
            m.name: (tar.extractfile(m).read() if m.isfile() else b"")  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_docker_archive_is_docker25_dual_form(
    store: Store, dest: Store, tmp_path: Path, compression: str
) -> None:
    m = make_image(store, [{"a": b"1"}, {"b": b"2" * 5000}], compression=compression)
    store.images.tag("docker.io/library/app:1.2", m.descriptor())
    store.images.tag("127.0.0.1:5000/team/app:latest", m.descriptor())
    out = tmp_path / "app.tar"
    images = export_images(
        store,
        [
            "docker.io/library/app:1.2",
            "127.0.0.1:5000/team/app:latest",
            "docker.io/library/app:1.2",
        ],
    )
    assert len(images) == 2
    save_to_path(
        store, images, out, format="docker", familiar=lambda n: n.replace("docker.io/library/", "")
    )
    files = _members(out)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    (entry,) = json.loads(files["manifest.json"])  # one entry per image, every name in it
    assert entry["RepoTags"] == ["app:1.2", "127.0.0.1:5000/team/app:latest"]
    config = ImageConfig.from_bytes(files[entry["Config"]])
    assert entry["Config"] == f"blobs/sha256/{m.config.digest.hex}"
    # Layers are uncompressed tars named by their diff IDs, as Docker writes them.
    assert entry["Layers"] == [f"blobs/sha256/{d.hex}" for d in config.rootfs.diff_ids]
    for path in entry["Layers"]:
        assert Digest.of(files[path]).hex == path.rsplit("/", 1)[1]
    index = json.loads(files["index.json"])
    names = [e["annotations"] for e in index["manifests"]]
    assert names == [
        {
            "io.containerd.image.name": "docker.io/library/app:1.2",
            "org.opencontainers.image.ref.name": "1.2",
        },
        {
            "io.containerd.image.name": "127.0.0.1:5000/team/app:latest",
            "org.opencontainers.image.ref.name": "latest",
        },
    ]
    oci = Manifest.from_bytes(files[f"blobs/sha256/{index['manifests'][0]['digest'][7:]}"])
    assert [layer.media_type for layer in oci.layers] == [MediaType.OCI_LAYER] * 2
    assert json.loads(files["repositories"]) == {
        "app": {"1.2": config.rootfs.diff_ids[-1].hex},
        "127.0.0.1:5000/team/app": {"latest": config.rootfs.diff_ids[-1].hex},
    }
    # Every blob in the archive hashes to its name.
    for name, data in files.items():
        if name.startswith("blobs/sha256/") and data:
            assert Digest.of(data).hex == name.rsplit("/", 1)[1]
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)

    loaded = load_path(dest, out, normalize=lambda n: n if "/" in n else f"docker.io/library/{n}")
    assert [img.name for img in loaded] == [
        "docker.io/library/app:1.2",
        "127.0.0.1:5000/team/app:latest",
    ]
    assert {img.image_id for img in loaded} == {m.config.digest}
    # The archive's own OCI manifest is reused, digest and all.
    assert loaded[0].descriptor.digest == oci.digest
    got = dest.image("docker.io/library/app:1.2")
    assert got.config is not None and got.config.to_bytes() == config.to_bytes()
    assert dest.check() == []


def test_oci_archive_round_trip_keeps_digests(store: Store, dest: Store, tmp_path: Path) -> None:
    m = make_image(store, [{"a": b"1"}], compression="zstd")
    store.images.tag("docker.io/library/app:1", m.descriptor())
    out = tmp_path / "app.oci.tar"
    save_to_path(store, export_images(store, ["docker.io/library/app:1"]), out, format="oci")
    files = _members(out)
    assert "manifest.json" not in files
    index = json.loads(files["index.json"])
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == (
        "docker.io/library/app:1"
    )
    loaded = load_path(dest, out)
    assert [(i.name, i.descriptor.digest) for i in loaded] == [
        ("docker.io/library/app:1", m.digest)
    ]
    assert sorted(dest.blobs) == sorted(store.blobs)
    assert dest.check() == []


def test_oci_archive_of_an_index(store: Store, dest: Store, tmp_path: Path) -> None:
    amd = make_image(store, [{"amd": b"1"}])
    arm = make_image(store, [{"arm": b"2"}], arch="arm64")
    idx = Index.build(
        manifests=[
            amd.descriptor(Platform("linux", "amd64")),
            arm.descriptor(Platform("linux", "arm64")),
        ]
    )
    store.commit_image(idx, ["localhost/multi:1"])
    buf = io.BytesIO()
    save(store, export_images(store, ["localhost/multi:1"]), buf, format="oci")
    buf.seek(0)
    loaded = load_archive(dest, buf)
    assert loaded[0].descriptor.digest == idx.digest
    assert dest.image("localhost/multi:1", Platform.parse("linux/arm64")).manifest == arm
    # docker format picks one platform.
    buf = io.BytesIO()
    save(
        store,
        export_images(store, ["localhost/multi:1"]),
        buf,
        platform=Platform.parse("linux/arm64"),
    )
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        (entry,) = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert entry["Config"].endswith(arm.config.digest.hex)


def test_layout_directory_load(store: Store, dest: Store) -> None:
    m = make_image(store, [{"a": b"1"}])
    store.images.tag("docker.io/library/app:2", m.descriptor())
    store.commit_image(make_image(store, [{"z": b"dangling"}]))
    loaded = load_path(dest, store.root)
    assert [i.name for i in loaded] == ["docker.io/library/app:2", None]
    assert dest.images.resolve("docker.io/library/app:2").digest == m.digest
    assert dest.check() == []


def test_layout_directory_with_corrupt_blob(store: Store, dest: Store) -> None:
    m = make_image(store, [{"a": b"1"}])
    store.images.tag("docker.io/library/app:2", m.descriptor())
    path = store.blobs.path(m.layers[0].digest)
    path.chmod(0o644)
    path.write_bytes(b"tampered")
    with pytest.raises(ArchiveError, match="digest mismatch"):
        load_path(dest, store.root)
    assert not dest.blobs.has(m.layers[0].digest)
    assert dest.images.list() == []


def test_load_from_a_compressed_pipe(store: Store, dest: Store, tmp_path: Path) -> None:
    m = make_image(store, [{"a": b"1" * 100_000}])
    store.images.tag("docker.io/library/app:1", m.descriptor())
    raw = io.BytesIO()
    save(store, export_images(store, ["docker.io/library/app:1"]), raw)
    compressed = gzip.compress(raw.getvalue())
    # A real pipe: the reader cannot seek.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: write and exit
        os.close(r)
        with os.fdopen(w, "wb") as f:
            f.write(compressed)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        loaded = load_archive(dest, f, where="stdin")
    os.waitpid(pid, 0)
    assert loaded[0].name == "docker.io/library/app:1"
    assert dest.check() == []


def _legacy_archive(path: Path, layers: list[bytes], config: bytes, tags: list[str]) -> None:
    """A pre-25 docker-archive: <id>/layer.tar folders, <hex>.json config, a symlinked layer."""
    with tarfile.open(path, "w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        paths = []
        for n, data in enumerate(layers):
            folder = f"{n:064x}"
            add(f"{folder}/VERSION", b"1.0")
            add(f"{folder}/json", b"{}")
            if n > 0 and data == layers[0]:
                link = tarfile.TarInfo(f"{folder}/layer.tar")
                link.type = tarfile.SYMTYPE
                link.linkname = f"../{0:064x}/layer.tar"
                tar.addfile(link)
            else:
                add(f"{folder}/layer.tar", data)
            paths.append(f"{folder}/layer.tar")
        cfg_name = f"{Digest.of(config).hex}.json"
        add(cfg_name, config)
        add(
            "manifest.json",
            json.dumps([{"Config": cfg_name, "RepoTags": tags, "Layers": paths}]).encode(),
        )
        add("repositories", b"{}")


def test_legacy_docker_archive(dest: Store, tmp_path: Path) -> None:
    l1 = layer_tar({"etc/os-release": b"ID=test\n"})
    l2 = gzip.compress(layer_tar({"app": b"bin"}), mtime=0)  # docker load accepts gzip layers
    diff2 = Digest.of(gzip.decompress(l2))
    cfg = ImageConfig().with_layer(Digest.of(l1)).with_layer(diff2).with_layer(Digest.of(l1))
    path = tmp_path / "legacy.tar"
    _legacy_archive(path, [l1, l2, l1], cfg.to_bytes(), ["app:old"])
    loaded = load_path(dest, path, normalize=lambda n: f"docker.io/library/{n}")
    assert [i.name for i in loaded] == ["docker.io/library/app:old"]
    img = dest.image("docker.io/library/app:old")
    assert img.manifest is not None
    assert [d.media_type for d in img.manifest.layers] == [
        MediaType.OCI_LAYER,
        MediaType.OCI_LAYER_GZIP,
        MediaType.OCI_LAYER,
    ]
    assert img.manifest.layers[0].digest == img.manifest.layers[2].digest == Digest.of(l1)
    assert img.config == cfg
    assert dest.check() == []


def test_legacy_archive_with_wrong_diff_id(dest: Store, tmp_path: Path) -> None:
    l1 = layer_tar({"a": b"1"})
    cfg = ImageConfig().with_layer(Digest.of(b"something else"))
    path = tmp_path / "bad.tar"
    _legacy_archive(path, [l1], cfg.to_bytes(), ["app:bad"])
    with pytest.raises(ArchiveError, match="diff ID"):
        load_path(dest, path)
    assert dest.images.list() == []


def _tar_of(entries: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


GOOD = Digest.of(b"content")


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"README": b"hi"}, "neither manifest.json"),
        ({"manifest.json": b"{not json"}, "manifest.json is not valid JSON"),
        ({"manifest.json": b"{}"}, "manifest.json must be a list"),
        ({"manifest.json": b"[{}]"}, "needs a Config path"),
        (
            {"manifest.json": b'[{"Config": "missing.json", "Layers": []}]'},
            "'missing.json' is named in manifest.json but not in the archive",
        ),
        ({f"blobs/sha256/{GOOD.hex}": b"not the content"}, "does not match its digest"),
        ({"../escape": b"x", "manifest.json": b"[]"}, "points outside the archive"),
        (
            {
                "index.json": b'{"schemaVersion": 2, "manifests": [{"mediaType": "'
                + MediaType.OCI_MANIFEST.encode()
                + b'", "digest": "'
                + str(GOOD).encode()
                + b'", "size": 7}]}',
                "oci-layout": b"{}",
            },
            "which is not in it",
        ),
    ],
)
def test_malformed_archives(dest: Store, entries: dict[str, bytes], message: str) -> None:
    with pytest.raises(ArchiveError, match=message):
        load_archive(dest, _tar_of(entries))
    assert dest.images.list() == []


def test_not_a_tar(dest: Store) -> None:
    with pytest.raises(ArchiveError, match="not a readable tar"):
        load_archive(dest, io.BytesIO(b"\x00garbage" * 100))


def test_truncated_archive(store: Store, dest: Store) -> None:
    m = make_image(store, [{"a": os.urandom(200_000)}])
    store.images.tag("docker.io/library/app:1", m.descriptor())
    buf = io.BytesIO()
    save(store, export_images(store, ["docker.io/library/app:1"]), buf, format="oci")
    cut = io.BytesIO(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ArchiveError):
        load_archive(dest, cut)
    assert dest.images.list() == []
    # No partial blob anywhere: whatever was stored hashes to its name.
    assert all(dest.blobs.verify(d) for d in dest.blobs)


def test_failed_save_leaves_no_file(store: Store, tmp_path: Path) -> None:
    m = make_image(store, [{"a": b"1"}])
    store.images.tag("docker.io/library/app:1", m.descriptor())
    store.blobs.delete(m.layers[0].digest)
    out = tmp_path / "out.tar"
    with pytest.raises(ArchiveError, match="is not stored"):
        save_to_path(store, export_images(store, ["docker.io/library/app:1"]), out)
    assert list(tmp_path.glob("*out.tar*")) == []


def test_save_detects_a_layer_that_does_not_match_its_diff_id(store: Store) -> None:
    raw = layer_tar({"a": b"1"})
    gz = gzip.compress(raw, mtime=0)
    layer = Descriptor(MediaType.OCI_LAYER_GZIP, store.blobs.put_bytes(gz), len(gz))
    cfg = ImageConfig().with_layer(Digest.of(b"lies"))
    m = Manifest.build(config=store.put_config(cfg), layers=[layer])
    store.commit_image(m, ["localhost/liar:1"])
    with pytest.raises(ArchiveError, match="decompresses to"):
        save(store, [ExportImage(m.descriptor(), ("localhost/liar:1",))], io.BytesIO())


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("docker.io/library/app:1.2", ("docker.io/library/app", "1.2", None)),
        ("127.0.0.1:5000/app", ("127.0.0.1:5000/app", None, None)),
        ("127.0.0.1:5000/app:x", ("127.0.0.1:5000/app", "x", None)),
        (f"docker.io/a/b@{GOOD}", ("docker.io/a/b", None, str(GOOD))),
        (f"docker.io/a/b:t@{GOOD}", ("docker.io/a/b", "t", str(GOOD))),
    ],
)
def test_split_name(name: str, parts: tuple[str, str | None, str | None]) -> None:
    assert split_name(name) == parts


# -- the CLI ----------------------------------------------------------------------------------


def test_cli_save_and_load(store_root: Path, tmp_path: Path) -> None:
    store = Store.open(store_root)
    m = make_image(store, [{"a": b"1"}])
    store.images.tag("docker.io/library/app:1.2", m.descriptor())
    runner = CliRunner()
    out = tmp_path / "x.tar"
    result = runner.invoke(cli, ["save", "-o", str(out), "app:1.2"])
    assert result.exit_code == 0, result.output
    assert json.loads(_members(out)["manifest.json"])[0]["RepoTags"] == ["app:1.2"]
    result = runner.invoke(cli, ["rmi", "app:1.2"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["Untagged: app:1.2", f"Deleted: {m.digest}"]
    assert list(store.blobs) == []
    result = runner.invoke(cli, ["load", "-i", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output == "Loaded image: app:1.2\n"
    result = runner.invoke(
        cli, ["save", "--format", "oci", "-o", str(tmp_path / "o.tar"), m.config.digest.short]
    )
    assert result.exit_code == 0, result.output
    store.close()


def test_cli_errors_are_one_line(store_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"nope" * 300)
    env = {**os.environ, "PYBUILD_ROOT": str(store_root)}
    for args in (["load", "-i", str(bad)], ["save", "-o", str(tmp_path / "o.tar"), "absent:1"]):
        proc = subprocess.run(
            [sys.executable, "-m", "builder", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


def test_save_layout_dir_merges_and_round_trips(store: Store, dest: Store, tmp_path: Path) -> None:
    from layerstore.layout import save_layout_dir

    a = make_image(store, [{"a": b"1"}])
    b = make_image(store, [{"b": b"2"}])
    store.images.tag("docker.io/library/a:1", a.descriptor())
    store.images.tag("docker.io/library/b:1", b.descriptor())
    layout = tmp_path / "layout"
    save_layout_dir(store, export_images(store, ["docker.io/library/a:1"]), layout)
    save_layout_dir(store, export_images(store, ["docker.io/library/b:1"]), layout)
    # Re-saving a name replaces its entry instead of duplicating it.
    store.images.tag("docker.io/library/a:1", b.descriptor())
    save_layout_dir(store, export_images(store, ["docker.io/library/a:1"]), layout)
    index = json.loads((layout / "index.json").read_bytes())
    names = {
        e["annotations"]["org.opencontainers.image.ref.name"]: e["digest"]
        for e in index["manifests"]
    }
    assert names == {"docker.io/library/a:1": str(b.digest), "docker.io/library/b:1": str(b.digest)}
    assert not (layout / "ingest").exists()
    loaded = load_path(dest, layout)
    assert sorted(i.name or "" for i in loaded) == [
        "docker.io/library/a:1",
        "docker.io/library/b:1",
    ]
    assert dest.check() == []


def test_save_layout_dir_refuses_a_non_layout_directory(store: Store, tmp_path: Path) -> None:
    from layerstore.layout import save_layout_dir

    m = make_image(store, [{"a": b"1"}])
    store.images.tag("docker.io/library/a:1", m.descriptor())
    target = tmp_path / "home"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ArchiveError, match="not empty and is not an OCI layout"):
        save_layout_dir(store, export_images(store, ["docker.io/library/a:1"]), target)


def test_index_json_debris_of_a_killed_writer_is_removed(store: Store) -> None:
    m = make_image(store, [{"a": b"1"}])
    debris = store.root / ".index.json.99999.tmp"
    debris.write_text("half")
    store.images.tag("docker.io/library/a:1", m.descriptor())
    assert not debris.exists()
    assert store.check() == []


def test_docker_archive_with_nested_index_keeps_the_original_manifest(
    store: Store, dest: Store, tmp_path: Path
) -> None:
    """Docker with the containerd image store: index.json → image index → manifest, gzip
    layers stored as they are, plus manifest.json for the classic loader."""
    # Annotated, so a manifest rebuilt from manifest.json would have another digest.
    m = make_image(store, [{"a": b"1"}, {"b": b"2"}], compression="gzip").evolve(
        annotations={"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}
    )
    idx = Index.build(manifests=[m.descriptor(Platform("linux", "amd64"))])
    files: dict[str, bytes] = {}
    for d in (m.config, *m.layers):
        files[f"blobs/sha256/{d.digest.hex}"] = store.blobs.read_bytes(d.digest)
    files[f"blobs/sha256/{m.digest.hex}"] = m.to_bytes()
    files[f"blobs/sha256/{idx.digest.hex}"] = idx.to_bytes()
    files["index.json"] = Index.build(
        manifests=[
            idx.descriptor(annotations={"io.containerd.image.name": "docker.io/library/app:ctr"})
        ]
    ).to_bytes()
    files["oci-layout"] = b'{"imageLayoutVersion":"1.0.0"}'
    files["manifest.json"] = json.dumps(
        [
            {
                "Config": f"blobs/sha256/{m.config.digest.hex}",
                "RepoTags": ["app:ctr"],
                "Layers": [f"blobs/sha256/{d.digest.hex}" for d in m.layers],
            }
        ]
    ).encode()
    loaded = load_archive(dest, _tar_of(files), normalize=lambda n: f"docker.io/library/{n}")
    assert [(i.name, i.descriptor.digest) for i in loaded] == [
        ("docker.io/library/app:ctr", m.digest)
    ]
    assert dest.check() == []
