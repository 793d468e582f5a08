"""Push, pull, tag, copy and list against real distribution registries (three setups)."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerstore.store import Store
from registry.client import Client
from registry.pull import pull
from registry.push import push
from registry.reference import Reference

from .conftest import RegistryServer, build_image, login_env

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
        from layerstore.digest import Digest

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
