"""Protocol corners: schema 1, Link pagination, foreign layers, insecure configuration."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from layerstore.descriptor import Descriptor, MediaType
from layerstore.digest import Digest
from layerstore.manifest import Manifest
from layerstore.store import Store
from registry.client import Client, _next_link
from registry.errors import UnsupportedManifestKind
from registry.progress import PlainProgress, RichProgress
from registry.pull import pull
from registry.push import push
from registry.reference import Reference
from registry.transport import TransportOptions, configured_insecure, is_loopback

from .conftest import Fault, FaultProxy, RegistryServer, build_image, login_env

SCHEMA1 = json.dumps(
    {"schemaVersion": 1, "name": "old/app", "tag": "1", "fsLayers": [], "history": []}
).encode()


@pytest.mark.registry
def test_schema1_is_refused_clearly(fault_proxy: FaultProxy, client_env: Path) -> None:
    fault_proxy.inject(
        Fault(
            "serve",
            "GET",
            "/manifests/",
            status=200,
            body=SCHEMA1,
            headers={"Content-Type": MediaType.DOCKER_SCHEMA1_SIGNED},
        )
    )
    ref = Reference.parse(f"{fault_proxy.host}/old/app:1")
    with pytest.raises(UnsupportedManifestKind, match=r"schema 1.*too old"):
        pull(ref, Store.open())


@pytest.mark.registry
def test_tag_listing_follows_link_pages(
    plain_registry: RegistryServer, fault_proxy: FaultProxy, client_env: Path
) -> None:
    store = Store.open()
    build_image(store, "local/pages:1")
    for tag in ("a", "b", "c"):
        push("local/pages:1", Reference.parse(plain_registry.ref(f"pages/app:{tag}")), store)
    # distribution 2.8 ignores n/last, so the first page (with its Link) is served by the proxy.
    fault_proxy.inject(
        Fault(
            "serve",
            "GET",
            "/tags/list?n=2",
            status=200,
            body=json.dumps({"name": "pages/app", "tags": ["a", "b"]}).encode(),
            headers={
                "Content-Type": "application/json",
                "Link": '</v2/pages/app/tags/list?last=b&n=2>; rel="next"',
            },
        )
    )
    ref = Reference.parse(f"{fault_proxy.host}/pages/app", default_tag=None)
    with Client.for_reference(ref) as client:
        assert client.list_tags(ref, page_size=2) == ["a", "b", "c"]
    assert any("last=b" in p for _, p, _ in fault_proxy.requests)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('</v2/a/tags/list?last=x&n=2>; rel="next"', "http://r/v2/a/tags/list?last=x&n=2"),
        (
            '<https://other/v2/a/tags/list?last=x>; rel="next"',
            "https://other/v2/a/tags/list?last=x",
        ),
        ('</v2/a/tags/list?last=x>; rel="prev"', None),
        (None, None),
    ],
)
def test_next_link(header: str | None, expected: str | None) -> None:
    assert _next_link(header, "http://r/v2/a/tags/list") == expected


@pytest.mark.registry
def test_foreign_layers_are_not_pushed_or_fetched_unless_allowed(
    token_registry: RegistryServer,
    token_proxy: FaultProxy,
    client_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Through a proxy with credentials for it: the foreign URL (localhost:PORT, another
    # host name for the same proxy) must be fetched without them.
    login_env(token_registry, monkeypatch, client_env)
    cfg = client_env / "docker" / "config.json"
    doc = json.loads(cfg.read_text())
    doc["auths"][token_proxy.host] = doc["auths"][token_registry.host]
    cfg.write_text(json.dumps(doc))
    fault_proxy = token_proxy
    store = Store.open()
    image = build_image(store, "local/base:1")
    own = Manifest.from_bytes(image.manifest)
    foreign_bytes = b"a base layer that lives elsewhere" * 10
    fault_proxy.storage["/storage/base.tar.gz"] = foreign_bytes
    foreign = Descriptor(
        MediaType.DOCKER_FOREIGN_LAYER,
        Digest.of(foreign_bytes),
        len(foreign_bytes),
        urls=(f"http://localhost:{fault_proxy.host.rsplit(':', 1)[1]}/storage/base.tar.gz",),
    )
    config = store.blobs.read_bytes(own.config.digest)
    manifest = Manifest.build(
        config=Descriptor(MediaType.DOCKER_CONFIG, own.config.digest, len(config)),
        layers=[
            foreign,
            *(Descriptor(MediaType.DOCKER_LAYER_GZIP, d.digest, d.size) for d in own.layers),
        ],
        media_type=MediaType.DOCKER_MANIFEST,
    )
    desc = store.put_manifest(manifest)
    store.images.tag("local/foreign:1", desc)
    ref = Reference.parse(f"{token_proxy.host}/foreign/app:1")
    result = push("local/foreign:1", ref, store)
    assert result.digest == manifest.digest and result.uploaded == 2  # config + own layer
    dst = Store.open(client_env / "dst")
    pulled = pull(ref, dst)
    assert pulled.foreign == 1 and pulled.fetched == 2
    assert not dst.blobs.has(foreign.digest)
    assert dst.blobs.read_bytes(manifest.digest) == manifest.to_bytes()
    allowed = Store.open(client_env / "allowed")
    assert pull(ref, allowed, allow_foreign=True).fetched == 3
    assert allowed.blobs.read_bytes(foreign.digest) == foreign_bytes
    assert fault_proxy.storage_requests and "Authorization" not in fault_proxy.storage_requests[0]
    registry_calls = [h for _, p, h in fault_proxy.requests if p.startswith("/v2/foreign/")]
    assert any("Authorization" in h for h in registry_calls)  # the registry itself got them


def test_insecure_registries_from_docker_and_containers_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = tmp_path / "daemon.json"
    daemon.write_text(json.dumps({"insecure-registries": ["docker-insecure.io:5000"]}))
    conf = tmp_path / "registries.conf"
    conf.write_text(
        '[[registry]]\nlocation = "podman-insecure.io/ns"\ninsecure = true\n'
        '[[registry]]\nlocation = "secure.io"\n'
    )
    (tmp_path / "registries.conf.d").mkdir()
    (tmp_path / "registries.conf.d" / "x.conf").write_text(
        '[[registry]]\nlocation = "dropin.io"\ninsecure = true\n'
    )
    monkeypatch.setenv("PYBUILD_DOCKER_DAEMON_JSON", str(daemon))
    monkeypatch.setenv("PYBUILD_REGISTRIES_CONF", str(conf))
    monkeypatch.setenv("PYBUILD_INSECURE_REGISTRIES", "env.io, env2.io")
    assert set(configured_insecure()) == {
        "docker-insecure.io:5000",
        "podman-insecure.io",
        "dropin.io",
    }
    options = TransportOptions.from_env(["flag.io"])
    for host in (
        "docker-insecure.io:5000",
        "podman-insecure.io",
        "dropin.io",
        "env.io",
        "env2.io",
        "flag.io",
    ):
        assert options.is_insecure(host), host
    assert not options.is_insecure("secure.io")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("[::1]:5000", True),
        ("10.0.0.1:5000", False),
        ("registry.example.com", False),
    ],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_progress_sinks_report_each_blob() -> None:
    out = io.StringIO()
    sink = PlainProgress(out)
    advance = sink.task("k", "abc123", 2000)
    advance(1000)
    advance(1000)
    sink.finish("k", "uploaded")
    sink.note("app: pushed sha256:x")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("abc123: uploaded 2.0 kB in ") and lines[1] == "app: pushed sha256:x"
    rich = RichProgress()
    step = rich.task("k", "abc123", 10)
    step(10)
    rich.finish("k", "downloaded")
    rich.close()


@pytest.mark.registry
def test_http_proxy_from_the_environment_is_used(
    plain_registry: RegistryServer,
    fault_proxy: FaultProxy,
    client_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = Store.open()
    image = build_image(store, "local/proxied:1")
    ref = Reference.parse(plain_registry.ref("proxied/app:1"))
    push("local/proxied:1", ref, store)
    monkeypatch.setenv("HTTP_PROXY", f"http://{fault_proxy.host}")
    monkeypatch.setenv("NO_PROXY", "")
    assert pull(ref, Store.open(client_env / "dst")).digest == image.digest
    # The proxy saw absolute-form requests for the registry's own host.
    assert any(plain_registry.host in p and "/manifests/" in p for _, p, _ in fault_proxy.requests)
