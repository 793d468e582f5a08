"""Manifest, Index and ImageConfig: parsing real-world-shaped documents, byte-exact round
trips, canonical encoding of built documents, schema 1 refusal, platform selection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import layerstore.errors as errors
from layerstore.canonicaljson import canonical_json
from layerstore.config import (
    ContainerConfig,
    Healthcheck,
    History,
    ImageConfig,
    RootFS,
    format_created,
    parse_created,
)
from layerstore.descriptor import Descriptor, MediaType, Platform
from layerstore.digest import Digest
from layerstore.errors import InvalidManifest, PlatformNotFound, UnsupportedManifest
from layerstore.manifest import Index, Manifest, parse_document

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "layerstore"
DOC_CASES: dict[str, dict[str, Any]] = json.loads(
    (FIXTURES / "documents" / "cases.json").read_text()
)["cases"]
CONFIG_CASES: dict[str, dict[str, Any]] = json.loads(
    (FIXTURES / "configs" / "cases.json").read_text()
)["cases"]

D1 = Digest.of(b"one")
D2 = Digest.of(b"two")


def _raw(folder: str, name: str) -> bytes:
    return (FIXTURES / folder / f"{name}.json").read_bytes()


# -- manifests and indexes: table of fixture documents --------------------------------------


@pytest.mark.parametrize("name", sorted(DOC_CASES))
def test_parse_document_fixture(name: str) -> None:
    case = DOC_CASES[name]
    raw = _raw("documents", name)
    if "error" in case:
        with pytest.raises(getattr(errors, case["error"])) as info:
            parse_document(raw, case["header"])
        assert case["message"] in str(info.value)
        return
    doc = parse_document(raw, case["header"])
    assert type(doc).__name__ == case["kind"]
    assert doc.media_type == case["media_type"]
    # Bytes read from elsewhere are kept exactly: same digest as the file.
    assert doc.to_bytes() == raw
    assert doc.digest == Digest.of(raw)
    assert doc.descriptor().size == len(raw)
    if isinstance(doc, Manifest):
        assert len(doc.layers) == case["layers"]
        assert doc.config.media_type == case["config_media_type"]
        assert doc.size == case["size"]
        for key, value in case.get("annotations", {}).items():
            assert doc.annotation(key) == value
        assert doc.artifact_type == case.get("artifact_type")
        assert (doc.subject is not None) == case.get("subject", False)
        assert Manifest.from_bytes(raw, case["header"]) == doc
    else:
        assert isinstance(doc, Index)
        assert len(doc.manifests) == case["manifests"]
        assert [str(p) for p in doc.platforms()] == case["platforms"]
        assert Index.from_bytes(raw, case["header"]) == doc


@pytest.mark.parametrize("name", sorted(DOC_CASES))
def test_reencode_is_canonical_and_stable(name: str) -> None:
    case = DOC_CASES[name]
    if "error" in case:
        return
    doc = parse_document(_raw("documents", name))
    rebuilt = doc.evolve()
    assert rebuilt.to_bytes() == canonical_json(json.loads(rebuilt.to_bytes()))
    assert rebuilt.evolve().to_bytes() == rebuilt.to_bytes()
    # Same value from the canonical bytes parses back to an equal document.
    again = parse_document(rebuilt.to_bytes())
    assert again.to_bytes() == rebuilt.to_bytes()
    assert type(again) is type(doc)


def test_unknown_manifest_fields_survive_byte_exact() -> None:
    raw = _raw("documents", "oci-manifest-annotated")
    doc = Manifest.from_bytes(raw)
    assert b"x-vendor-field" in doc.to_bytes()


@pytest.mark.parametrize(
    ("raw", "header", "message"),
    [
        (b"not json", None, "not valid JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
        (b'{"schemaVersion": 3, "config": {}, "layers": []}', None, "schemaVersion 3"),
        (b'{"schemaVersion": 2, "layers": []}', MediaType.OCI_MANIFEST, "no config"),
        (
            b'{"schemaVersion": 2, "config": {"mediaType": "x", "size": 1}, "layers": []}',
            None,
            "missing 'digest'",
        ),
        (
            b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "sha256:abc",'
            b' "size": 1}, "layers": []}',
            None,
            "invalid digest",
        ),
        (
            b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "'
            + str(D1).encode()
            + b'", "size": -1}, "layers": []}',
            None,
            "invalid descriptor size",
        ),
        (b'{"schemaVersion": 2, "manifests": {}}', None, "must be a list"),
        (b'{"schemaVersion": 2}', None, "neither an image manifest nor an index"),
        (
            b'{"schemaVersion": 2, "mediaType": "application/vnd.example+json"}',
            None,
            "unsupported document media type",
        ),
        (b'{"schemaVersion": 1, "fsLayers": []}', MediaType.DOCKER_SCHEMA1, "schema 1"),
    ],
)
def test_bad_documents_raise_clear_errors(raw: bytes, header: str | None, message: str) -> None:
    with pytest.raises(InvalidManifest) as info:
        parse_document(raw, header)
    assert message in str(info.value)


def test_schema1_error_is_unsupported_manifest() -> None:
    with pytest.raises(UnsupportedManifest, match="too old, unsupported"):
        Manifest.from_bytes(_raw("documents", "schema1-signed"))


def test_manifest_from_bytes_refuses_an_index() -> None:
    with pytest.raises(InvalidManifest, match="is an index"):
        Manifest.from_bytes(_raw("documents", "docker-manifest-list"))
    with pytest.raises(InvalidManifest, match="is a manifest"):
        Index.from_bytes(_raw("documents", "docker-v2s2-manifest"))


def test_built_manifest_is_canonical_and_deterministic() -> None:
    config = Descriptor(MediaType.OCI_CONFIG, D1, 10)
    layer = Descriptor(MediaType.OCI_LAYER_GZIP, D2, 20, annotations=(("a", "1"), ("b", "2")))
    m1 = Manifest.build(config=config, layers=[layer], annotations={"z": "1", "a": "2"})
    m2 = Manifest.build(config=config, layers=(layer,), annotations={"a": "2", "z": "1"})
    assert m1.to_bytes() == m2.to_bytes()
    assert m1.digest == m2.digest == Digest.of(m1.to_bytes())
    assert m1.to_bytes() == canonical_json(json.loads(m1.to_bytes()))
    assert json.loads(m1.to_bytes())["schemaVersion"] == 2
    # The exact encoding is part of the contract: digests of what we write must never drift.
    assert m1.to_bytes().startswith(b'{"annotations":{"a":"2","z":"1"},"config":{')
    parsed = Manifest.from_bytes(m1.to_bytes())
    assert parsed == m1
    desc = m1.descriptor(Platform("linux", "amd64"))
    assert (desc.digest, desc.size, desc.platform) == (
        m1.digest,
        len(m1.to_bytes()),
        Platform("linux", "amd64"),
    )


def test_build_rejects_wrong_media_types() -> None:
    config = Descriptor(MediaType.OCI_CONFIG, D1, 10)
    with pytest.raises(InvalidManifest):
        Manifest.build(config=config, layers=[], media_type=MediaType.OCI_INDEX)
    with pytest.raises(InvalidManifest):
        Index.build(manifests=[], media_type=MediaType.OCI_MANIFEST)


def test_evolve_drops_raw_and_reencodes() -> None:
    raw = _raw("documents", "docker-v2s2-manifest")
    doc = Manifest.from_bytes(raw)
    changed = doc.evolve(layers=doc.layers[:1])
    assert changed.to_bytes() != raw
    assert len(changed.layers) == 1
    assert changed.media_type == MediaType.DOCKER_MANIFEST


# -- platform selection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "want", "expected_digest_of"),
    [
        ("docker-manifest-list", "linux/amd64", "m-amd64"),
        ("docker-manifest-list", "linux/arm/v7", "m-armv7"),
        ("docker-manifest-list", "linux/arm/v6", "m-armv6"),
        ("docker-manifest-list", "linux/arm64", "m-arm64"),
        ("docker-manifest-list", "linux/aarch64", "m-arm64"),
        ("docker-manifest-list", "linux/arm64/v8", "m-arm64"),
        ("docker-manifest-list", "windows/amd64", "m-win"),
        ("oci-index-with-attestations", "linux/arm64", "o-arm64"),
        ("oci-index-with-attestations", "linux/amd64", "o-amd64"),
    ],
)
def test_index_select(document: str, want: str, expected_digest_of: str) -> None:
    index = Index.from_bytes(_raw("documents", document))
    chosen = index.select(Platform.parse(want))
    assert chosen.digest == Digest.of(expected_digest_of.encode())


@pytest.mark.parametrize(
    ("document", "want"),
    [
        ("docker-manifest-list", "linux/s390x"),
        ("docker-manifest-list", "linux/arm/v5"),
        ("oci-index-with-attestations", "unknown/unknown"),
    ],
)
def test_index_select_missing_names_available(document: str, want: str) -> None:
    index = Index.from_bytes(_raw("documents", document))
    with pytest.raises(PlatformNotFound) as info:
        index.select(Platform.parse(want))
    assert want in str(info.value)
    assert "linux/amd64" in str(info.value)
    assert "unknown/unknown" not in info.value.available


def test_index_build_round_trip() -> None:
    entries = [
        Descriptor(MediaType.OCI_MANIFEST, D1, 100, platform=Platform("linux", "amd64")),
        Descriptor(MediaType.OCI_MANIFEST, D2, 100, platform=Platform("linux", "arm64", "v8")),
    ]
    idx = Index.build(manifests=entries)
    assert Index.from_bytes(idx.to_bytes()) == idx
    assert idx.select(Platform.parse("linux/arm64")).digest == D2


# -- image configs ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIG_CASES))
def test_config_fixture(name: str) -> None:
    case = CONFIG_CASES[name]
    raw = _raw("configs", name)
    cfg = ImageConfig.from_bytes(raw)
    assert cfg.to_bytes() == raw
    assert cfg.digest == Digest.of(raw)
    assert str(cfg.platform) == case["platform"]
    cc = cfg.config
    assert cc.user == case["user"]
    assert list(cc.exposed_ports) == case["exposed_ports"]
    assert (list(cc.entrypoint) if cc.entrypoint is not None else None) == case["entrypoint"]
    assert (list(cc.cmd) if cc.cmd is not None else None) == case["cmd"]
    assert list(cc.volumes) == case["volumes"]
    assert cc.working_dir == case["working_dir"]
    assert cc.stop_signal == case["stop_signal"]
    assert (list(cc.shell) if cc.shell is not None else None) == case["shell"]
    assert list(cc.on_build) == case["on_build"]
    assert cc.args_escaped == case["args_escaped"]
    assert (cc.healthcheck.interval if cc.healthcheck else None) == case["healthcheck_interval"]
    assert len(cfg.history) == case["history"]
    assert sum(h.empty_layer for h in cfg.history) == case["empty_layers"]
    assert len(cfg.rootfs.diff_ids) == case["diff_ids"]
    assert [k for k, _ in cfg.extra] == case["extra"]
    assert set(case["config_extra"]) <= {k for k, _ in cc.extra}
    created = cfg.created_at
    assert (created.year if created else None) == case["created_year"]

    # Re-encoding (a derived config) keeps every member Docker or BuildKit wrote, except
    # container_config/container, which describe the base's last step.
    rebuilt = cfg.evolve()
    before = json.loads(raw)
    after = json.loads(rebuilt.to_bytes())
    before.pop("container_config", None)
    before.pop("container", None)
    assert _normalise(after) == _normalise(before)
    assert rebuilt.to_bytes() == canonical_json(after)
    assert ImageConfig.from_bytes(rebuilt.to_bytes()) == rebuilt


def _normalise(obj: Any) -> Any:
    """Drop null/false/empty members, which the encoder omits (Docker treats them as unset)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            v = _normalise(v)
            if v in (None, False, "", {}) and k not in ("Cmd", "Entrypoint"):
                continue
            if k in ("Cmd", "Entrypoint") and v is None:
                continue
            out[k] = v
        return out
    if isinstance(obj, list):
        return [_normalise(v) for v in obj]
    return obj


def test_config_null_entrypoint_differs_from_empty_cmd() -> None:
    cfg = ImageConfig.from_bytes(_raw("configs", "null-entrypoint-empty-cmd"))
    assert cfg.config.entrypoint is None
    assert cfg.config.cmd == ()
    out = json.loads(cfg.evolve().to_bytes())
    assert out["config"] == {"Cmd": []}


def test_built_config_is_stable_and_canonical() -> None:
    def make() -> ImageConfig:
        return (
            ImageConfig(architecture="amd64", os="linux", created="2024-01-01T00:00:00Z")
            .with_container_config(env=("PATH=/bin",), cmd=("sh",), exposed_ports=("80/tcp",))
            .with_layer(D1, created_by="COPY . /app", comment="buildkit.dockerfile.v0")
            .with_history(created_by='CMD ["sh"]')
        )

    a, b = make(), make()
    assert a.to_bytes() == b.to_bytes()
    assert a.digest == b.digest
    assert a.to_bytes() == canonical_json(json.loads(a.to_bytes()))
    doc = json.loads(a.to_bytes())
    assert doc["rootfs"] == {"type": "layers", "diff_ids": [str(D1)]}
    assert doc["history"][1] == {"created_by": 'CMD ["sh"]', "empty_layer": True}
    assert doc["config"]["ExposedPorts"] == {"80/tcp": {}}
    assert a.layer_history()[0] == History(
        created_by="COPY . /app", comment="buildkit.dockerfile.v0"
    )


def test_container_config_helpers() -> None:
    cc = ContainerConfig(env=("PATH=/bin", "A=1"))
    cc2 = cc.with_env("PATH", "/usr/bin:/bin").with_env("B", "2")
    assert cc2.env == ("PATH=/usr/bin:/bin", "A=1", "B=2")
    assert cc2.env_dict() == {"PATH": "/usr/bin:/bin", "A": "1", "B": "2"}
    assert cc.env == ("PATH=/bin", "A=1")  # immutable
    labelled = cc.with_labels({"b": "2"}).with_labels({"a": "1", "b": "3"})
    assert labelled.label_dict() == {"a": "1", "b": "3"}
    ports = cc.evolve(exposed_ports=["80/tcp", "443/tcp", "80/tcp"])
    assert ports.exposed_ports == ("443/tcp", "80/tcp")


def test_healthcheck_round_trip() -> None:
    hc = Healthcheck(test=("CMD", "true"), interval=10**9, retries=2)
    assert Healthcheck.from_json(hc.to_json()) == hc
    assert hc.to_json() == {"Test": ["CMD", "true"], "Interval": 10**9, "Retries": 2}


def test_config_with_history_keeps_rootfs() -> None:
    cfg = ImageConfig(rootfs=RootFS(diff_ids=(D1,)))
    assert cfg.with_history(created_by="ENV A=1").rootfs.diff_ids == (D1,)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"config": {"Env": "A=1 B=2"}}', None),  # a bare string is read as one entry
        (b'{"config": {"Env": [1]}}', "config.Env must be a list of strings"),
        (b'{"config": {"User": 0}}', "config.User must be a string"),
        (b'{"rootfs": {"diff_ids": ["nope"]}}', "rootfs.diff_ids"),
        (b'{"history": {}}', "history must be a list"),
        (b'{"config": {"Healthcheck": {"Test": ["NONE"], "Interval": "1s"}}}', "Interval"),
    ],
)
def test_bad_configs(raw: bytes, message: str | None) -> None:
    if message is None:
        assert ImageConfig.from_bytes(raw).config.env == ("A=1 B=2",)
        return
    with pytest.raises(InvalidManifest) as info:
        ImageConfig.from_bytes(raw)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("2023-11-01T12:34:56.123456789Z", "2023-11-01T12:34:56.123456+00:00"),
        ("2023-11-01T12:34:56Z", "2023-11-01T12:34:56+00:00"),
        ("2023-11-01T12:34:56.4+02:00", "2023-11-01T12:34:56.400000+02:00"),
        ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00+00:00"),
    ],
)
def test_parse_created(text: str, iso: str) -> None:
    parsed = parse_created(text)
    assert parsed is not None and parsed.isoformat() == iso


def test_parse_created_rejects_garbage_quietly() -> None:
    assert parse_created("yesterday") is None
    assert parse_created(None) is None


def test_format_created_round_trip() -> None:
    when = parse_created("2023-11-01T12:34:56.5Z")
    assert when is not None
    assert format_created(when) == "2023-11-01T12:34:56.5Z"


# -- properties: whatever we build encodes canonically and round-trips byte for byte -------


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_digests = st.binary(max_size=8).map(Digest.of)
_str_lists = st.lists(_text, max_size=4).map(tuple)


@st.composite
def container_configs(draw: st.DrawFn) -> ContainerConfig:
    return ContainerConfig(
        user=draw(_text),
        exposed_ports=tuple(sorted(draw(st.sets(st.sampled_from(["80/tcp", "53/udp", "443"]))))),
        env=tuple(f"{k}={v}" for k, v in draw(st.lists(st.tuples(_text, _text), max_size=3))),
        entrypoint=draw(st.none() | _str_lists),
        cmd=draw(st.none() | _str_lists),
        volumes=tuple(sorted(draw(st.sets(_text.map(lambda t: "/" + t), max_size=2)))),
        working_dir=draw(_text),
        labels=tuple(sorted(draw(st.dictionaries(_text, _text, max_size=3)).items())),
        stop_signal=draw(st.sampled_from(["", "SIGTERM", "SIGQUIT"])),
        shell=draw(st.none() | _str_lists),
        healthcheck=draw(
            st.none()
            | st.builds(
                Healthcheck,
                test=_str_lists,
                interval=st.integers(0, 10**12),
                retries=st.integers(0, 10),
            )
        ),
        on_build=draw(_str_lists),
        args_escaped=draw(st.booleans()),
    )


@st.composite
def image_configs(draw: st.DrawFn) -> ImageConfig:
    cfg = ImageConfig(
        architecture=draw(st.sampled_from(["amd64", "arm64", "s390x"])),
        os="linux",
        variant=draw(st.none() | st.just("v8")),
        created=draw(st.none() | st.just("2024-01-01T00:00:00Z")),
        author=draw(st.none() | _text),
        config=draw(container_configs()),
    )
    for diff_id in draw(st.lists(_digests, max_size=3)):
        cfg = cfg.with_layer(diff_id, created_by=draw(_text), comment=draw(st.none() | _text))
        if draw(st.booleans()):
            cfg = cfg.with_history(created_by=draw(_text))
    return cfg


@settings(max_examples=150, deadline=None)
@given(image_configs())
def test_built_configs_round_trip_byte_for_byte(cfg: ImageConfig) -> None:
    raw = cfg.to_bytes()
    assert raw == canonical_json(json.loads(raw))
    again = ImageConfig.from_bytes(raw)
    assert again == cfg
    assert again.to_bytes() == raw
    assert again.evolve().to_bytes() == raw
    assert again.digest == cfg.digest


_descriptors = st.builds(
    Descriptor,
    media_type=st.sampled_from(sorted(MediaType.LAYERS)),
    digest=_digests,
    size=st.integers(0, 2**40),
    annotations=st.dictionaries(_text, _text, max_size=2).map(lambda d: tuple(sorted(d.items()))),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(_descriptors, max_size=5),
    st.dictionaries(_text, _text, max_size=3),
    st.sampled_from(sorted(MediaType.MANIFESTS)),
)
def test_built_manifests_round_trip_byte_for_byte(
    layers: list[Descriptor], annotations: dict[str, str], media_type: str
) -> None:
    config = Descriptor(MediaType.OCI_CONFIG, D1, 100)
    m = Manifest.build(config=config, layers=layers, annotations=annotations, media_type=media_type)
    raw = m.to_bytes()
    assert raw == canonical_json(json.loads(raw))
    parsed = parse_document(raw)
    assert parsed == m
    assert isinstance(parsed, Manifest) and parsed.evolve().to_bytes() == raw
    idx = Index.build(manifests=[m.descriptor(Platform("linux", "amd64"))])
    assert Index.from_bytes(idx.to_bytes()) == idx
