"""Real registries for the registry tests: distribution 2.8 (Debian's ``docker-registry``).

Three session-scoped servers on free loopback ports, each with a generated config:
plain HTTP; TLS (a CA made with ``cryptography``, handed to the client through a
certs.d-style directory) with htpasswd Basic auth; and token auth, with a small token
server below that issues ES256 JWTs carrying an ``x5c`` chain the registry trusts through
``rootcertbundle``. A fault-injecting HTTP proxy sits in front of the plain registry when a
test asks for it (drops, 5xx, 429 with Retry-After, stalls, a flipped byte): those faults
cannot be caused on a healthy loopback server, so they are the one simulated part.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import gzip
import hashlib
import http.client
import http.server
import io
import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

DOCKER_REGISTRY = shutil.which("docker-registry")
HTPASSWD = shutil.which("htpasswd")
USER, PASSWORD = "alice", "s3cret-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- certificates ------------------------------------------------------------------------


@dataclass
class CertificateAuthority:
    cert_pem: bytes
    key: Any
    cert: Any

    @classmethod
    def create(cls, name: str) -> CertificateAuthority:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert.public_bytes(serialization.Encoding.PEM), key, cert)

    def issue_server(self, hosts: list[str], *, client: bool = False) -> tuple[bytes, bytes]:
        """(cert PEM, key PEM) for a TLS server answering on ``hosts`` (or a client)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


# -- the registry process ----------------------------------------------------------------


@dataclass
class RegistryServer:
    """One running ``docker-registry serve`` process."""

    host: str
    root: Path
    scheme: str = "http"
    username: str = ""
    password: str = ""
    certs_d: Path | None = None  # a certs.d base holding <host>/ca.crt (+ client cert)
    client_only_certs_d: Path | None = None  # <host>/client.cert and .key, no CA
    ca_file: Path | None = None
    token_server: TokenServer | None = None
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start(self, config: dict[str, Any]) -> None:
        cfg = self.root / "config.yml"
        cfg.write_text(json.dumps(config))  # JSON is YAML
        self.log = self.root / "registry.log"
        assert DOCKER_REGISTRY is not None
        with open(self.log, "wb") as log:
            # distribution reads REGISTRY_* variables as config overrides; the client's
            # REGISTRY_AUTH_FILE would become auth.file.
            env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
            self.proc = subprocess.Popen(
                [DOCKER_REGISTRY, "serve", str(cfg)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if self.certs_d is not None:
            d = self.certs_d / self.host
            ctx.load_cert_chain(str(d / "client.cert"), str(d / "client.key"))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log.read_text()[-2000:]}")
            try:
                conn: http.client.HTTPConnection
                if self.scheme == "https":
                    conn = http.client.HTTPSConnection(self.host, timeout=1, context=ctx)
                else:
                    conn = http.client.HTTPConnection(self.host, timeout=1)
                conn.request("GET", "/v2/")
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start in 15 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def ref(self, repo: str) -> str:
        return f"{self.host}/{repo}"


def _base_config(root: Path, port: int) -> dict[str, Any]:
    return {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "data")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        # Foreign (non-distributable) layers may point anywhere in these tests.
        "validation": {"manifests": {"urls": {"allow": ["^https?://"]}}},
    }


def _registry_root(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        root = Path(__import__("tempfile").mkdtemp(prefix=f"pybuild-{name}-", dir=shm))
    else:
        root = tmp_path_factory.mktemp(name)
    return root


@pytest.fixture(scope="session")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    if DOCKER_REGISTRY is None:
        pytest.skip("docker-registry not installed (apt-get install docker-registry)")
    root = _registry_root(tmp_path_factory, "plain")
    port = free_port()
    server = RegistryServer(f"127.0.0.1:{port}", root)
    try:
        server.start(_base_config(root, port))
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    if DOCKER_REGISTRY is None:
        pytest.skip("docker-registry not installed (apt-get install docker-registry)")
    if HTPASSWD is None:
        pytest.skip("htpasswd not installed (apt-get install apache2-utils)")
    root = _registry_root(tmp_path_factory, "tls")
    port = free_port()
    host = f"127.0.0.1:{port}"
    ca = CertificateAuthority.create("pybuild test CA")
    cert, key = ca.issue_server(["127.0.0.1", "localhost"])
    (root / "server.crt").write_bytes(cert)
    (root / "server.key").write_bytes(key)
    # The registry also demands a client certificate from the same CA (http.tls.clientcas).
    client_cert, client_key = ca.issue_server(["pybuild-client"], client=True)
    certs_d = root / "certs.d"
    client_only = root / "client-only.d"
    for base in (certs_d, client_only):
        (base / host).mkdir(parents=True)
        (base / host / "client.cert").write_bytes(client_cert)
        (base / host / "client.key").write_bytes(client_key)
    (certs_d / host / "ca.crt").write_bytes(ca.cert_pem)
    (root / "ca.crt").write_bytes(ca.cert_pem)
    line = subprocess.run(
        [HTPASSWD, "-Bbn", USER, PASSWORD], capture_output=True, text=True, check=True
    ).stdout.strip()
    (root / "htpasswd").write_text(line + "\n")
    config = _base_config(root, port)
    config["http"]["tls"] = {
        "certificate": str(root / "server.crt"),
        "key": str(root / "server.key"),
        "clientcas": [str(root / "ca.crt")],
    }
    config["auth"] = {"htpasswd": {"realm": "pybuild-test", "path": str(root / "htpasswd")}}
    server = RegistryServer(
        host,
        root,
        scheme="https",
        username=USER,
        password=PASSWORD,
        certs_d=certs_d,
        client_only_certs_d=client_only,
        ca_file=root / "ca.crt",
    )
    try:
        server.start(config)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


# -- token server ------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """A distribution token server: Basic credentials in, ES256 JWT with x5c out.

    ``alice`` gets every action she asks for; anonymous callers get ``pull`` on
    ``public/*`` only. ``requests`` records (method, account, scopes) for assertions.
    """

    service: str = "pybuild-test-registry"
    issuer: str = "pybuild-test-issuer"
    expires_in: int = 300
    requests: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    stale_next: int = 0  # issue this many tokens already expired (beyond the 60 s leeway)
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    port: int = 0
    key: Any = None
    cert_der: bytes = b""
    cert_pem: bytes = b""
    server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        from cryptography.hazmat.primitives import serialization

        ca = CertificateAuthority.create("pybuild token signer")
        self.key, self.cert_pem = ca.key, ca.cert_pem
        self.cert_der = ca.cert.public_bytes(serialization.Encoding.DER)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                q = urllib.parse.parse_qs(url.query)
                account = owner._basic_account(self.headers.get("Authorization"))
                if account is None:
                    self._reply(401, {"details": "invalid credentials"})
                    return
                scopes = tuple(q.get("scope", []))
                offline = q.get("offline_token", ["false"])[0] == "true"
                owner.requests.append(("GET", account, scopes))
                self._reply(200, owner._issue(account, scopes, offline))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                grant = form.get("grant_type", [""])[0]
                scopes = tuple(" ".join(form.get("scope", [])).split())
                account: str | None = None
                if grant == "password":
                    if (
                        form.get("username", [""])[0] == USER
                        and form.get("password", [""])[0] == PASSWORD
                    ):
                        account = USER
                elif grant == "refresh_token":
                    account = owner.refresh_tokens.get(form.get("refresh_token", [""])[0])
                if account is None:
                    self._reply(401, {"error": "invalid_grant"})
                    return
                owner.requests.append(("POST", account, scopes))
                self._reply(200, owner._issue(account, scopes, True))

            def _reply(self, status: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def _basic_account(self, header: str | None) -> str | None:
        """'' for anonymous, the user for good credentials, None for bad ones."""
        if not header:
            return ""
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user if (user, password) == (USER, PASSWORD) else None

    def _issue(self, account: str, scopes: tuple[str, ...], offline: bool) -> dict[str, Any]:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = [a for a in actions.split(",") if a]
            if account == USER:
                granted = wanted
            else:
                granted = ["pull"] if name.startswith("public/") and "pull" in wanted else []
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        if self.stale_next > 0:
            self.stale_next -= 1
            now -= 3600
        claims = {
            "iss": self.issuer,
            "sub": account,
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        header = {
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64.b64encode(self.cert_der).decode()],
        }
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        token = signing_input + "." + _b64url(signature)
        doc: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": datetime.datetime.now(datetime.UTC).isoformat(),
        }
        if offline and account:
            refresh = secrets.token_hex(16)
            self.refresh_tokens[refresh] = account
            doc["refresh_token"] = refresh
        return doc

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    if DOCKER_REGISTRY is None:
        pytest.skip("docker-registry not installed (apt-get install docker-registry)")
    root = _registry_root(tmp_path_factory, "token")
    tokens = TokenServer()
    tokens.start()
    (root / "token.crt").write_bytes(tokens.cert_pem)
    port = free_port()
    config = _base_config(root, port)
    config["auth"] = {
        "token": {
            "realm": tokens.realm,
            "service": tokens.service,
            "issuer": tokens.issuer,
            "rootcertbundle": str(root / "token.crt"),
        }
    }
    server = RegistryServer(
        f"127.0.0.1:{port}", root, username=USER, password=PASSWORD, token_server=tokens
    )
    try:
        server.start(config)
        yield server
    finally:
        server.stop()
        tokens.stop()
        shutil.rmtree(root, ignore_errors=True)


# -- fault-injecting proxy ---------------------------------------------------------------


@dataclass
class Fault:
    """One injected fault: applies to the next ``times`` requests that match."""

    action: str  # "status" | "drop" | "stall" | "flip" | "redirect" | "serve"
    method: str = ""
    path_contains: str = ""
    times: int = 1
    status: int = 500
    retry_after: str | None = None
    after_bytes: int = 1024  # drop/stall/flip position in the response body
    stall: float = 3.0
    body: bytes = b""  # "serve": answer with this instead of asking the registry
    headers: dict[str, str] = field(default_factory=dict)

    def matches(self, method: str, path: str) -> bool:
        return (
            self.times > 0
            and (not self.method or self.method == method)
            and self.path_contains in path
        )


_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
    }
)


class FaultProxy:
    """An HTTP/1.1 proxy in front of a registry that injects :class:`Fault` s."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.hits: list[tuple[str, str, str]] = []  # (method, path, what happened)
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers)
        self.storage: dict[str, bytes] = {}
        self.relative_locations = False  # strip scheme://host from Location headers
        self.storage_requests: list[dict[str, str]] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                method, path = self.command, self.path
                owner.requests.append((method, path, dict(self.headers.items())))
                fault = owner._take(method, path, None)
                if fault is not None and fault.action == "status":
                    self._body()
                    owner.hits.append((method, path, f"status {fault.status}"))
                    body = json.dumps(
                        {"errors": [{"code": "UNKNOWN", "message": "injected", "detail": None}]}
                    ).encode()
                    if fault.status == 429:
                        body = json.dumps(
                            {"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]}
                        ).encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    if fault.retry_after is not None:
                        self.send_header("Retry-After", fault.retry_after)
                    self.end_headers()
                    if method != "HEAD":
                        self.wfile.write(body)
                    return
                if fault is not None and fault.action == "serve":
                    self._body()
                    owner.hits.append((method, path, "serve"))
                    self.send_response(fault.status)
                    for k, v in fault.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(fault.body)))
                    self.end_headers()
                    if method != "HEAD":
                        self.wfile.write(fault.body)
                    return
                if fault is not None and fault.action == "drop" and method in ("PUT", "PATCH"):
                    # The upload breaks half way: read some of it, then hang up.
                    length = int(self.headers.get("Content-Length") or 0)
                    self.rfile.read(min(length, fault.after_bytes))
                    owner.hits.append((method, path, "drop request"))
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if self.path.startswith("/storage/"):
                    # The "blob storage" a redirect points at: record who asked, serve bytes.
                    owner.storage_requests.append(dict(self.headers.items()))
                    data = owner.storage.get(self.path.split("?")[0], b"")
                    self.send_response(200 if data else 404)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                body = self._body()
                conn = http.client.HTTPConnection(owner.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                conn.request(method, path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                # Faults on the response body apply only to bodies long enough to break.
                fault = owner._take(method, path, len(data)) if resp.status in (200, 206) else None
                if fault is not None and fault.action == "redirect":
                    key = f"/storage/{secrets.token_hex(8)}"
                    owner.storage[key] = data
                    port = owner.host.rsplit(":", 1)[1]
                    owner.hits.append((method, path, "redirect"))
                    self.send_response(307)
                    self.send_header(
                        "Location", f"http://localhost:{port}{key}?X-Amz-Signature=s3cr3t"
                    )
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() == "location" and owner.relative_locations and "://" in v:
                        v = "/" + v.split("://", 1)[1].split("/", 1)[1]
                    if k.lower() not in _HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                if method == "HEAD":
                    self.send_header("Content-Length", resp.getheader("Content-Length", "0"))
                    self.end_headers()
                    owner.hits.append((method, path, "pass"))
                    return
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault is None:
                    owner.hits.append((method, path, "pass"))
                    self.wfile.write(data)
                    return
                cut = fault.after_bytes
                if fault.action == "flip":
                    flipped = bytearray(data)
                    flipped[cut] ^= 0x01
                    owner.hits.append((method, path, "flip"))
                    self.wfile.write(bytes(flipped))
                    return
                self.wfile.write(data[:cut])
                self.wfile.flush()
                if fault.action == "stall":
                    owner.hits.append((method, path, "stall"))
                    time.sleep(fault.stall)
                    with contextlib.suppress(OSError):
                        self.wfile.write(data[cut:])
                    return
                owner.hits.append((method, path, "drop response"))
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _take(self, method: str, path: str, body_size: int | None) -> Fault | None:
        """A matching fault, consumed: request faults when ``body_size`` is None, else a
        response-body fault whose position lies inside a body of that size."""
        with self._lock:
            for fault in self.faults:
                if not fault.matches(method, path):
                    continue
                upfront = fault.action in ("status", "serve") or (
                    fault.action == "drop" and method in ("PUT", "PATCH")
                )
                if body_size is None and not upfront:
                    continue
                if body_size is not None and (upfront or body_size <= fault.after_bytes):
                    continue
                fault.times -= 1
                return fault
        return None

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def injected(self) -> list[tuple[str, str, str]]:
        return [h for h in self.hits if h[2] != "pass"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def token_proxy(token_registry: RegistryServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(token_registry.host)
    yield proxy
    proxy.close()


@pytest.fixture
def fault_proxy(plain_registry: RegistryServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(plain_registry.host)
    yield proxy
    proxy.close()


# -- client environment and images -------------------------------------------------------


@pytest.fixture
def client_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Isolate credentials, certs.d and the store; make retries fast."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "containers-auth.json"))
    monkeypatch.setenv("PYBUILD_CERTS_D", str(tmp_path / "no-certs.d"))
    monkeypatch.setenv("PYBUILD_RETRY_BASE_DELAY", "0.01")
    monkeypatch.setenv("PYBUILD_ROOT", str(tmp_path / "store"))
    monkeypatch.delenv("PYBUILD_INSECURE_REGISTRIES", raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def login_env(server: RegistryServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials (and CA) for ``server`` in the isolated Docker config."""
    if server.certs_d is not None:
        monkeypatch.setenv("PYBUILD_CERTS_D", str(server.certs_d))
    if server.username:
        cfg = tmp_path / "docker" / "config.json"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        auth = base64.b64encode(f"{server.username}:{server.password}".encode()).decode()
        cfg.write_text(json.dumps({"auths": {server.host: {"auth": auth}}}))


def layer_tar(files: dict[str, bytes], *, compress: bool = True) -> bytes:
    """A deterministic layer tar (gzip unless told otherwise)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    data = raw.getvalue()
    return gzip.compress(data, mtime=0) if compress else data


@dataclass
class BuiltImage:
    name: str
    digest: Any
    layers: list[bytes]
    config: bytes
    manifest: bytes


def build_image(
    store: Any,
    name: str,
    *,
    layers: list[dict[str, bytes]] | None = None,
    architecture: str | None = None,
    media_type: str | None = None,
    compress: bool = True,
) -> BuiltImage:
    """Write a small image (layers, config, manifest) into ``store`` and tag it ``name``."""
    from layerstore.canonicaljson import canonical_json
    from layerstore.descriptor import Descriptor, MediaType, Platform
    from layerstore.digest import Digest
    from layerstore.manifest import Manifest

    arch = architecture or Platform.host().architecture
    layer_blobs = [layer_tar(f, compress=compress) for f in (layers or [{"hello.txt": b"hi\n"}])]
    diff_ids = []
    for blob in layer_blobs:
        plain = gzip.decompress(blob) if compress else blob
        diff_ids.append("sha256:" + hashlib.sha256(plain).hexdigest())
    config = canonical_json(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": "test"} for _ in layer_blobs],
        }
    )
    config_digest = store.blobs.put_bytes(config)
    layer_type = MediaType.OCI_LAYER_GZIP if compress else MediaType.OCI_LAYER
    descs = [Descriptor(layer_type, store.blobs.put_bytes(blob), len(blob)) for blob in layer_blobs]
    manifest = Manifest.build(
        config=Descriptor(MediaType.OCI_CONFIG, config_digest, len(config)),
        layers=descs,
        media_type=media_type or MediaType.OCI_MANIFEST,
    )
    desc = store.put_manifest(manifest)
    store.images.tag(name, desc)
    assert isinstance(desc.digest, Digest)
    return BuiltImage(name, desc.digest, layer_blobs, config, manifest.to_bytes())


@pytest.fixture
def make_image() -> Callable[..., BuiltImage]:
    return build_image
