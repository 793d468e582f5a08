"""Image manifests and indexes (OCI image spec, Docker manifest v2 schema 2 and lists).

Digests are taken over bytes, so a document read from elsewhere keeps its original bytes
(``to_bytes()`` returns them exactly, unknown fields included); a document we build is
encoded with :func:`canonical_json`, so the same value always gives the same digest.
Docker schema 1 is refused with a clear message rather than half supported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from layerstore.canonicaljson import canonical_json
from layerstore.descriptor import Descriptor, MediaType, Platform
from layerstore.digest import Digest
from layerstore.errors import InvalidManifest, PlatformNotFound, UnsupportedManifest

Annotations = tuple[tuple[str, str], ...]

# Docker writes attestation manifests into indexes as unknown/unknown platforms.
_ATTESTATION_TYPE_KEY = "vnd.docker.reference.type"


def _annotations(value: dict[str, str] | Annotations | None) -> Annotations:
    if not value:
        return ()
    items = value.items() if isinstance(value, dict) else value
    return tuple(sorted((str(k), str(v)) for k, v in items))


def _load_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidManifest(f"{what} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise InvalidManifest(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _schema1_error(where: str) -> UnsupportedManifest:
    return UnsupportedManifest(
        f"{where} is a Docker image manifest schema 1 document: too old, unsupported; "
        "re-push the image with a current tool (schema 2 or OCI)"
    )


def _check_common(obj: dict[str, Any], media_type: str | None, what: str) -> None:
    if obj.get("schemaVersion") == 1 or media_type in MediaType.SCHEMA1 or "fsLayers" in obj:
        raise _schema1_error(what)
    version = obj.get("schemaVersion")
    if version != 2:
        raise InvalidManifest(f"{what}: unsupported schemaVersion {version!r} (expected 2)")


def _descriptor(obj: Any, where: str) -> Descriptor:
    try:
        return Descriptor.from_json(obj)
    except InvalidManifest as e:
        raise InvalidManifest(f"{where}: {e}") from None
    except ValueError as e:  # InvalidDigest
        raise InvalidManifest(f"{where}: {e}") from None


def _kind_of(obj: dict[str, Any], media_type: str | None) -> str:
    """``"manifest"`` or ``"index"`` from the document's mediaType, the header, or its shape."""
    declared = obj.get("mediaType")
    for mt in (declared, media_type):
        if not isinstance(mt, str) or not mt:
            continue
        if mt in MediaType.SCHEMA1:
            raise _schema1_error("the document")
        if MediaType.is_manifest(mt):
            return "manifest"
        if MediaType.is_index(mt):
            return "index"
    if obj.get("schemaVersion") == 1 or "fsLayers" in obj:
        raise _schema1_error("the document")
    if "manifests" in obj:
        return "index"
    if "config" in obj or "layers" in obj:
        return "manifest"
    mt = declared or media_type
    if mt:
        raise UnsupportedManifest(f"unsupported document media type {mt!r}")
    raise InvalidManifest("document is neither an image manifest nor an index")


@dataclass(frozen=True)
class Manifest:
    """An image manifest: a config descriptor and an ordered list of layer descriptors."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Annotations = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None
    raw: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if not self.raw:
            object.__setattr__(self, "raw", canonical_json(self.to_json()))

    @classmethod
    def build(
        cls,
        *,
        config: Descriptor,
        layers: list[Descriptor] | tuple[Descriptor, ...],
        media_type: str = MediaType.OCI_MANIFEST,
        annotations: dict[str, str] | Annotations | None = None,
        subject: Descriptor | None = None,
        artifact_type: str | None = None,
    ) -> Manifest:
        """A new manifest encoded canonically."""
        if not MediaType.is_manifest(media_type):
            raise InvalidManifest(f"{media_type!r} is not an image manifest media type")
        return cls(
            media_type=media_type,
            config=config,
            layers=tuple(layers),
            annotations=_annotations(annotations),
            subject=subject,
            artifact_type=artifact_type,
        )

    @classmethod
    def from_bytes(cls, raw: bytes, media_type: str | None = None) -> Manifest:
        """Parse a manifest read from elsewhere; its bytes are kept exactly."""
        obj = _load_object(raw, "image manifest")
        _check_common(obj, media_type, "image manifest")
        kind = _kind_of(obj, media_type)
        if kind != "manifest":
            raise InvalidManifest("expected an image manifest but the document is an index")
        mt = obj.get("mediaType") or media_type or MediaType.OCI_MANIFEST
        if "config" not in obj:
            raise InvalidManifest("image manifest has no config descriptor")
        layers = obj.get("layers")
        if layers is None:
            layers = []
        if not isinstance(layers, list):
            raise InvalidManifest("image manifest 'layers' must be a list")
        ann = obj.get("annotations")
        if ann is not None and not isinstance(ann, dict):
            raise InvalidManifest("image manifest 'annotations' must be an object")
        return cls(
            media_type=str(mt),
            config=_descriptor(obj["config"], "image manifest config"),
            layers=tuple(_descriptor(d, f"image manifest layer {i}") for i, d in enumerate(layers)),
            annotations=_annotations(ann),
            subject=_descriptor(obj["subject"], "image manifest subject")
            if obj.get("subject")
            else None,
            artifact_type=obj.get("artifactType") or None,
            raw=bytes(raw),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.subject is not None:
            out["subject"] = self.subject.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    def to_bytes(self) -> bytes:
        return self.raw

    @cached_property
    def digest(self) -> Digest:
        return Digest.of(self.raw)

    def descriptor(
        self,
        platform: Platform | None = None,
        annotations: dict[str, str] | Annotations | None = None,
    ) -> Descriptor:
        return Descriptor(
            media_type=self.media_type,
            digest=self.digest,
            size=len(self.raw),
            platform=platform,
            annotations=_annotations(annotations),
            artifact_type=self.artifact_type,
        )

    def evolve(self, **changes: Any) -> Manifest:
        """A copy with ``changes`` applied, re-encoded canonically (the raw bytes are dropped)."""
        values: dict[str, Any] = {
            "media_type": self.media_type,
            "config": self.config,
            "layers": self.layers,
            "annotations": self.annotations,
            "subject": self.subject,
            "artifact_type": self.artifact_type,
        }
        values.update(changes)
        values["layers"] = tuple(values["layers"])
        values["annotations"] = _annotations(values["annotations"])
        return Manifest(**values)

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)

    @property
    def size(self) -> int:
        """Config plus layer sizes (what ``docker images`` reports for a pulled image)."""
        return self.config.size + sum(layer.size for layer in self.layers)


@dataclass(frozen=True)
class Index:
    """An image index (OCI) or manifest list (Docker): one manifest per platform."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Annotations = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None
    raw: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if not self.raw:
            object.__setattr__(self, "raw", canonical_json(self.to_json()))

    @classmethod
    def build(
        cls,
        *,
        manifests: list[Descriptor] | tuple[Descriptor, ...],
        media_type: str = MediaType.OCI_INDEX,
        annotations: dict[str, str] | Annotations | None = None,
        subject: Descriptor | None = None,
        artifact_type: str | None = None,
    ) -> Index:
        if not MediaType.is_index(media_type):
            raise InvalidManifest(f"{media_type!r} is not an image index media type")
        return cls(
            media_type=media_type,
            manifests=tuple(manifests),
            annotations=_annotations(annotations),
            subject=subject,
            artifact_type=artifact_type,
        )

    @classmethod
    def from_bytes(cls, raw: bytes, media_type: str | None = None) -> Index:
        obj = _load_object(raw, "image index")
        _check_common(obj, media_type, "image index")
        if _kind_of(obj, media_type) != "index":
            raise InvalidManifest("expected an image index but the document is a manifest")
        mt = obj.get("mediaType") or media_type or MediaType.OCI_INDEX
        entries = obj.get("manifests")
        if not isinstance(entries, list):
            raise InvalidManifest("image index 'manifests' must be a list")
        ann = obj.get("annotations")
        if ann is not None and not isinstance(ann, dict):
            raise InvalidManifest("image index 'annotations' must be an object")
        return cls(
            media_type=str(mt),
            manifests=tuple(
                _descriptor(d, f"image index entry {i}") for i, d in enumerate(entries)
            ),
            annotations=_annotations(ann),
            subject=_descriptor(obj["subject"], "image index subject")
            if obj.get("subject")
            else None,
            artifact_type=obj.get("artifactType") or None,
            raw=bytes(raw),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "manifests": [m.to_json() for m in self.manifests],
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.subject is not None:
            out["subject"] = self.subject.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    def to_bytes(self) -> bytes:
        return self.raw

    @cached_property
    def digest(self) -> Digest:
        return Digest.of(self.raw)

    def descriptor(
        self,
        platform: Platform | None = None,
        annotations: dict[str, str] | Annotations | None = None,
    ) -> Descriptor:
        return Descriptor(
            media_type=self.media_type,
            digest=self.digest,
            size=len(self.raw),
            platform=platform,
            annotations=_annotations(annotations),
            artifact_type=self.artifact_type,
        )

    def evolve(self, **changes: Any) -> Index:
        values: dict[str, Any] = {
            "media_type": self.media_type,
            "manifests": self.manifests,
            "annotations": self.annotations,
            "subject": self.subject,
            "artifact_type": self.artifact_type,
        }
        values.update(changes)
        values["manifests"] = tuple(values["manifests"])
        values["annotations"] = _annotations(values["annotations"])
        return Index(**values)

    def image_manifests(self) -> list[Descriptor]:
        """Entries that are runnable images (attestations and unknown platforms left out)."""
        out = []
        for d in self.manifests:
            if d.annotation(_ATTESTATION_TYPE_KEY) == "attestation-manifest":
                continue
            if d.platform is not None and d.platform.os == "unknown":
                continue
            out.append(d)
        return out

    def platforms(self) -> list[Platform]:
        return [d.platform for d in self.image_manifests() if d.platform is not None]

    def select(self, platform: Platform) -> Descriptor:
        """The entry for ``platform``: an exact variant match wins over a variant-less one.

        Raises :class:`PlatformNotFound` naming the platforms the index offers.
        """
        want = platform.normalized()
        candidates = [d for d in self.image_manifests() if d.platform is not None]
        exact = [
            d
            for d in candidates
            if d.platform is not None and d.platform.normalized() == want.normalized()
        ]
        if exact:
            return exact[0]
        compatible = [d for d in candidates if d.platform is not None and want.matches(d.platform)]
        if compatible:
            return compatible[0]
        raise PlatformNotFound(platform, [str(p) for p in self.platforms()])


def parse_document(raw: bytes, media_type: str | None = None) -> Manifest | Index:
    """Parse a manifest or index, telling which from mediaType, the header or the shape.

    ``media_type`` is the Content-Type a registry sent, if any. Docker schema 1 raises
    :class:`UnsupportedManifest`.
    """
    obj = _load_object(raw, "manifest document")
    if obj.get("schemaVersion") == 1 or media_type in MediaType.SCHEMA1 or "fsLayers" in obj:
        raise _schema1_error("the manifest")
    if _kind_of(obj, media_type) == "index":
        return Index.from_bytes(raw, media_type)
    return Manifest.from_bytes(raw, media_type)
