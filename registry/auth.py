"""Registry credentials and authentication: config files, helpers, Basic and Bearer tokens.

Credentials are looked up the way Docker does: ``credHelpers[registry]`` in
``$DOCKER_CONFIG/config.json`` (or ``~/.docker/config.json``), then its ``credsStore``
helper, then its ``auths`` entry (base64 ``auth`` or ``identitytoken``); after Docker's file,
the containers auth file (``$REGISTRY_AUTH_FILE`` or ``$XDG_RUNTIME_DIR/containers/auth.json``)
as podman/skopeo write it. Helpers speak the ``docker-credential-<name> get|store|erase``
protocol (JSON on stdin/stdout).

Authentication follows the registry's ``WWW-Authenticate`` challenge: Basic sends the
credentials; Bearer fetches a token from the realm for the scopes a request needs
(``repository:NAME:pull``, ``pull,push`` for pushes, plus ``pull`` on the source of a
cross-repository mount), caches it per scope set until it expires, and fetches a new one on a
401 (tokens can expire mid-push). Identity (refresh) tokens use the OAuth2 POST form, falling
back to GET with Basic credentials when the token server does not implement it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from registry.errors import (
    AuthenticationError,
    CredentialHelperError,
    RegistryError,
    ResponseError,
    TransportError,
    redact,
)
from registry.reference import DOCKER_HUB

if TYPE_CHECKING:
    import httpx

    from registry.transport import Transport

DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
_HUB_KEYS = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
CLIENT_ID = "pybuild"
# Seconds before a token's announced expiry at which we stop using it (clock skew, latency).
_EXPIRY_MARGIN = 10.0
_DEFAULT_TOKEN_LIFETIME = 60.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """What we can authenticate with for one registry; all empty means anonymous."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""
    source: str = ""

    @property
    def anonymous(self) -> bool:
        return not (self.username or self.password or self.identity_token or self.registry_token)

    def __repr__(self) -> str:  # never print secrets
        return f"Credentials(username={self.username!r}, source={self.source!r})"


# -- credential storage ------------------------------------------------------------------


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def containers_auth_path() -> Path | None:
    if path := os.environ.get("REGISTRY_AUTH_FILE"):
        return Path(path)
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(runtime) / "containers" / "auth.json"
    return None


def config_key(registry: str) -> str:
    """The key Docker uses for a registry in ``auths`` and helper calls."""
    return DOCKER_HUB_CONFIG_KEY if registry == DOCKER_HUB else registry


def _normalise_key(key: str) -> str:
    host = key
    if "://" in host:
        host = urlsplit(host).netloc
    host = host.split("/", 1)[0]
    return DOCKER_HUB if host in _HUB_KEYS else host


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise RegistryError(f"cannot read {path}: {e.strerror}") from None
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise RegistryError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{path}: expected a JSON object")
    return doc


def _decode_auth(path: Path, key: str, entry: dict[str, Any]) -> Credentials | None:
    source = f"{path} ({key})"
    if token := entry.get("identitytoken"):
        return Credentials(
            username=str(entry.get("username", "")), identity_token=str(token), source=source
        )
    if token := entry.get("registrytoken"):
        return Credentials(registry_token=str(token), source=source)
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            raise RegistryError(f"{path}: 'auth' for {key!r} is not base64 user:password") from None
        return Credentials(username=user, password=password, source=source)
    if entry.get("username") and entry.get("password"):
        return Credentials(
            username=str(entry["username"]), password=str(entry["password"]), source=source
        )
    return None


def _lookup_auths(path: Path, doc: dict[str, Any], registry: str) -> Credentials | None:
    auths = doc.get("auths") or {}
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        if isinstance(entry, dict) and _normalise_key(str(key)) == registry:
            creds = _decode_auth(path, str(key), entry)
            if creds is not None:
                return creds
    return None


class CredentialHelper:
    """One ``docker-credential-<name>`` program."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.program = f"docker-credential-{name}"

    def _run(self, action: str, payload: str) -> str:
        exe = shutil.which(self.program)
        if exe is None:
            raise CredentialHelperError(
                f"credential helper {self.program} (configured in {docker_config_path()}) "
                "is not installed"
            )
        try:
            done = subprocess.run(
                [exe, action], input=payload, capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CredentialHelperError(f"{self.program} {action} failed: {e}") from None
        if done.returncode != 0:
            text = done.stdout.strip() or done.stderr.strip() or f"exit {done.returncode}"
            raise CredentialHelperError(f"{self.program} {action}: {redact(text)}")
        return done.stdout

    def get(self, server: str) -> Credentials | None:
        try:
            out = self._run("get", server)
        except CredentialHelperError as e:
            if "credentials not found" in str(e).lower():
                return None
            raise
        try:
            doc = json.loads(out)
        except ValueError:
            raise CredentialHelperError(f"{self.program} get: output is not JSON") from None
        user, secret = str(doc.get("Username", "")), str(doc.get("Secret", ""))
        if not secret:
            return None
        if user == "<token>":
            return Credentials(identity_token=secret, source=self.program)
        return Credentials(username=user, password=secret, source=self.program)

    def store(self, server: str, creds: Credentials) -> None:
        user, secret = creds.username, creds.password
        if creds.identity_token:
            user, secret = "<token>", creds.identity_token
        self._run("store", json.dumps({"ServerURL": server, "Username": user, "Secret": secret}))

    def erase(self, server: str) -> None:
        self._run("erase", server)


def _helper_for(doc: dict[str, Any], registry: str) -> CredentialHelper | None:
    helpers = doc.get("credHelpers") or {}
    if isinstance(helpers, dict):
        for key, name in helpers.items():
            if _normalise_key(str(key)) == registry and name:
                return CredentialHelper(str(name))
    if store := doc.get("credsStore"):
        return CredentialHelper(str(store))
    return None


def load_credentials(registry: str) -> Credentials:
    """Credentials for ``registry`` from the usual places (anonymous when none)."""
    path = docker_config_path()
    doc = _read_json(path)
    helper = _helper_for(doc, registry)
    if helper is not None:
        creds = helper.get(config_key(registry))
        if creds is not None:
            return creds
    creds = _lookup_auths(path, doc, registry)
    if creds is not None:
        return creds
    auth_file = containers_auth_path()
    if auth_file is not None:
        creds = _lookup_auths(auth_file, _read_json(auth_file), registry)
        if creds is not None:
            return creds
    return Credentials()


def _write_json_0600(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".json")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent="\t")
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def store_credentials(registry: str, creds: Credentials) -> str:
    """Save credentials where Docker would; returns a description of where."""
    path = docker_config_path()
    doc = _read_json(path)
    helper = _helper_for(doc, registry)
    key = config_key(registry)
    auths = doc.setdefault("auths", {})
    if helper is not None:
        helper.store(key, creds)
        # Docker leaves an empty entry so `docker login` state is visible in the file.
        auths[key] = {}
        _write_json_0600(path, doc)
        return helper.program
    for existing in [k for k in auths if _normalise_key(k) == registry]:
        del auths[existing]
    if creds.identity_token:
        auths[key] = {"identitytoken": creds.identity_token}
        if creds.username:
            auths[key]["auth"] = base64.b64encode(f"{creds.username}:".encode()).decode()
    else:
        raw = f"{creds.username}:{creds.password}".encode()
        auths[key] = {"auth": base64.b64encode(raw).decode()}
    _write_json_0600(path, doc)
    return str(path)


def erase_credentials(registry: str) -> bool:
    """Remove saved credentials; returns whether any were found."""
    path = docker_config_path()
    doc = _read_json(path)
    found = False
    helper = _helper_for(doc, registry)
    if helper is not None:
        with contextlib.suppress(CredentialHelperError):
            helper.erase(config_key(registry))
            found = True
    auths = doc.get("auths") or {}
    for key in [k for k in auths if _normalise_key(k) == registry]:
        del auths[key]
        found = True
    if found:
        _write_json_0600(path, doc)
    return found


# -- challenges and tokens ---------------------------------------------------------------

_PARAM_RE = re.compile(r'\s*([a-zA-Z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: scheme (lowercase) and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, header: str) -> Challenge | None:
        header = header.strip()
        if not header:
            return None
        scheme, _, rest = header.partition(" ")
        params: dict[str, str] = {}
        pos = 0
        while pos < len(rest):
            m = _PARAM_RE.match(rest, pos)
            if m is None or m.end() == pos:
                break
            value = m.group(2) if m.group(2) is not None else m.group(3) or ""
            params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = m.end()
        return cls(scheme.lower(), params)


def merge_scopes(scopes: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Union the actions of scopes naming the same resource; sorted, for cache keys."""
    merged: dict[tuple[str, str], set[str]] = {}
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, sep, actions = rest.rpartition(":")
        if not sep:
            merged.setdefault((kind, rest), set())
            continue
        merged.setdefault((kind, name), set()).update(a for a in actions.split(",") if a)
    return tuple(
        sorted(
            f"{k}:{n}:{','.join(sorted(a))}" if a else f"{k}:{n}" for (k, n), a in merged.items()
        )
    )


@dataclass(slots=True)
class _Token:
    value: str
    expires: float


class Authenticator:
    """Authentication state for one registry host, shared by all its requests (thread-safe)."""

    def __init__(self, registry: str, credentials: Credentials | None = None) -> None:
        self.registry = registry
        self._credentials = credentials
        self._scheme: str | None = None  # "basic" | "bearer" once challenged
        self._realm = ""
        self._service = ""
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._lock = threading.RLock()
        self._http: httpx.Client | None = None
        self.refresh_token: str = ""
        self.login_mode = False

    @property
    def credentials(self) -> Credentials:
        if self._credentials is None:
            self._credentials = load_credentials(self.registry)
        return self._credentials

    def _basic(self) -> str:
        creds = self.credentials
        raw = f"{creds.username}:{creds.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def header(self, scopes: tuple[str, ...], transport: Transport) -> str | None:
        """The Authorization header for a request needing ``scopes`` (None: send none)."""
        with self._lock:
            if self.credentials.registry_token and self._scheme == "bearer":
                return f"Bearer {self.credentials.registry_token}"
            if self._scheme == "basic":
                return self._basic() if not self.credentials.anonymous else None
            if self._scheme != "bearer":
                return None
            key = merge_scopes(scopes)
            token = self._tokens.get(key)
            if token is None or token.expires <= time.time():
                token = self._fetch_token(key, transport)
            return f"Bearer {token.value}"

    def handle_challenge(self, header: str, scopes: tuple[str, ...], transport: Transport) -> bool:
        """Learn from a 401's challenge; True when a retry with new credentials makes sense."""
        challenge = Challenge.parse(header)
        if challenge is None:
            return False
        with self._lock:
            if challenge.scheme == "basic":
                # The transport bounds the rounds, so wrong credentials end in a final 401.
                self._scheme = "basic"
                return not self.credentials.anonymous
            if challenge.scheme != "bearer" or "realm" not in challenge.params:
                return False
            self._scheme = "bearer"
            self._realm = challenge.params["realm"]
            self._service = challenge.params.get("service", "")
            wanted = list(scopes)
            if extra := challenge.params.get("scope"):
                wanted.extend(extra.split(" "))
            own = merge_scopes(scopes)
            self._tokens.pop(own, None)  # rejected (expired early, or too narrow)
            token = self._fetch_token(merge_scopes(wanted), transport)
            # Requests naming only ``scopes`` use the wider token the server asked for.
            self._tokens[own] = token
            return True

    def explain(self, err: ResponseError, scopes: tuple[str, ...] = ()) -> ResponseError:
        """Rewrite a final 401 as one line that says what to do."""
        repos = sorted({s.split(":")[1] for s in scopes if s.startswith("repository:")})
        target = f"{self.registry}/{repos[0]}" if repos else self.registry
        if self.login_mode:
            message = f"login to {self.registry} failed: wrong username or password ({err})"
        elif self.credentials.anonymous:
            message = (
                f"unauthorized: authentication required for {target} — run pybuild login "
                f"{self.registry}"
            )
        else:
            source = self.credentials.source or "the command line"
            message = (
                f"unauthorized: {self.registry} refused the credentials from {source} for "
                f"{target} — run pybuild login {self.registry}"
            )
        err.args = (redact(message),)
        return err

    # -- token server --------------------------------------------------------------------

    def _token_client(self, transport: Transport) -> httpx.Client:
        import httpx

        from registry.transport import USER_AGENT, tls_context

        if self._http is None:
            host = urlsplit(self._realm).netloc
            insecure = transport.options.is_insecure(host)
            self._http = httpx.Client(
                verify=tls_context(host, transport.options, verify=not insecure),
                timeout=httpx.Timeout(transport.options.timeout, connect=15.0),
                headers={"User-Agent": USER_AGENT},
                follow_redirects=True,
                trust_env=True,
            )
        return self._http

    def _fetch_token(self, scopes: tuple[str, ...], transport: Transport) -> _Token:
        import httpx

        client = self._token_client(transport)
        creds = self.credentials
        policy = transport.options.retry
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._token_request(client, scopes, creds)
            except httpx.HTTPError as e:
                if attempt >= policy.attempts or time.monotonic() - started > policy.total:
                    raise TransportError(
                        f"cannot reach the token server of {self.registry}: {e}"
                    ) from None
                transport.sleep(policy.delay(attempt))
                continue
            if (
                (response.status_code >= 500 or response.status_code == 429)
                and attempt < policy.attempts
                and time.monotonic() - started < policy.total
            ):
                transport.sleep(policy.delay(attempt))
                continue
            break
        if response.status_code != 200:
            from registry.transport import error_from_response

            err = error_from_response(response, what=f"token for {self.registry}")
            if response.status_code in (401, 403):
                raise self.explain(
                    AuthenticationError(
                        "the token server refused the credentials",
                        status=response.status_code,
                        codes=err.codes,
                    ),
                    scopes,
                )
            raise err
        try:
            doc = response.json()
        except ValueError:
            raise AuthenticationError(
                f"the token server of {self.registry} answered with something that is not JSON"
            ) from None
        value = doc.get("token") or doc.get("access_token")
        if not value:
            raise AuthenticationError(f"the token server of {self.registry} sent no token")
        if doc.get("refresh_token"):
            self.refresh_token = str(doc["refresh_token"])
        lifetime = float(doc.get("expires_in") or _DEFAULT_TOKEN_LIFETIME)
        token = _Token(str(value), time.time() + max(lifetime - _EXPIRY_MARGIN, 1.0))
        self._tokens[scopes] = token
        return token

    def _token_request(
        self, client: httpx.Client, scopes: tuple[str, ...], creds: Credentials
    ) -> httpx.Response:
        if creds.registry_token:
            raise AuthenticationError("registry tokens cannot be exchanged")  # pragma: no cover
        if creds.identity_token:
            form: dict[str, str] = {
                "grant_type": "refresh_token",
                "refresh_token": creds.identity_token,
                "service": self._service,
                "client_id": CLIENT_ID,
                "access_type": "offline" if self.login_mode else "online",
            }
            if scopes:
                form["scope"] = " ".join(scopes)
            response = client.post(self._realm, data=form)
            if response.status_code not in (404, 405):
                return response
        elif creds.password and self.login_mode:
            # Ask for a refresh token at login (OAuth2 password grant); GET below otherwise.
            form = {
                "grant_type": "password",
                "username": creds.username,
                "password": creds.password,
                "service": self._service,
                "client_id": CLIENT_ID,
                "access_type": "offline",
            }
            if scopes:
                form["scope"] = " ".join(scopes)
            response = client.post(self._realm, data=form)
            if response.status_code == 200:
                return response
        params: list[tuple[str, Any]] = []
        if self._service:
            params.append(("service", self._service))
        params.extend(("scope", s) for s in scopes)
        if creds.username:
            params.append(("account", creds.username))
        if self.login_mode:
            params.extend([("offline_token", "true"), ("client_id", CLIENT_ID)])
        auth = (creds.username, creds.password) if creds.password else None
        return client.get(self._realm, params=params, auth=auth)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
