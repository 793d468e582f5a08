"""The OCI vocabulary: media types, platforms and content descriptors.

Pure values, no I/O. Field names follow the OCI image spec (``mediaType``, ``digest``,
``size``, ``urls``, ``annotations``, ``platform``, ``artifactType``) when encoded.
"""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass, field
from typing import Any

from layerstore.digest import Digest
from layerstore.errors import InvalidManifest


class MediaType:
    """Media type constants (OCI image spec and Docker image manifest v2 schema 2)."""

    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    OCI_INDEX = "application/vnd.oci.image.index.v1+json"
    OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
    OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
    OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
    OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
    OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
    OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
    OCI_EMPTY = "application/vnd.oci.empty.v1+json"

    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
    DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
    DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
    DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
    DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

    MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
    INDEXES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
    CONFIGS = frozenset({OCI_CONFIG, DOCKER_CONFIG})
    SCHEMA1 = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
    FOREIGN_LAYERS = frozenset(
        {DOCKER_FOREIGN_LAYER, OCI_LAYER_NONDIST, OCI_LAYER_NONDIST_GZIP, OCI_LAYER_NONDIST_ZSTD}
    )
    LAYERS = frozenset(
        {
            OCI_LAYER,
            OCI_LAYER_GZIP,
            OCI_LAYER_ZSTD,
            DOCKER_LAYER,
            DOCKER_LAYER_GZIP,
            DOCKER_LAYER_ZSTD,
        }
        | FOREIGN_LAYERS
    )

    @staticmethod
    def is_manifest(mt: str) -> bool:
        return mt in MediaType.MANIFESTS

    @staticmethod
    def is_index(mt: str) -> bool:
        return mt in MediaType.INDEXES

    @staticmethod
    def is_layer(mt: str) -> bool:
        return mt in MediaType.LAYERS

    @staticmethod
    def is_foreign(mt: str) -> bool:
        return mt in MediaType.FOREIGN_LAYERS

    @staticmethod
    def compression(mt: str) -> str:
        """``"gzip"``, ``"zstd"`` or ``"none"`` for a layer media type."""
        if mt.endswith(("+gzip", ".gzip")):
            return "gzip"
        if mt.endswith(("+zstd", ".zstd")):
            return "zstd"
        return "none"


_ARCH_ALIASES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


@dataclass(frozen=True, slots=True)
class Platform:
    """An OS/architecture pair with optional variant, as in an OCI index entry."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch[/variant]`` (``linux/arm64/v8``); raises ValueError."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"invalid platform {text!r}: expected os/arch[/variant]")
        os_, arch = parts[0].lower(), parts[1].lower()
        arch = _ARCH_ALIASES.get(arch, arch)
        variant = parts[2].lower() if len(parts) == 3 else None
        return cls(os_, arch, variant)

    @classmethod
    def host(cls) -> Platform:
        """This machine's platform, normalised the way Go's GOARCH names it."""
        machine = _platform.machine().lower()
        arch = _ARCH_ALIASES.get(machine, machine)
        variant = None
        if arch == "arm64":
            variant = "v8"
        elif machine.startswith("armv7"):
            variant = "v7"
        elif machine.startswith("armv6"):
            variant = "v6"
        return cls("linux", arch, variant)

    def normalized(self) -> Platform:
        """Drop the defaulted variant (arm64 → v8) so equal platforms compare equal."""
        variant = self.variant
        if self.architecture == "arm64" and variant == "v8":
            variant = None
        return Platform(self.os, self.architecture, variant, self.os_version, self.os_features)

    def matches(self, other: Platform) -> bool:
        """True when ``other`` can run on this platform (variant must match when both set)."""
        a, b = self.normalized(), other.normalized()
        if (a.os, a.architecture) != (b.os, b.architecture):
            return False
        return a.variant is None or b.variant is None or a.variant == b.variant

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Platform:
        if not isinstance(obj, dict) or not isinstance(obj.get("os"), str):
            raise InvalidManifest(f"invalid platform object: {obj!r}")
        return cls(
            os=obj["os"],
            architecture=str(obj.get("architecture", "")),
            variant=obj.get("variant") or None,
            os_version=obj.get("os.version") or None,
            os_features=tuple(obj.get("os.features") or ()),
        )


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A reference to content: media type, digest and size (OCI image spec §descriptor)."""

    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()
    annotations: tuple[tuple[str, str], ...] = field(default=())
    platform: Platform | None = None
    artifact_type: str | None = None

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Descriptor:
        if not isinstance(obj, dict):
            raise InvalidManifest(f"invalid descriptor: {obj!r}")
        try:
            size = obj["size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidManifest(f"invalid descriptor size {size!r}")
            ann = obj.get("annotations") or {}
            return cls(
                media_type=str(obj.get("mediaType", "")),
                digest=Digest.parse(obj["digest"]),
                size=size,
                urls=tuple(obj.get("urls") or ()),
                annotations=tuple(sorted((str(k), str(v)) for k, v in ann.items())),
                platform=Platform.from_json(obj["platform"]) if obj.get("platform") else None,
                artifact_type=obj.get("artifactType") or None,
            )
        except KeyError as e:
            raise InvalidManifest(f"descriptor is missing {e.args[0]!r}: {obj!r}") from None
