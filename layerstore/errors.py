"""Errors raised by the layerstore package.

Exception tree::

    StoreError                  anything the local store or a layer operation refuses
    ├── InvalidDigest           a string that is not ``sha256:<64 lowercase hex>`` (also a ValueError)
    ├── BlobNotFound            no blob under that digest in the store
    ├── DigestMismatch          content did not hash to the digest it was announced with
    ├── InvalidManifest         a manifest, index or config document that cannot be read
    │   └── UnsupportedManifest a document of a kind we refuse (schema1, unknown media type)
    ├── ImageNotFound           no local image under that name or digest
    ├── PlatformNotFound        an index has no manifest for the requested platform
    ├── UnsafePathError         an archive entry or copy that would write outside its root
    └── ArchiveError            a docker-archive / OCI archive that is malformed

Messages say what was wrong and, where it helps, what to do next.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every layerstore error."""


class InvalidDigest(StoreError, ValueError):
    """A digest string that does not parse."""


class BlobNotFound(StoreError, KeyError):
    """No blob with the given digest is in the store."""

    def __str__(self) -> str:  # KeyError would repr() the argument
        return str(self.args[0]) if self.args else "blob not found"


class DigestMismatch(StoreError):
    """Content hashed to another digest than expected."""

    def __init__(self, expected: object, actual: object, *, what: str = "blob") -> None:
        super().__init__(f"digest mismatch for {what}: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class InvalidManifest(StoreError):
    """A manifest, index or image config that cannot be parsed."""


class UnsupportedManifest(InvalidManifest):
    """A manifest kind pybuild deliberately does not handle (e.g. Docker schema1)."""


class ImageNotFound(StoreError, KeyError):
    """No local image with that name, tag or digest."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "image not found"


class UnsafePathError(StoreError):
    """A path that would resolve outside the directory it must stay in."""

    def __init__(self, entry: str, reason: str) -> None:
        super().__init__(f"unsafe path {entry!r}: {reason}")
        self.entry = entry
        self.reason = reason


class ArchiveError(StoreError):
    """A docker-archive or OCI archive that is malformed or incomplete."""


class PlatformNotFound(StoreError, LookupError):
    """An image index has no manifest for the requested platform."""

    def __init__(self, wanted: object, available: list[str]) -> None:
        have = ", ".join(available) if available else "none"
        super().__init__(
            f"no manifest for platform {wanted} in the image index (available: {have})"
        )
        self.wanted = wanted
        self.available = available
