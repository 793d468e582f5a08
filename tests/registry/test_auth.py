"""Authentication, credentials, TLS trust and redaction, against the real registries."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from layerstore.store import Store
from registry.auth import (
    Challenge,
    Credentials,
    erase_credentials,
    load_credentials,
    store_credentials,
)
from registry.client import Client
from registry.errors import AuthenticationError, TransportError, redact, redact_url
from registry.pull import pull
from registry.push import push
from registry.reference import Reference
from registry.transport import TransportOptions

from .conftest import PASSWORD, USER, Fault, FaultProxy, RegistryServer, build_image, login_env


@pytest.mark.parametrize(
    ("header", "scheme", "params"),
    [
        ('Basic realm="x"', "basic", {"realm": "x"}),
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/alpine:pull"',
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/alpine:pull",
            },
        ),
        (
            'Bearer realm="r", scope="repository:a:pull,push", error="insufficient_scope"',
            "bearer",
            {"realm": "r", "scope": "repository:a:pull,push", "error": "insufficient_scope"},
        ),
        ("BEARER realm=unquoted,service=svc", "bearer", {"realm": "unquoted", "service": "svc"}),
        ('Bearer realm="with \\"quote\\""', "bearer", {"realm": 'with "quote"'}),
    ],
)
def test_challenge_parse(header: str, scheme: str, params: dict[str, str]) -> None:
    challenge = Challenge.parse(header)
    assert challenge is not None
    assert challenge.scheme == scheme and challenge.params == params


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("GET https://user:hunter2@reg.io/v2/ failed", "hunter2"),
        ("Authorization: Bearer eyJhbGciOi.abc.def", "eyJhbGciOi"),
        ("Basic YWxpY2U6c2VjcmV0 refused", "YWxpY2U6c2VjcmV0"),
        ("https://reg.io/v2/a/blobs/uploads/x?_state=abc&digest=sha256:1", "_state=abc"),
        ("https://s3.example/bucket/blob?X-Amz-Signature=deadbeef", "deadbeef"),
    ],
)
def test_redaction(text: str, secret: str) -> None:
    assert secret not in redact(text)
    assert secret not in redact_url(text.split()[-1] if "://" in text else text)


def test_transport_errors_are_redacted() -> None:
    err = TransportError("cannot connect to https://bob:pw@x.io/v2/?token=abc")
    assert "pw" not in str(err) and "abc" not in str(err)


# -- credential sources ------------------------------------------------------------------

HELPER = """#!{python}
import json, os, sys
db = os.environ["PBTEST_HELPER_DB"]
data = json.load(open(db)) if os.path.exists(db) else {{}}
action = sys.argv[1]
payload = sys.stdin.read()
if action == "get":
    if payload.strip() not in data:
        print("credentials not found in native keychain"); sys.exit(1)
    user, secret = data[payload.strip()]
    print(json.dumps({{"ServerURL": payload.strip(), "Username": user, "Secret": secret}}))
elif action == "store":
    doc = json.loads(payload)
    data[doc["ServerURL"]] = [doc["Username"], doc["Secret"]]
    json.dump(data, open(db, "w"))
elif action == "erase":
    data.pop(payload.strip(), None)
    json.dump(data, open(db, "w"))
"""


@pytest.fixture
def helper(client_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real docker-credential-pbtest program on PATH, keeping secrets in a JSON file."""
    bindir = client_env / "bin"
    bindir.mkdir()
    prog = bindir / "docker-credential-pbtest"
    prog.write_text(HELPER.format(python=sys.executable))
    prog.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    db = client_env / "helper.json"
    monkeypatch.setenv("PBTEST_HELPER_DB", str(db))
    return db


def _config(client_env: Path, doc: dict[str, object]) -> Path:
    path = client_env / "docker" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_credential_precedence(client_env: Path, helper: Path) -> None:
    helper.write_text(json.dumps({"helped.io": ["hu", "hp"], "stored.io": ["su", "sp"]}))
    _config(
        client_env,
        {
            "auths": {
                "helped.io": {"auth": _b64("file:ignored")},
                "https://plain.io/v1/": {"auth": _b64("pu:pp")},
                "https://index.docker.io/v1/": {"auth": _b64("hub:hp")},
                "tok.io": {"identitytoken": "refresh-me"},
            },
            "credHelpers": {"helped.io": "pbtest"},
        },
    )
    (client_env / "containers-auth.json").write_text(
        json.dumps({"auths": {"podman.io": {"auth": _b64("cu:cp")}}})
    )
    assert (load_credentials("helped.io").username, load_credentials("helped.io").password) == (
        "hu",
        "hp",
    )
    assert load_credentials("plain.io").password == "pp"
    assert load_credentials("docker.io").username == "hub"
    assert load_credentials("tok.io").identity_token == "refresh-me"
    assert load_credentials("podman.io").username == "cu"
    assert load_credentials("nowhere.io").anonymous
    assert "pp" not in repr(load_credentials("plain.io"))


def test_creds_store_is_used_for_login_storage(client_env: Path, helper: Path) -> None:
    path = _config(client_env, {"credsStore": "pbtest"})
    where = store_credentials("r.io", Credentials(username="u", password="p"))
    assert where == "docker-credential-pbtest"
    assert json.loads(helper.read_text())["r.io"] == ["u", "p"]
    assert json.loads(path.read_text())["auths"]["r.io"] == {}
    assert load_credentials("r.io").password == "p"
    assert erase_credentials("r.io")
    assert "r.io" not in json.loads(helper.read_text())


def test_config_file_is_private(client_env: Path) -> None:
    store_credentials("r.io", Credentials(username="u", password="p"))
    path = client_env / "docker" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["auths"]["r.io"]["auth"] == _b64("u:p")
    assert erase_credentials("r.io") and not erase_credentials("r.io")


# -- against the registries ----------------------------------------------------------------


@pytest.mark.registry
def test_wrong_password_is_clear(
    tls_registry: RegistryServer, client_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYBUILD_CERTS_D", str(tls_registry.certs_d))
    ref = Reference.parse(tls_registry.ref("auth/app:1"))
    creds = Credentials(username=USER, password="nope", source="test")
    with (
        Client.for_reference(ref, credentials=creds) as client,
        pytest.raises(AuthenticationError, match="refused the credentials from test"),
    ):
        client.get_manifest(ref)


@pytest.mark.registry
def test_tls_needs_the_ca_or_insecure(
    tls_registry: RegistryServer, client_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = Reference.parse(tls_registry.ref("auth/app:1"))
    creds = Credentials(username=USER, password=PASSWORD)
    # Only the client certificate (the registry demands one), not the CA.
    monkeypatch.setenv("PYBUILD_CERTS_D", str(tls_registry.client_only_certs_d))
    with (
        Client.for_reference(ref, credentials=creds) as client,
        pytest.raises(TransportError, match=r"certs\.d"),
    ):
        client.ping()
    options = TransportOptions.from_env(insecure=[tls_registry.host])
    with Client.for_reference(ref, credentials=creds, options=options) as client:
        client.ping()
        assert client.transport.scheme == "https"
    # Without the client certificate the TLS handshake itself is refused.
    monkeypatch.setenv("PYBUILD_CERTS_D", str(client_env / "nothing"))
    options = TransportOptions.from_env(insecure=[tls_registry.host])
    with (
        Client.for_reference(ref, credentials=creds, options=options) as client,
        pytest.raises(TransportError),
    ):
        client.ping()


@pytest.mark.registry
def test_token_flow_scopes_mount_and_refresh(
    token_registry: RegistryServer, client_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    login_env(token_registry, monkeypatch, client_env)
    store = Store.open()
    image = build_image(store, "local/tok:1", layers=[{"t": b"token" * 100}])
    first = Reference.parse(token_registry.ref("team/first:1"))
    tokens.requests.clear()
    push("local/tok:1", first, store)
    assert any("repository:team/first:pull,push" in s for _, _, s in tokens.requests)

    # The store now knows the blobs are in team/first: a push to team/second mounts them,
    # asking for pull on the source repository as well.
    second = Reference.parse(token_registry.ref("team/second:1"))
    tokens.requests.clear()
    result = push("local/tok:1", second, store)
    assert result.mounted == 2 and result.uploaded == 0  # config + layer
    assert any("repository:team/first:pull" in s for _, _, s in tokens.requests)

    # A token that the registry no longer accepts (expired early) is replaced on the 401.
    tokens.stale_next = 1
    tokens.requests.clear()
    third = Reference.parse(token_registry.ref("team/third:1"))
    assert push("local/tok:1", third, store).digest == image.digest
    assert len(tokens.requests) >= 2

    # Anonymous pull of a public repository gets an anonymous token.
    public = Reference.parse(token_registry.ref("public/app:1"))
    push("local/tok:1", public, store)
    monkeypatch.setenv("DOCKER_CONFIG", str(client_env / "empty-docker"))
    tokens.requests.clear()
    assert pull(public, Store.open(client_env / "anon")).digest == image.digest
    assert tokens.requests and all(account == "" for _, account, _ in tokens.requests)
    with pytest.raises(AuthenticationError, match="authentication required"):
        push("local/tok:1", Reference.parse(token_registry.ref("public/app:2")), store)


@pytest.mark.registry
def test_identity_token_from_login_is_used(
    token_registry: RegistryServer, client_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from builder.cli import main

    tokens = token_registry.token_server
    assert tokens is not None
    with pytest.raises(SystemExit) as done:
        main(["login", token_registry.host, "-u", USER, "-p", PASSWORD])
    assert done.value.code in (0, None)
    saved = json.loads((client_env / "docker" / "config.json").read_text())["auths"]
    entry = saved[token_registry.host]
    assert "identitytoken" in entry and PASSWORD not in json.dumps(saved)
    tokens.requests.clear()
    store = Store.open()
    build_image(store, "local/idt:1")
    push("local/idt:1", Reference.parse(token_registry.ref("idt/app:1")), store)
    assert tokens.requests and all(method == "POST" for method, _, _ in tokens.requests)


@pytest.mark.registry
def test_redirect_to_storage_drops_authorization(
    token_registry: RegistryServer,
    token_proxy: FaultProxy,
    client_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    login_env(token_registry, monkeypatch, client_env)
    store = Store.open()
    image = build_image(store, "local/redir:1", layers=[{"r": os.urandom(5000)}])
    push("local/redir:1", Reference.parse(token_registry.ref("redir/app:1")), store)
    # The proxy has another host:port, so credentials are configured for it as well.
    cfg = client_env / "docker" / "config.json"
    doc = json.loads(cfg.read_text())
    doc["auths"][token_proxy.host] = doc["auths"][token_registry.host]
    cfg.write_text(json.dumps(doc))
    token_proxy.inject(Fault("redirect", "GET", "/blobs/sha256", times=10))
    ref = Reference.parse(f"{token_proxy.host}/redir/app:1")
    dst = Store.open(client_env / "dst")
    assert pull(ref, dst).digest == image.digest
    assert token_proxy.storage_requests, "no blob was fetched through the redirect"
    assert all("Authorization" not in h for h in token_proxy.storage_requests)


def test_containers_auth_under_xdg_runtime_dir(
    client_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REGISTRY_AUTH_FILE")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(client_env / "run"))
    auth = client_env / "run" / "containers" / "auth.json"
    auth.parent.mkdir(parents=True)
    auth.write_text(json.dumps({"auths": {"xdg.io": {"auth": _b64("xu:xp")}}}))
    creds = load_credentials("xdg.io")
    assert (creds.username, creds.password) == ("xu", "xp")
    assert str(auth) in creds.source


def test_httpx_log_records_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import registry.transport  # noqa: F401 - installs the filter

    with caplog.at_level(logging.INFO, logger="httpx"):
        logging.getLogger("httpx").info(
            'HTTP Request: %s %s "%s"',
            "GET",
            "https://bucket.s3.example/blob?X-Amz-Signature=deadbeef&X-Amz-Credential=me",
            "HTTP/1.1 200 OK",
        )
    text = caplog.text
    assert "deadbeef" not in text and "X-Amz-Credential=me" not in text
    assert "bucket.s3.example/blob" in text
