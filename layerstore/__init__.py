"""layerstore: content-addressed OCI blobs, image documents, layers and the local image store.

Imports neither ``registry`` nor ``builder``.
"""

from layerstore.blobs import BlobStore, BlobWriter
from layerstore.config import ContainerConfig, Healthcheck, History, ImageConfig, RootFS
from layerstore.descriptor import Descriptor, MediaType, Platform
from layerstore.digest import Digest, Hasher
from layerstore.errors import (
    ArchiveError,
    BlobNotFound,
    DigestMismatch,
    ImageNotFound,
    InvalidDigest,
    InvalidManifest,
    PlatformNotFound,
    StoreError,
    UnsafePathError,
    UnsupportedManifest,
)
from layerstore.images import ImageRecord, ImageStore
from layerstore.manifest import Index, Manifest, parse_document
from layerstore.store import Store, default_root

__all__ = [
    "ArchiveError",
    "BlobNotFound",
    "BlobStore",
    "BlobWriter",
    "ContainerConfig",
    "Descriptor",
    "Digest",
    "DigestMismatch",
    "Hasher",
    "Healthcheck",
    "History",
    "ImageConfig",
    "ImageNotFound",
    "ImageRecord",
    "ImageStore",
    "Index",
    "InvalidDigest",
    "InvalidManifest",
    "Manifest",
    "MediaType",
    "Platform",
    "PlatformNotFound",
    "RootFS",
    "Store",
    "StoreError",
    "UnsafePathError",
    "UnsupportedManifest",
    "default_root",
    "parse_document",
]
