"""Errors raised by the registry client.

Exception tree::

    RegistryError
    ├── InvalidReference        an image reference that does not parse (also a ValueError)
    ├── TransportError          connect/read failures, resets, timeouts (retryable)
    └── ResponseError           an HTTP answer we cannot use (status + distribution error codes)
        ├── AuthenticationError 401: missing or wrong credentials
        ├── PermissionDenied    403 / DENIED
        ├── NotFound            404 / MANIFEST_UNKNOWN, BLOB_UNKNOWN, NAME_UNKNOWN
        └── RateLimited         429 / TOOMANYREQUESTS (carries Retry-After)

Every message has URLs and credentials redacted.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of every registry client error."""


class InvalidReference(RegistryError, ValueError):
    """An image reference that does not follow the distribution reference grammar."""
