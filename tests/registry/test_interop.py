"""Interoperability with skopeo and podman, and multi-platform indexes, on a real registry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from layerstore.descriptor import MediaType, Platform
from layerstore.digest import Digest
from layerstore.manifest import Index
from layerstore.store import Store
from registry.client import Client
from registry.pull import pull
from registry.push import push
from registry.reference import Reference

from .conftest import RegistryServer, build_image

pytestmark = pytest.mark.registry

SKOPEO = shutil.which("skopeo")
PODMAN = shutil.which("podman")
needs_skopeo = pytest.mark.skipif(SKOPEO is None, reason="skopeo not installed")
needs_podman = pytest.mark.skipif(PODMAN is None, reason="podman not installed")


def _tool_env() -> dict[str, str]:
    """The environment for skopeo/podman: without the test's (absent) auth files."""
    return {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG")}


@pytest.mark.tools
@needs_skopeo
def test_pybuild_push_is_read_by_skopeo(plain_registry: RegistryServer, client_env: Path) -> None:
    store = Store.open()
    image = build_image(store, "local/interop:1", layers=[{"etc/hello": b"hello\n"}])
    ref = Reference.parse(plain_registry.ref("interop/skopeo:1"))
    push("local/interop:1", ref, store)
    assert SKOPEO is not None
    out = subprocess.run(
        [SKOPEO, "inspect", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=_tool_env(),
    )
    doc = json.loads(out.stdout)
    assert doc["Digest"] == str(image.digest)
    assert doc["Layers"] == [str(Digest.of(b)) for b in image.layers]
    raw = subprocess.run(
        [SKOPEO, "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True,
        check=True,
        timeout=60,
        env=_tool_env(),
    ).stdout
    assert raw == image.manifest


@pytest.mark.tools
@needs_podman
def test_pybuild_push_is_pulled_by_podman(plain_registry: RegistryServer, client_env: Path) -> None:
    store = Store.open()
    image = build_image(store, "local/podman:1", layers=[{"etc/podman": b"podman\n"}])
    ref = Reference.parse(plain_registry.ref("interop/podman:1"))
    push("local/podman:1", ref, store)
    # podman refuses a runroot path longer than 50 characters.
    work = Path(tempfile.mkdtemp(prefix="pb-podman-"))
    assert PODMAN is not None
    base = [
        PODMAN,
        "--root", str(work / "root"),
        "--runroot", str(work / "run"),
        "--runtime", "runc",
        "--storage-driver", "vfs",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            [*base, "pull", "--tls-verify=false", str(ref)],
            capture_output=True,
            text=True,
            timeout=120,
            env=_tool_env(),
        )
        assert done.returncode == 0, done.stderr
        listed = subprocess.run(
            [*base, "images", "--digests", "--format", "{{.Digest}}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            env=_tool_env(),
        )
        assert str(image.digest) in listed.stdout
    finally:
        subprocess.run([*base, "rmi", "-a", "-f"], capture_output=True, timeout=60, env=_tool_env())
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.tools
@needs_skopeo
def test_skopeo_push_is_pulled_by_pybuild(plain_registry: RegistryServer, client_env: Path) -> None:
    # The local store is an OCI layout: skopeo reads it directly (oci:ROOT:NAME).
    src = Store.open(client_env / "oci-src")
    image = build_image(src, "docker.io/library/fromskopeo:1", layers=[{"x": b"skopeo\n" * 99}])
    ref = Reference.parse(plain_registry.ref("interop/fromskopeo:1"))
    assert SKOPEO is not None
    subprocess.run(
        [
            SKOPEO,
            "copy",
            "--dest-tls-verify=false",
            f"oci:{src.root}:docker.io/library/fromskopeo:1",
            f"docker://{ref}",
        ],
        capture_output=True,
        check=True,
        timeout=120,
        env=_tool_env(),
    )
    dst = Store.open(client_env / "dst")
    result = pull(ref, dst)
    with Client.for_reference(ref) as client:
        remote = client.get_manifest(ref)
    assert result.digest == remote.digest
    manifest = dst.read_document(result.descriptor.digest)
    for d in (manifest.config, *manifest.layers):  # type: ignore[union-attr]
        assert dst.blobs.verify(d.digest)
    assert dst.blobs.read_bytes(manifest.config.digest) == image.config  # type: ignore[union-attr]


def _multi_platform(store: Store) -> tuple[Index, dict[str, Digest]]:
    host = Platform.host()
    other = (
        Platform("linux", "arm64", "v8")
        if host.architecture != "arm64"
        else Platform("linux", "amd64")
    )
    by_platform: dict[str, Digest] = {}
    entries = []
    for plat in (host, other, Platform("linux", "s390x")):
        img = build_image(
            store,
            f"local/multi-{plat.architecture}:1",
            layers=[{"arch": plat.architecture.encode() * 50}],
            architecture=plat.architecture,
        )
        by_platform[str(plat)] = img.digest
        entries.append(
            store.read_document(img.digest).descriptor(platform=plat)  # type: ignore[union-attr]
        )
    index = Index.build(manifests=entries)
    desc = store.put_manifest(index)
    store.images.tag("local/multi:1", desc)
    return index, by_platform


def test_multi_platform_index(
    plain_registry: RegistryServer, client_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from builder.cli import main

    src = Store.open(client_env / "src")
    index, by_platform = _multi_platform(src)
    ref = Reference.parse(plain_registry.ref("interop/multi:1"))
    assert push("local/multi:1", ref, src).digest == index.digest

    with pytest.raises(SystemExit):
        main(["inspect", "--remote", "--platform", "linux/s390x", str(ref)])
    shown = json.loads(capsys.readouterr().out)
    assert shown["Digest"] == str(index.digest)
    assert sorted(shown["Platforms"]) == sorted(by_platform)
    assert shown["Config"]["architecture"] == "s390x"

    host = Store.open(client_env / "host")
    result = pull(ref, host)
    assert result.digest == index.digest
    assert result.descriptor.digest == by_platform[str(Platform.host())]
    assert host.images.resolve(str(ref)).digest == by_platform[str(Platform.host())]

    s390 = Store.open(client_env / "s390x")
    assert (
        pull(ref, s390, platform=Platform.parse("linux/s390x")).descriptor.digest
        == by_platform["linux/s390x"]
    )
    for other in by_platform.values():
        if other != by_platform["linux/s390x"]:
            assert not s390.blobs.has(other)

    every = Store.open(client_env / "all")
    result = pull(ref, every, all_platforms=True)
    assert every.images.resolve(str(ref)).digest == index.digest
    assert every.images.resolve(str(ref)).media_type == MediaType.OCI_INDEX
    assert all(every.blobs.has(d) for d in by_platform.values())

    # Re-pushing the fully pulled index elsewhere keeps its digest (children first).
    again = Reference.parse(plain_registry.ref("interop/multi-copy:1"))
    assert push(str(ref), again, every).digest == index.digest
    assert push(str(ref), again, every).existing >= 3


UMOCI = shutil.which("umoci")


@pytest.mark.tools
@pytest.mark.skipif(UMOCI is None or SKOPEO is None, reason="umoci/skopeo not installed")
def test_oci_layout_written_by_copy_is_valid(
    plain_registry: RegistryServer, client_env: Path
) -> None:
    from registry.locations import copy_between, parse_location

    store = Store.open()
    image = build_image(store, "local/umoci:1", layers=[{"etc/umoci-was-here": b"yes\n"}])
    ref = Reference.parse(plain_registry.ref("interop/umoci:1"))
    push("local/umoci:1", ref, store)
    layout = client_env / "layout"
    copy_between(parse_location(str(ref)), parse_location(f"oci:{layout}:v1"))
    assert UMOCI is not None and SKOPEO is not None
    bundle = client_env / "bundle"
    done = subprocess.run(
        [UMOCI, "unpack", "--image", f"{layout}:v1", str(bundle)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_tool_env(),
    )
    assert done.returncode == 0, done.stderr
    assert (bundle / "rootfs" / "etc" / "umoci-was-here").read_bytes() == b"yes\n"
    out = subprocess.run(
        [SKOPEO, "inspect", f"oci:{layout}:v1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=_tool_env(),
    )
    assert json.loads(out.stdout)["Digest"] == str(image.digest)
