"""Errors raised by the registry client.

Exception tree::

    RegistryError
    ├── InvalidReference        an image reference that does not parse (also a ValueError)
    ├── TransportError          connect/read failures, resets, timeouts (retryable)
    └── ResponseError           an HTTP answer we cannot use (status + distribution error codes)
        ├── AuthenticationError 401: missing or wrong credentials
        ├── PermissionDenied    403 / DENIED
        ├── NotFound            404 / MANIFEST_UNKNOWN, BLOB_UNKNOWN, NAME_UNKNOWN
        ├── RateLimited         429 / TOOMANYREQUESTS (carries Retry-After)
        └── UnsupportedManifestKind  the registry served Docker schema 1 (too old)
    CredentialHelperError       a docker-credential-* helper is missing or failed

``retryable`` is a class/instance flag: transport errors, 5xx and 429 are retried by the
transport with backoff; everything else is reported at once.

Every message has URLs and credentials redacted.
"""

from __future__ import annotations

import re as _re


class RegistryError(Exception):
    """Base class of every registry client error."""


class InvalidReference(RegistryError, ValueError):
    """An image reference that does not follow the distribution reference grammar."""


# Distribution spec error codes (https://github.com/opencontainers/distribution-spec, "Error Codes").
ERROR_CODES = frozenset(
    {
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "BLOB_UPLOAD_UNKNOWN",
        "DIGEST_INVALID",
        "MANIFEST_BLOB_UNKNOWN",
        "MANIFEST_INVALID",
        "MANIFEST_UNKNOWN",
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "SIZE_INVALID",
        "UNAUTHORIZED",
        "DENIED",
        "UNSUPPORTED",
        "TOOMANYREQUESTS",
    }
)

_URL_USERINFO = _re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_SECRET_QUERY = _re.compile(
    r"(?i)([?&](?:access_token|token|password|signature|x-amz-signature|x-amz-credential|"
    r"x-amz-security-token|sig|se|sp|sv|code|refresh_token|_state|client_secret)=)[^&\s\"']+"
)
_AUTH_HEADER = _re.compile(r"(?i)\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+")


def redact(text: str) -> str:
    """Remove credentials from a message: URL userinfo, secret query values, auth headers."""
    text = _URL_USERINFO.sub(r"\g<scheme>***@", text)
    text = _SECRET_QUERY.sub(r"\1***", text)
    return _AUTH_HEADER.sub(r"\1 ***", text)


def redact_url(url: str) -> str:
    """A URL fit for messages: userinfo gone, query string values of secrets masked.

    Blob-storage redirects carry signed query strings (S3, GCS, Azure); the whole query is
    dropped for anything that is not the registry's own ``/v2/`` API.
    """
    url = _URL_USERINFO.sub(r"\g<scheme>", url)
    if "?" in url and "/v2/" not in url:
        return url.split("?", 1)[0] + "?…"
    return redact(url)


class TransportError(RegistryError):
    """The registry could not be reached or the connection broke (connect, reset, timeout)."""

    retryable = True

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class ResponseError(RegistryError):
    """An HTTP answer we cannot use; carries the status and the spec's error codes."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        codes: tuple[str, ...] = (),
        details: tuple[str, ...] = (),
        method: str = "",
        url: str = "",
    ) -> None:
        super().__init__(redact(message))
        self.status = status
        self.codes = codes
        self.details = details
        self.method = method
        self.url = redact_url(url)
        if status >= 500 or status == 429:
            self.retryable = True


class AuthenticationError(ResponseError):
    """401: credentials missing, wrong, or not accepted for this scope."""


class PermissionDenied(ResponseError):
    """403 or DENIED: authenticated but not allowed."""


class NotFound(ResponseError):
    """404 or MANIFEST_UNKNOWN / BLOB_UNKNOWN / NAME_UNKNOWN."""


class RateLimited(ResponseError):
    """429 or TOOMANYREQUESTS; ``retry_after`` is seconds the registry asked us to wait."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class UnsupportedManifestKind(ResponseError):
    """The registry served a manifest kind pybuild does not read (Docker schema 1)."""


class CredentialHelperError(RegistryError):
    """A ``docker-credential-*`` helper is missing or failed."""
