"""Push, pull, tag, copy and list against real distribution registries (three setups)."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerstore.digest import Digest
from layerstore.store import Store
from registry.client import Client
from registry.pull import pull
from registry.push import push
from registry.reference import Reference

from .conftest import Fault, FaultProxy, RegistryServer, build_image, login_env

pytestmark = pytest.mark.registry


@pytest.fixture(params=["plain", "tls", "token"])
def server(
    request: pytest.FixtureRequest,
    client_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> RegistryServer:
    srv: RegistryServer = request.getfixturevalue(f"{request.param}_registry")
    login_env(srv, monkeypatch, client_env)
    return srv


def test_push_then_pull_round_trip(server: RegistryServer, client_env: Path) -> None:
    src = Store.open(client_env / "src")
    image = build_image(src, "local/app:1", layers=[{"a": b"A" * 5000}, {"b": b"B" * 300}])
    dest = Reference.parse(server.ref("roundtrip/app:v1"))
    result = push("local/app:1", dest, src)
    assert result.digest == image.digest
    assert result.uploaded == 3

    again = push("local/app:1", dest, src)
    assert again.uploaded == 0 and again.existing == 3

    dst = Store.open(client_env / "dst")
    pulled = pull(dest, dst)
    assert pulled.digest == image.digest
    assert dst.images.resolve(str(dest)).digest == image.digest
    for blob in image.layers:
        assert dst.blobs.read_bytes(Digest.of(blob)) == blob
    with Client.for_reference(dest) as client:
        assert "v1" in client.list_tags(dest)


@pytest.mark.parametrize(
    ("kind", "same_digest"),
    [("oci", True), ("oci-archive", True), ("docker-archive", False)],
)
def test_copy_through_layouts_and_archives(
    kind: str, same_digest: bool, plain_registry: RegistryServer, client_env: Path
) -> None:
    from registry.locations import copy_between, parse_location

    store = Store.open(client_env / "src")
    image = build_image(store, "local/arch:1", layers=[{"k": kind.encode() * 700}])
    first = Reference.parse(plain_registry.ref(f"copy/{kind}:1"))
    push("local/arch:1", first, store)
    target = client_env / ("layout" if kind == "oci" else f"image-{kind}.tar")
    out = copy_between(parse_location(str(first)), parse_location(f"{kind}:{target}:app:1"))
    assert out.digest == image.digest
    back = Reference.parse(plain_registry.ref(f"copy/{kind}-back:1"))
    again = copy_between(parse_location(f"{kind}:{target}:app:1"), parse_location(str(back)))
    assert (again.digest == image.digest) is same_digest
    with Client.for_reference(back) as client:
        manifest = client.get_manifest(back)
    check = Store.open(client_env / "check")
    pulled = pull(back, check)
    assert pulled.digest == manifest.digest
    doc = check.read_document(pulled.descriptor.digest)
    assert check.blobs.read_bytes(doc.config.digest) == image.config  # type: ignore[union-attr]


def test_mount_answered_202_falls_back_to_upload(
    plain_registry: RegistryServer, fault_proxy: FaultProxy, client_env: Path
) -> None:
    store = Store.open()
    image = build_image(store, "local/m:1", layers=[{"m": b"mount me" * 300}])
    # The store believes the blobs live in a repository that does not have them: the
    # registry answers the mount with 202 and an upload session, which must be used.
    for blob in (*image.layers, image.config):
        store.images.add_blob_source(Digest.of(blob), fault_proxy.host, "no/such-repo")
    fault_proxy.relative_locations = True  # and Location headers are relative
    ref = Reference.parse(f"{fault_proxy.host}/mount/fallback:1")
    result = push("local/m:1", ref, store)
    assert result.uploaded == 2 and result.mounted == 0
    mounts = [p for m, p, _ in fault_proxy.requests if m == "POST" and "mount=" in p]
    assert len(mounts) == 2
    posts = [p for m, p, _ in fault_proxy.requests if m == "POST"]
    assert len(posts) == 2  # the sessions the mounts opened were used, no new ones
    again = Store.open(client_env / "again")
    assert pull(Reference.parse(plain_registry.ref("mount/fallback:1")), again).fetched == 2
    second = pull(Reference.parse(plain_registry.ref("mount/fallback:1")), again)
    assert second.fetched == 0 and second.present == 2


def test_copy_between_registries_streams_and_survives_a_drop(
    plain_registry: RegistryServer,
    token_registry: RegistryServer,
    fault_proxy: FaultProxy,
    client_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from registry.copy import copy_image

    login_env(token_registry, monkeypatch, client_env)
    store = Store.open()
    image = build_image(store, "local/x:1", layers=[{"a": os.urandom(300_000)}, {"b": b"b"}])
    push("local/x:1", Reference.parse(plain_registry.ref("xreg/app:1")), store)
    fault_proxy.inject(Fault("drop", "GET", "/blobs/sha256", times=1, after_bytes=100_000))
    src = Reference.parse(f"{fault_proxy.host}/xreg/app:1")
    dst = Reference.parse(token_registry.ref("xreg/copied:1"))
    with Client.for_reference(src) as sc, Client.for_reference(dst) as dc:
        result = copy_image(src, dst, src_client=sc, dst_client=dc)
    assert result.digest == image.digest and result.copied == 3
    assert fault_proxy.injected()
    check = Store.open(client_env / "check")
    assert pull(dst, check).digest == image.digest
    for blob in image.layers:
        assert check.blobs.read_bytes(Digest.of(blob)) == blob


def test_resolve_without_pulling(plain_registry: RegistryServer, client_env: Path) -> None:
    from registry.errors import NotFound

    store = Store.open()
    image = build_image(store, "local/r:1")
    ref = Reference.parse(plain_registry.ref("resolve/app:1"))
    push("local/r:1", ref, store)
    with Client.for_reference(ref) as client:
        desc = client.resolve(ref)
        assert desc.digest == image.digest and desc.size == len(image.manifest)
        assert client.resolve(ref.with_digest(image.digest)).digest == image.digest
        with pytest.raises(NotFound):
            client.resolve(ref.with_tag("missing"))
