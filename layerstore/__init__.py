"""layerstore: content-addressed OCI blobs, image documents, layers and the local image store.

Imports neither ``registry`` nor ``builder``.
"""

from layerstore.descriptor import Descriptor, MediaType, Platform
from layerstore.digest import Digest, Hasher
from layerstore.errors import (
    ArchiveError,
    BlobNotFound,
    DigestMismatch,
    ImageNotFound,
    InvalidDigest,
    InvalidManifest,
    StoreError,
    UnsafePathError,
    UnsupportedManifest,
)

__all__ = [
    "ArchiveError",
    "BlobNotFound",
    "Descriptor",
    "Digest",
    "DigestMismatch",
    "Hasher",
    "ImageNotFound",
    "InvalidDigest",
    "InvalidManifest",
    "MediaType",
    "Platform",
    "StoreError",
    "UnsafePathError",
    "UnsupportedManifest",
]
