"""Real tools read what we write, and we read what they write: skopeo and umoci on the store
itself (an OCI layout), podman load on our docker-archive and OCI archive, pybuild load on
skopeo's docker-archive and OCI layout."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerstore.config import ImageConfig
from layerstore.descriptor import Descriptor, MediaType
from layerstore.digest import Digest
from layerstore.layout import export_images, load_path, save_to_path
from layerstore.manifest import Manifest
from layerstore.store import Store
from registry.reference import Reference

pytestmark = pytest.mark.tools

NAMES = [
    "docker.io/library/app:1.2",
    "127.0.0.1:5000/team/sub/app:latest",
    "localhost/app:v1.0-rc.1",
]


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (Debian package {tool})")
    return path


def _run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=120, **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stderr}"
    return proc  # type: ignore[no-any-return]


def _layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            if name.endswith("/"):
                info = tarfile.TarInfo(name.rstrip("/"))
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
            else:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
            info.mtime = 1700000000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _build_store(tmp_path: Path, compression: str = "gzip") -> tuple[Store, Manifest, ImageConfig]:
    import gzip

    import zstandard

    store = Store.open(tmp_path / "store")
    cfg = ImageConfig(architecture="amd64", os="linux", created="2024-03-01T00:00:00Z")
    layers = []
    for files in (
        {"etc/": b"", "etc/hello": b"hello\n"},
        {"app/": b"", "app/run.sh": b"echo hi\n"},
    ):
        raw = _layer(files)
        if compression == "zstd":
            blob, media_type = zstandard.ZstdCompressor().compress(raw), MediaType.OCI_LAYER_ZSTD
        else:
            blob, media_type = gzip.compress(raw, mtime=0), MediaType.OCI_LAYER_GZIP
        layers.append(Descriptor(media_type, store.blobs.put_bytes(blob), len(blob)))
        cfg = cfg.with_layer(Digest.of(raw), created_by=f"COPY {sorted(files)}")
    cfg = cfg.with_container_config(
        cmd=("/app/run.sh",),
        env=("PATH=/usr/bin:/bin", "MODE=test"),
        labels={"org.opencontainers.image.title": "interop"},
        working_dir="/app",
        exposed_ports=("8080/tcp",),
    )
    m = Manifest.build(config=store.put_config(cfg), layers=layers)
    for name in NAMES:
        store.commit_image(m, [name])
    return store, m, cfg


@pytest.fixture
def image_store(tmp_path: Path) -> Iterator[tuple[Store, Manifest, ImageConfig]]:
    built = _build_store(tmp_path)
    yield built
    built[0].close()


@pytest.mark.parametrize("name", [*NAMES, "digest"])
def test_skopeo_inspects_the_store(
    image_store: tuple[Store, Manifest, ImageConfig], name: str
) -> None:
    skopeo = _need("skopeo")
    store, m, _cfg = image_store
    if name == "digest":
        name = f"docker.io/library/app@{m.digest}"
        store.images.tag(name, m.descriptor())
    raw = _run(skopeo, "inspect", "--raw", f"oci:{store.root}:{name}").stdout
    assert raw.encode() == m.to_bytes()
    info = json.loads(_run(skopeo, "inspect", f"oci:{store.root}:{name}").stdout)
    assert info["Digest"] == str(m.digest)
    assert info["Labels"] == {"org.opencontainers.image.title": "interop"}
    assert info["Layers"] == [str(d.digest) for d in m.layers]
    config = json.loads(_run(skopeo, "inspect", "--config", f"oci:{store.root}:{name}").stdout)
    assert config["config"]["Cmd"] == ["/app/run.sh"]


@pytest.mark.parametrize("name", NAMES)
def test_umoci_unpacks_the_store(
    image_store: tuple[Store, Manifest, ImageConfig], name: str, tmp_path: Path
) -> None:
    umoci = _need("umoci")
    store, _, _ = image_store
    bundle = tmp_path / "bundle"
    args = [umoci, "unpack"] + ([] if os.geteuid() == 0 else ["--rootless"])
    _run(*args, "--image", f"{store.root}:{name}", str(bundle))
    assert (bundle / "rootfs" / "etc" / "hello").read_bytes() == b"hello\n"
    assert (bundle / "rootfs" / "app" / "run.sh").read_bytes() == b"echo hi\n"
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["process"]["args"] == ["/app/run.sh"]
    assert spec["process"]["cwd"] == "/app"
    assert "MODE=test" in spec["process"]["env"]
    # umoci's own listing sees every tag.
    listed = _run(umoci, "ls", "--layout", str(store.root)).stdout.split()
    assert sorted(listed) == sorted(NAMES)


def _podman(tmp_path: Path) -> Iterator[list[str]]:
    podman = _need("podman")
    # podman refuses a --runroot longer than 50 characters: pytest's tmp_path is too deep.
    work = Path(tempfile.mkdtemp(prefix="pb-podman-", dir="/tmp"))
    cmd = [
        podman,
        "--root",
        str(work / "root"),
        "--runroot",
        str(work / "run"),
        "--runtime",
        "runc",
        "--storage-driver",
        "vfs",
    ]
    try:
        yield cmd
    finally:
        subprocess.run([*cmd, "rmi", "--all", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[list[str]]:
    yield from _podman(tmp_path)


@pytest.mark.parametrize(
    ("fmt", "compression"), [("docker", "gzip"), ("docker", "zstd"), ("oci", "gzip")]
)
def test_podman_loads_our_archive(
    podman: list[str], tmp_path: Path, fmt: str, compression: str
) -> None:
    store, m, cfg = _build_store(tmp_path, compression)
    archive = tmp_path / f"app.{fmt}.tar"
    save_to_path(
        store,
        export_images(store, ["docker.io/library/app:1.2"]),
        archive,
        format=fmt,
        familiar=lambda n: n.removeprefix("docker.io/library/"),
    )
    out = _run(*podman, "load", "-i", str(archive))
    assert "app:1.2" in out.stdout + out.stderr
    (info,) = json.loads(_run(*podman, "image", "inspect", "docker.io/library/app:1.2").stdout)
    assert info["Config"]["Cmd"] == ["/app/run.sh"]
    assert info["Config"]["Env"] == ["PATH=/usr/bin:/bin", "MODE=test"]
    assert info["Config"]["WorkingDir"] == "/app"
    assert info["Config"]["Labels"] == {"org.opencontainers.image.title": "interop"}
    assert "8080/tcp" in info["Config"]["ExposedPorts"]
    assert info["RootFS"]["Layers"] == [str(d) for d in cfg.rootfs.diff_ids]
    assert info["Architecture"] == "amd64"
    # The image ID podman computes is our config digest: the config went through unchanged.
    assert info["Id"] == m.config.digest.hex
    # And back: what podman saves from it, in either format, loads into a fresh store.
    for podman_format in ("docker-archive", "oci-archive"):
        back = tmp_path / f"podman.{podman_format}.tar"
        _run(
            *podman, "save", "--format", podman_format, "-o", str(back), "docker.io/library/app:1.2"
        )
        fresh = Store.open(tmp_path / f"fresh-{podman_format}")
        loaded = load_path(fresh, back, normalize=lambda n: str(Reference.parse(n)))
        assert [i.image_id for i in loaded] == [m.config.digest], podman_format
        assert loaded[0].name == "docker.io/library/app:1.2", podman_format
        assert fresh.check() == []
        fresh.close()
    store.close()


def test_we_load_what_skopeo_writes(
    image_store: tuple[Store, Manifest, ImageConfig], tmp_path: Path
) -> None:
    skopeo = _need("skopeo")
    store, m, cfg = image_store
    src = f"oci:{store.root}:docker.io/library/app:1.2"
    # skopeo's docker-archive (classic manifest.json + <hex>.tar layers).
    archive = tmp_path / "skopeo.tar"
    _run(skopeo, "copy", src, f"docker-archive:{archive}:app:from-skopeo")
    dest = Store.open(tmp_path / "dest")
    loaded = load_path(dest, archive, normalize=lambda n: str(Reference.parse(n)))
    assert [i.name for i in loaded] == ["docker.io/library/app:from-skopeo"]
    assert loaded[0].image_id == m.config.digest
    img = dest.image("docker.io/library/app:from-skopeo")
    assert img.config == cfg
    # skopeo's OCI layout directory.
    layout = tmp_path / "skopeo-layout"
    _run(skopeo, "copy", src, f"oci:{layout}:docker.io/library/app:oci")
    loaded = load_path(dest, layout)
    assert [i.name for i in loaded] == ["docker.io/library/app:oci"]
    assert dest.check() == []
    dest.close()


def test_umoci_and_skopeo_read_a_saved_layout_dir(
    image_store: tuple[Store, Manifest, ImageConfig], tmp_path: Path
) -> None:
    from layerstore.layout import save_layout_dir

    umoci, skopeo = _need("umoci"), _need("skopeo")
    store, m, _ = image_store
    layout = tmp_path / "out"
    save_layout_dir(store, export_images(store, NAMES[:2]), layout)
    for name in NAMES[:2]:
        raw = _run(skopeo, "inspect", "--raw", f"oci:{layout}:{name}").stdout
        assert raw.encode() == m.to_bytes()
    bundle = tmp_path / "bundle"
    args = [umoci, "unpack"] + ([] if os.geteuid() == 0 else ["--rootless"])
    _run(*args, "--image", f"{layout}:{NAMES[1]}", str(bundle))
    assert (bundle / "rootfs" / "etc" / "hello").read_bytes() == b"hello\n"


def test_skopeo_copy_into_the_store_is_adopted(
    image_store: tuple[Store, Manifest, ImageConfig], tmp_path: Path
) -> None:
    skopeo = _need("skopeo")
    store, m, _ = image_store
    other = Store.open(tmp_path / "other")
    loaded = load_path(other, store.root)  # a second store with the same image
    assert loaded
    _run(
        skopeo,
        "copy",
        f"oci:{other.root}:{NAMES[0]}",
        f"oci:{store.root}:docker.io/library/copied:by-skopeo",
    )
    reopened = Store.open(store.root)
    assert reopened.images.resolve("docker.io/library/copied:by-skopeo").digest == m.digest
    assert reopened.check() == []
    # Our later rewrites keep it.
    reopened.images.untag(NAMES[2])
    index = json.loads((store.root / "index.json").read_bytes())
    refs = {e["annotations"]["org.opencontainers.image.ref.name"] for e in index["manifests"]}
    assert "docker.io/library/copied:by-skopeo" in refs
    assert NAMES[2] not in refs
    reopened.close()
    other.close()
