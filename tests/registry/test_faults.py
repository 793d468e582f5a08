"""Pull and push through a fault-injecting proxy: drops, 5xx, 429, stalls, a flipped byte.

Every case must end with the same digests as a clean transfer (or, for a corrupted blob,
with DigestMismatch and nothing stored). The proxy is the one simulated part: a healthy
loopback registry cannot be made to misbehave on cue.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import registry.client
from layerstore.digest import Digest
from layerstore.errors import DigestMismatch
from layerstore.store import Store
from registry.client import Client
from registry.errors import ResponseError
from registry.pull import pull
from registry.push import push
from registry.reference import Reference

from .conftest import BuiltImage, Fault, FaultProxy, RegistryServer, build_image

pytestmark = pytest.mark.registry

LAYER = 400_000


def _image(store: Store, name: str = "local/app:1") -> BuiltImage:
    return build_image(
        store,
        name,
        layers=[{"a": os.urandom(LAYER)}, {"b": os.urandom(LAYER)}],
        compress=False,
    )


def _client(proxy: FaultProxy, ref: Reference, sleeps: list[float]) -> Client:
    client = Client.for_reference(ref)
    client.transport.sleep = sleeps.append  # record the backoff instead of waiting
    return client


PULL_FAULTS = {
    "500 twice on a blob": [Fault("status", "GET", "/blobs/sha256", times=2, status=500)],
    "503 on the manifest": [Fault("status", "GET", "/manifests/", times=1, status=503)],
    "429 with Retry-After": [
        Fault("status", "GET", "/blobs/", times=2, status=429, retry_after="7")
    ],
    "drop mid-blob twice": [
        Fault("drop", "GET", "/blobs/sha256", times=2, after_bytes=150_000),
    ],
    "stall mid-blob": [
        Fault("stall", "GET", "/blobs/sha256", times=1, after_bytes=100_000, stall=2.5)
    ],
}


@pytest.mark.parametrize("faults", list(PULL_FAULTS.values()), ids=list(PULL_FAULTS))
def test_pull_survives(
    faults: list[Fault],
    plain_registry: RegistryServer,
    fault_proxy: FaultProxy,
    client_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYBUILD_REGISTRY_TIMEOUT", "1")
    src = Store.open(client_env / "src")
    image = _image(src)
    direct = Reference.parse(plain_registry.ref("faults/pull:1"))
    push("local/app:1", direct, src)

    fault_proxy.inject(*faults)
    via_proxy = Reference.parse(f"{fault_proxy.host}/faults/pull:1")
    dst = Store.open(client_env / "dst")
    sleeps: list[float] = []
    with _client(fault_proxy, via_proxy, sleeps) as client:
        result = pull(via_proxy, dst, client=client, jobs=2)
    assert result.digest == image.digest
    assert fault_proxy.injected(), "the fault was never injected"
    assert all(f.times == 0 for f in faults), "not every fault was used"
    for blob in image.layers:
        assert dst.blobs.read_bytes(Digest.of(blob)) == blob
    assert dst.blobs.verify(Digest.parse(str(image.digest)))
    if any(f.retry_after for f in faults):
        assert 7.0 in sleeps  # Retry-After honoured
    if any(f.action in ("drop", "stall") for f in faults):
        ranges = [h.get("Range") for m, p, h in fault_proxy.requests if "/blobs/" in p]
        assert any(r and r.startswith("bytes=") and r != "bytes=0-" for r in ranges), ranges


PUSH_FAULTS = {
    "500 on upload start": [Fault("status", "POST", "/blobs/uploads/", times=2, status=500)],
    "500 on blob PUT": [Fault("status", "PUT", "/blobs/uploads/", times=1, status=500)],
    "dropped blob PUT": [Fault("drop", "PUT", "/blobs/uploads/", times=1, after_bytes=100_000)],
    "429 on manifest PUT": [
        Fault("status", "PUT", "/manifests/", times=1, status=429, retry_after="1")
    ],
    "500 on HEAD": [Fault("status", "HEAD", "/blobs/", times=2, status=500)],
}


@pytest.mark.parametrize("faults", list(PUSH_FAULTS.values()), ids=list(PUSH_FAULTS))
def test_push_survives(
    faults: list[Fault],
    plain_registry: RegistryServer,
    fault_proxy: FaultProxy,
    client_env: Path,
) -> None:
    store = Store.open(client_env / "src")
    image = _image(store)
    name = f"faults/push-{len(fault_proxy.requests)}-{os.getpid()}-{id(faults)}"
    via_proxy = Reference.parse(f"{fault_proxy.host}/{name}:1")
    fault_proxy.inject(*faults)
    sleeps: list[float] = []
    with _client(fault_proxy, via_proxy, sleeps) as client:
        result = push("local/app:1", via_proxy, store, client=client, jobs=2)
    assert result.digest == image.digest
    assert all(f.times == 0 for f in faults), "not every fault was used"
    _assert_pulls_back(plain_registry, name, image, client_env)


def _assert_pulls_back(
    server: RegistryServer, name: str, image: BuiltImage, client_env: Path
) -> None:
    check = Store.open(client_env / f"check-{name.replace('/', '_')}")
    ref = Reference.parse(server.ref(f"{name}:1"))
    assert pull(ref, check).digest == image.digest
    for blob in image.layers:
        assert check.blobs.read_bytes(Digest.of(blob)) == blob


def test_chunked_upload_resumes_after_a_broken_patch(
    plain_registry: RegistryServer,
    fault_proxy: FaultProxy,
    client_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry.client, "MONOLITHIC_MAX", 64 * 1024)
    monkeypatch.setattr(registry.client, "CHUNK_SIZE", 128 * 1024)
    store = Store.open(client_env / "src")
    image = _image(store)
    fault_proxy.inject(
        Fault("drop", "PATCH", "/blobs/uploads/", times=1, after_bytes=50_000),
        Fault("status", "PATCH", "/blobs/uploads/", times=1, status=502),
    )
    ref = Reference.parse(f"{fault_proxy.host}/faults/chunked:1")
    sleeps: list[float] = []
    with _client(fault_proxy, ref, sleeps) as client:
        assert push("local/app:1", ref, store, client=client, jobs=1).digest == image.digest
    patches = [h for m, p, h in fault_proxy.requests if m == "PATCH"]
    assert all(h.get("Content-Type") == "application/octet-stream" for h in patches)
    assert all("Content-Range" in h for h in patches)
    # After the break the client asked the session where it stood and went on from there.
    assert any(m == "GET" and "/blobs/uploads/" in p for m, p, _ in fault_proxy.requests)
    _assert_pulls_back(plain_registry, "faults/chunked", image, client_env)


def test_flipped_byte_fails_and_stores_nothing(
    plain_registry: RegistryServer, fault_proxy: FaultProxy, client_env: Path
) -> None:
    src = Store.open(client_env / "src")
    image = _image(src)
    push("local/app:1", Reference.parse(plain_registry.ref("faults/flip:1")), src)
    layer = Digest.of(image.layers[0])
    fault_proxy.inject(Fault("flip", "GET", f"/blobs/{layer}", times=5, after_bytes=1000))
    ref = Reference.parse(f"{fault_proxy.host}/faults/flip:1")
    dst = Store.open(client_env / "dst")
    with pytest.raises(DigestMismatch):
        pull(ref, dst)
    assert not dst.blobs.has(layer)
    assert dst.images.get(str(ref)) is None
    assert not list((dst.root / "ingest").glob("*.part"))


def test_interrupted_push_rerun_sends_only_the_rest(
    plain_registry: RegistryServer, fault_proxy: FaultProxy, client_env: Path
) -> None:
    store = Store.open(client_env / "src")
    image = _image(store)
    big = Digest.of(image.layers[1])
    # The second layer's upload keeps failing: the first push gives up.
    fault_proxy.inject(Fault("status", "PUT", "/blobs/uploads/", times=100, status=500))
    ref = Reference.parse(f"{fault_proxy.host}/faults/rerun:1")
    with _client(fault_proxy, ref, []) as client, pytest.raises(ResponseError):
        push("local/app:1", ref, store, client=client, jobs=1)
    fault_proxy.faults.clear()
    fault_proxy.requests.clear()
    with _client(fault_proxy, ref, []) as client:
        result = push("local/app:1", ref, store, client=client, jobs=1)
    assert result.digest == image.digest
    puts = [p for m, p, _ in fault_proxy.requests if m == "PUT" and "/blobs/" in p]
    assert len(puts) == result.uploaded <= 3
    assert big  # (the layer order is irrelevant; only unsent blobs were sent)
    _assert_pulls_back(plain_registry, "faults/rerun", image, client_env)
