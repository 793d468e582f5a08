"""HTTP to one registry: TLS and insecure hosts, retries with backoff, redirects, errors.

One pooled ``httpx.Client`` per registry host (HTTP/1.1 keep-alive), shared by all worker
threads. The scheme is decided once, on the first request, the way Docker does it: HTTPS
first; plain HTTP only for hosts the user marked insecure (``--insecure-registry``,
``$PYBUILD_INSECURE_REGISTRIES``, ``insecure-registries`` in Docker's daemon.json,
``insecure = true`` in containers' registries.conf) and for loopback addresses
(``localhost``, ``127.0.0.0/8``, ``::1``; asked over HTTP first, as local registries mostly
are), and only when the server does not speak TLS.
Unlike Docker, loopback hosts keep certificate verification (a CA in certs.d makes a
self-signed local registry work); only hosts marked insecure skip it. Extra CAs and client
certificates come from ``certs.d`` directories (Docker's and containers' layout).

Connection failures, resets, 5xx and 429 are retried with capped exponential backoff and
full jitter, bounded in count and in total time; ``Retry-After`` is honoured. Requests
whose body cannot be replayed, or whose repetition would be unsafe (a PATCH or a blob PUT
that may have reached the server), are not retried here: the push code asks the upload
session where it stands instead. Every message has URLs and credentials redacted.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import ssl
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import httpx

from registry.errors import (
    AuthenticationError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ResponseError,
    TransportError,
    redact,
    redact_url,
)

if TYPE_CHECKING:
    from registry.auth import Authenticator

log = logging.getLogger("pybuild.registry")


class _RedactingFilter(logging.Filter):
    """httpx logs every request URL at INFO; signed storage URLs must not reach a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def _redact_arg(value: object) -> object:
    if isinstance(value, httpx.URL) or (isinstance(value, str) and "://" in value):
        return redact_url(str(value))
    return value


logging.getLogger("httpx").addFilter(_RedactingFilter())

DEFAULT_CERTS_DIRS = ("/etc/docker/certs.d", "/etc/containers/certs.d")
ENV_CERTS_D = "PYBUILD_CERTS_D"
ENV_INSECURE = "PYBUILD_INSECURE_REGISTRIES"
ENV_RETRY_BASE = "PYBUILD_RETRY_BASE_DELAY"
ENV_RETRY_ATTEMPTS = "PYBUILD_RETRY_ATTEMPTS"
ENV_TIMEOUT = "PYBUILD_REGISTRY_TIMEOUT"
# Where Docker and podman users already declare insecure registries; overridable for tests.
ENV_DAEMON_JSON = "PYBUILD_DOCKER_DAEMON_JSON"
ENV_REGISTRIES_CONF = "PYBUILD_REGISTRIES_CONF"
DAEMON_JSON = "/etc/docker/daemon.json"
REGISTRIES_CONF = "/etc/containers/registries.conf"
USER_AGENT = "pybuild/0.1 (+https://github.com/pybuild)"

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
Body = bytes | Callable[[], Iterable[bytes]] | None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry: capped exponential backoff with full jitter."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 10.0
    total: float = 120.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        policy = cls()
        if base := os.environ.get(ENV_RETRY_BASE):
            policy = cls(policy.attempts, float(base), max(float(base) * 20, 0.01), policy.total)
        if attempts := os.environ.get(ENV_RETRY_ATTEMPTS):
            policy = cls(int(attempts), policy.base_delay, policy.max_delay, policy.total)
        return policy

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to sleep before retry number ``attempt`` (1-based)."""
        if retry_after is not None:
            # Honour the server's wish, within the total time budget.
            return min(max(retry_after, 0.0), self.total)
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return random.uniform(ceiling / 2, ceiling)


def configured_insecure() -> list[str]:
    """Insecure registries from Docker's daemon.json and containers' registries.conf(.d)."""
    out: list[str] = []
    daemon = Path(os.environ.get(ENV_DAEMON_JSON) or DAEMON_JSON)
    try:
        doc = json.loads(daemon.read_text(encoding="utf-8"))
        out.extend(str(h) for h in doc.get("insecure-registries") or [])
    except (OSError, ValueError, AttributeError):
        pass
    conf = Path(os.environ.get(ENV_REGISTRIES_CONF) or REGISTRIES_CONF)
    files = [conf, *sorted(conf.with_suffix(".conf.d").glob("*.conf"))]
    for path in files:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for entry in data.get("registry") or []:
            if isinstance(entry, dict) and entry.get("insecure") is True:
                location = str(entry.get("location") or entry.get("prefix") or "")
                if location:
                    out.append(location.split("/", 1)[0])
    return out


def _env_list(name: str) -> list[str]:
    return [p.strip() for p in os.environ.get(name, "").replace(";", ",").split(",") if p.strip()]


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (with or without a port)."""
    name = host
    if name.startswith("["):
        name = name[1 : name.find("]")]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(slots=True)
class TransportOptions:
    """Settings shared by every registry connection of one command."""

    insecure: frozenset[str] = frozenset()
    certs_dirs: tuple[Path, ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float = 60.0
    connect_timeout: float = 15.0
    max_connections: int = 16

    @classmethod
    def from_env(cls, insecure: Iterable[str] = ()) -> TransportOptions:
        # PYBUILD_CERTS_D replaces the system certs.d bases (os.pathsep-separated).
        env_dirs = os.environ.get(ENV_CERTS_D)
        bases = DEFAULT_CERTS_DIRS if env_dirs is None else env_dirs.split(os.pathsep)
        certs = tuple(Path(d) for d in bases if d)
        timeout = float(os.environ.get(ENV_TIMEOUT) or 60.0)
        return cls(
            insecure=frozenset([*insecure, *_env_list(ENV_INSECURE), *configured_insecure()]),
            certs_dirs=certs,
            retry=RetryPolicy.from_env(),
            timeout=timeout,
            connect_timeout=min(15.0, timeout),
        )

    def is_insecure(self, host: str) -> bool:
        bare = host.split(":", 1)[0] if not host.startswith("[") else host
        return host in self.insecure or bare in self.insecure


def _host_dir_names(host: str) -> list[str]:
    names = [host]
    if ":" in host and not host.startswith("["):
        names.append(host.replace(":", "_"))  # some tools name the dir host_port
    return names


def tls_context(host: str, options: TransportOptions, *, verify: bool) -> ssl.SSLContext:
    """A client TLS context: system CAs plus certs.d CAs; client certificate if present."""
    if verify:
        ctx = ssl.create_default_context()
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    for base in options.certs_dirs:
        for name in _host_dir_names(host):
            d = base / name
            if not d.is_dir():
                continue
            for entry in sorted(d.iterdir()):
                if entry.suffix == ".crt" and verify:
                    ctx.load_verify_locations(cafile=str(entry))
                elif entry.suffix == ".cert":
                    key = entry.with_suffix(".key")
                    if not key.exists():
                        raise TransportError(
                            f"client certificate {entry} has no matching key {key.name}"
                        )
                    ctx.load_cert_chain(str(entry), str(key))
    return ctx


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(
    response: httpx.Response, *, what: str = "", hint: str = "", body: bytes | None = None
) -> ResponseError:
    """Turn an error response (status, distribution error body) into a typed exception."""
    status = response.status_code
    method = response.request.method
    url = str(response.request.url)
    codes: list[str] = []
    messages: list[str] = []
    details: list[str] = []
    raw = body
    if raw is None:
        try:
            raw = response.read()
        except httpx.HTTPError:
            raw = b""
    try:
        doc = json.loads(raw or b"{}")
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        for err in doc.get("errors") or []:
            if not isinstance(err, dict):
                continue
            code = str(err.get("code") or "").upper()
            if code:
                codes.append(code)
            if err.get("message"):
                messages.append(str(err["message"]))
            if err.get("detail"):
                details.append(json.dumps(err["detail"], sort_keys=True)[:300])
    reason = "; ".join(messages) or response.reason_phrase or f"HTTP {status}"
    label = codes[0].lower() if codes else f"HTTP {status}"
    message = f"{label}: {reason}"
    if codes and status >= 500:
        message += f" [HTTP {status}]"
    if what:
        message += f" ({what})"
    if hint:
        message += f" — {hint}"
    kw: dict[str, Any] = {
        "status": status,
        "codes": tuple(codes),
        "details": tuple(details),
        "method": method,
        "url": url,
    }
    if status == 429 or "TOOMANYREQUESTS" in codes:
        return RateLimited(
            message, retry_after=_parse_retry_after(response.headers.get("retry-after")), **kw
        )
    if status == 401 or "UNAUTHORIZED" in codes:
        return AuthenticationError(message, **kw)
    if status == 403 or "DENIED" in codes:
        return PermissionDenied(message, **kw)
    if status == 404 or {"MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN"} & set(codes):
        return NotFound(message, **kw)
    return ResponseError(message, **kw)


def _describe(exc: httpx.HTTPError, host: str) -> str:
    kind = type(exc).__name__
    text = redact(str(exc)) or kind
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out talking to {host} ({kind})"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to {host}: {text}"
    return f"connection to {host} failed: {text}"


def _is_tls_mismatch(exc: Exception) -> bool:
    """The server answered a TLS hello with plain HTTP (so it is an http:// registry)."""
    text = str(exc).lower()
    return any(
        s in text
        for s in (
            "wrong version number",
            "record layer failure",
            "http request",
            "unknown protocol",
        )
    )


def _is_unknown_host(exc: Exception) -> bool:
    """DNS says the name does not exist (EAI_NONAME), as opposed to a temporary failure."""
    text = str(exc).lower()
    return "name or service not known" in text or "nodename nor servname" in text


def _is_cert_error(exc: Exception) -> bool:
    return "certificate" in str(exc).lower()


class Transport:
    """HTTP(S) to one registry host, with auth, retries and redirect handling."""

    def __init__(
        self,
        host: str,
        *,
        options: TransportOptions | None = None,
        auth: Authenticator | None = None,
    ) -> None:
        self.host = host
        self.options = options or TransportOptions.from_env()
        self.auth = auth
        self.insecure = self.options.is_insecure(host)
        self.plain_http_allowed = self.insecure or is_loopback(host)
        self._scheme: str | None = None
        self._lock = threading.Lock()
        self._clients: dict[str, httpx.Client] = {}
        self._foreign: httpx.Client | None = None
        self.sleep: Callable[[float], None] = time.sleep

    # -- connections -------------------------------------------------------------------

    def _client(self, scheme: str) -> httpx.Client:
        with self._lock:
            client = self._clients.get(scheme)
            if client is None:
                verify: ssl.SSLContext | bool = False
                if scheme == "https":
                    verify = tls_context(self.host, self.options, verify=not self.insecure)
                client = httpx.Client(
                    verify=verify,
                    http1=True,
                    http2=False,
                    timeout=httpx.Timeout(
                        self.options.timeout, connect=self.options.connect_timeout
                    ),
                    limits=httpx.Limits(
                        max_connections=self.options.max_connections,
                        max_keepalive_connections=self.options.max_connections,
                    ),
                    headers={"User-Agent": USER_AGENT},
                    follow_redirects=False,
                    trust_env=True,
                )
                self._clients[scheme] = client
            return client

    def _foreign_client(self) -> httpx.Client:
        with self._lock:
            if self._foreign is None:
                self._foreign = httpx.Client(
                    timeout=httpx.Timeout(
                        self.options.timeout, connect=self.options.connect_timeout
                    ),
                    headers={"User-Agent": USER_AGENT},
                    follow_redirects=False,
                    trust_env=True,
                )
            return self._foreign

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
            if self._foreign is not None:
                self._foreign.close()
                self._foreign = None

    @property
    def scheme(self) -> str:
        """``https`` or ``http``, decided by pinging ``/v2/`` once."""
        if self._scheme is None:
            self._scheme = self._probe()
        return self._scheme

    def _probe(self) -> str:
        if is_loopback(self.host) and not self.insecure:
            # A local registry is usually plain HTTP: ask that first (no TLS set-up cost). A
            # registry answers /v2/ with 200 or 401; a TLS port answers plain HTTP with 400.
            try:
                answer = self._client("http").get(f"http://{self.host}/v2/")
                if answer.status_code in (200, 401):
                    return "http"
            except httpx.HTTPError:
                pass
        try:
            self._client("https").get(f"https://{self.host}/v2/").close()
            return "https"
        except httpx.HTTPError as e:
            if not self.plain_http_allowed:
                if _is_cert_error(e):
                    raise TransportError(
                        f"TLS certificate of {self.host} is not trusted: {e}. Put its CA "
                        f"certificate in /etc/docker/certs.d/{self.host}/ca.crt, or mark it "
                        f"insecure with --insecure-registry {self.host}"
                    ) from None
                if _is_tls_mismatch(e):
                    raise TransportError(
                        f"{self.host} does not speak HTTPS; mark it insecure with "
                        f"--insecure-registry {self.host} to use plain HTTP"
                    ) from None
                # Other failures (refused, timeout) are reported by the real request.
                return "https"
            if _is_cert_error(e) and not self.insecure:
                raise TransportError(
                    f"TLS certificate of {self.host} is not trusted: {e}. Put its CA "
                    f"certificate in a certs.d/{self.host}/ directory or use "
                    f"--insecure-registry {self.host}"
                ) from None
            try:
                answer = self._client("http").get(f"http://{self.host}/v2/")
            except httpx.HTTPError:
                return "https"
            if answer.status_code == 400 and b"HTTPS" in answer.content:
                # Go's TLS servers answer plain HTTP this way: the TLS failure is the news.
                raise TransportError(f"TLS connection to {self.host} failed: {e}") from None
            return "http"

    def url(self, path: str) -> str:
        """An absolute URL for ``path`` (``/v2/...``) or a registry-relative ``Location``."""
        if path.startswith(("http://", "https://")):
            return path
        return urljoin(f"{self.scheme}://{self.host}/", path)

    # -- requests ----------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        scopes: tuple[str, ...] = (),
        headers: Mapping[str, str] | None = None,
        params: dict[str, Any] | None = None,
        content: Body = None,
        stream: bool = False,
        retry: bool = True,
        follow_redirects: bool = True,
        ok: Iterable[int] = (200,),
        what: str = "",
        hint: str = "",
        trusted: bool = True,
    ) -> httpx.Response:
        """Send one API request; return the response when its status is in ``ok``.

        ``scopes`` are the token scopes the request needs. With ``stream`` the caller must
        close the response. Other statuses raise typed :class:`ResponseError` subclasses.
        ``trusted=False`` marks a URL from a document (a foreign layer's ``urls``): it gets
        no registry credentials unless it is on the registry's own host.
        """
        ok_set = frozenset(ok)
        policy = self.options.retry
        started = time.monotonic()
        attempt = 0
        auth_rounds = 0
        url = self.url(path)
        while True:
            attempt += 1
            try:
                response = self._send(
                    method,
                    url,
                    scopes=scopes,
                    headers=headers,
                    params=params,
                    content=content,
                    stream=stream,
                    follow_redirects=follow_redirects,
                    trusted=trusted,
                )
            except httpx.HTTPError as e:
                error = TransportError(_describe(e, self.host))
                if _is_unknown_host(e):
                    error.retryable = False  # a name that does not resolve will not start to
                if not retry or not error.retryable or not self._may_retry(attempt, started, None):
                    raise error from None
                delay = policy.delay(attempt)
                log.info("retrying %s %s in %.2fs: %s", method, redact_url(url), delay, error)
                self.sleep(delay)
                continue
            status = response.status_code
            if status in ok_set:
                return response
            # Two rounds: the first learns the challenge (or replaces an expired token); the
            # second covers a token that was already stale when it arrived.
            # (Never for untrusted URLs: a foreign server must not make us fetch tokens.)
            if status == 401 and self.auth is not None and trusted and auth_rounds < 2:
                challenge = response.headers.get("www-authenticate", "")
                _drain(response)
                if challenge and self.auth.handle_challenge(challenge, scopes, self):
                    auth_rounds += 1
                    attempt -= 1
                    continue
                body = b""
            else:
                body = _drain(response)
            err = error_from_response(
                response, what=what or f"{method} {redact_url(url)}", hint=hint, body=body
            )
            if status == 401 and self.auth is not None and trusted:
                err = self.auth.explain(err, scopes)
            retry_after = (
                err.retry_after
                if isinstance(err, RateLimited)
                else _parse_retry_after(response.headers.get("retry-after"))
            )
            if (
                retry
                and (status in RETRY_STATUSES)
                and self._may_retry(attempt, started, retry_after)
            ):
                delay = policy.delay(attempt, retry_after)
                log.info("retrying %s %s in %.2fs: %s", method, redact_url(url), delay, err)
                self.sleep(delay)
                continue
            raise err

    def _may_retry(self, attempt: int, started: float, retry_after: float | None) -> bool:
        policy = self.options.retry
        if attempt >= policy.attempts:
            return False
        wait = policy.delay(attempt, retry_after) if retry_after is not None else 0.0
        return time.monotonic() - started + wait < policy.total

    def _send(
        self,
        method: str,
        url: str,
        *,
        scopes: tuple[str, ...],
        headers: Mapping[str, str] | None,
        params: dict[str, Any] | None,
        content: Body,
        stream: bool,
        follow_redirects: bool,
        trusted: bool,
    ) -> httpx.Response:
        hdrs = dict(headers or {})
        # A URL the registry did not hand us (a foreign layer's ``urls``) on another host never
        # gets registry credentials; upload Locations on another host are the registry's own.
        foreign = not trusted and urlsplit(url).netloc != self.host
        if self.auth is not None and not foreign:
            value = self.auth.header(scopes, self)
            if value:
                hdrs["Authorization"] = value
        body = content() if callable(content) else content
        client = (
            self._foreign_client() if foreign else self._client(urlsplit(url).scheme or self.scheme)
        )
        request = client.build_request(method, url, headers=hdrs, params=params, content=body)
        response = client.send(request, stream=True)
        hops = 0
        while (
            follow_redirects
            and method in ("GET", "HEAD")
            and response.status_code in (301, 302, 303, 307, 308)
            and "location" in response.headers
            and hops < 10
        ):
            hops += 1
            target = urljoin(str(response.url), response.headers["location"])
            _drain(response)
            same_origin = urlsplit(target).netloc == self.host
            redirect_headers = {
                k: v for k, v in hdrs.items() if k.lower() != "authorization" or same_origin
            }
            if not same_origin:
                # Blob storage (S3, GCS, a CDN): no registry credentials, no API headers.
                redirect_headers.pop("Accept", None)
                next_client = self._foreign_client()
            else:
                next_client = self._client(urlsplit(target).scheme)
            request = next_client.build_request(method, target, headers=redirect_headers)
            response = next_client.send(request, stream=True)
        if not stream:
            try:
                response.read()
            finally:
                response.close()
        return response

    def iter_body(self, response: httpx.Response, chunk: int = 1 << 20) -> Iterator[bytes]:
        """Iterate a streamed body; transport failures become :class:`TransportError`."""
        try:
            yield from response.iter_raw(chunk)
        except httpx.HTTPError as e:
            raise TransportError(_describe(e, self.host)) from None


def _drain(response: httpx.Response) -> bytes:
    try:
        return response.read()
    except httpx.HTTPError:
        return b""
    finally:
        response.close()
