"""The registry commands end to end: login, push, pull, tag, copy, inspect, ls-tags, logout."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from builder.cli import main
from layerstore.digest import Digest
from layerstore.store import Store

from .conftest import PASSWORD, USER, Fault, FaultProxy, RegistryServer, build_image

pytestmark = pytest.mark.registry


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``pybuild ARGS`` in-process: (exit status, stdout, stderr)."""
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(params=["plain", "tls", "token"])
def server(
    request: pytest.FixtureRequest, client_env: Path, monkeypatch: pytest.MonkeyPatch
) -> RegistryServer:
    srv: RegistryServer = request.getfixturevalue(f"{request.param}_registry")
    if srv.certs_d is not None:
        monkeypatch.setenv("PYBUILD_CERTS_D", str(srv.certs_d))
    return srv


def test_cli_workflow(
    server: RegistryServer, client_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store.open()
    image = build_image(store, "docker.io/library/app:1", layers=[{"f": b"x" * 2000}])
    repo = f"{server.host}/cli/app"
    config = client_env / "docker" / "config.json"

    if server.username:
        # Not logged in yet: one line saying what to do.
        code, _, err = run(["push", "-q", "app:1", f"{repo}:1"], capsys)
        assert code == 1
        assert err.startswith("error: unauthorized: authentication required for ")
        assert f"pybuild login {server.host}" in err and len(err.strip().splitlines()) == 1

        code, _, err = run(["login", server.host, "-u", USER, "-p", "wrong"], capsys)
        assert code == 1 and "wrong username or password" in err
        assert not config.exists()

        code, out, err = run(["login", server.host, "-u", USER, "-p", PASSWORD], capsys)
        assert code == 0, err
        assert "Login succeeded" in out
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert server.host in json.loads(config.read_text())["auths"]

    code, out, err = run(["push", "-q", "app:1", f"{repo}:1"], capsys)
    assert code == 0, err
    assert out.strip() == str(image.digest)

    code, out, err = run(["ls-tags", repo], capsys)
    assert code == 0, err
    assert "1" in out.split()

    # Remote re-tag (same registry) then list again.
    code, out, err = run(["tag", f"{repo}:1", f"{repo}:2"], capsys)
    assert code == 0, err
    code, out, _ = run(["ls-tags", repo], capsys)
    assert {"1", "2"} <= set(out.split())

    # Copy within the registry to another repository (mounts).
    code, out, err = run(["copy", "-q", f"{repo}:2", f"{server.host}/cli/other:x"], capsys)
    assert code == 0, err
    assert out.strip() == str(image.digest)

    code, out, err = run(["inspect", "--raw", f"{server.host}/cli/other:x"], capsys)
    assert code == 0, err
    assert out.encode() == image.manifest

    code, out, err = run(["inspect", f"{repo}:2"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["Digest"] == str(image.digest)
    assert doc["Config"]["os"] == "linux"

    # Pull into a fresh store, then tag and inspect locally.
    os.environ["PYBUILD_ROOT"] = str(client_env / "store2")
    code, out, err = run(["pull", "--progress", "plain", f"{repo}:2"], capsys)
    assert code == 0, err
    assert str(image.digest) in out
    assert "downloaded" in err  # plain progress: one line per blob
    fresh = Store.open()
    assert fresh.images.resolve(f"{repo}:2").digest == image.digest
    for blob in image.layers:
        assert fresh.blobs.verify(Digest.of(blob))
    code, out, err = run(["tag", f"{repo}:2", "mine:latest"], capsys)
    assert code == 0, err
    assert fresh.images.resolve("docker.io/library/mine:latest").digest == image.digest
    code, out, err = run(["inspect", "mine"], capsys)
    assert code == 0, err
    assert json.loads(out)["Digest"] == str(image.digest)

    if server.username:
        code, out, _ = run(["logout", server.host], capsys)
        assert code == 0 and "Removed" in out
        assert server.host not in json.loads(config.read_text()).get("auths", {})
        code, _, err = run(["pull", "-q", f"{repo}:2"], capsys)
        assert code == 1 and "pybuild login" in err


def test_pull_missing_tag_is_one_line(
    plain_registry: RegistryServer, client_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["pull", f"{plain_registry.host}/nothing/here:1"], capsys)
    assert code == 1
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "unknown" in err.lower() or "not found" in err.lower()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pull", "Upper"], "must be lowercase"),
        (["pull", "--platform", "linux", "x.io/a"], "invalid platform"),
        (["login", "not a host"], "is not a registry host"),
    ],
)
def test_bad_input_is_reported(
    args: list[str], message: str, client_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(args, capsys)
    assert code in (1, 2)
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("kind", ["tls", "token"])
def test_login_with_password_stdin(
    kind: str,
    request: pytest.FixtureRequest,
    client_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import io

    srv: RegistryServer = request.getfixturevalue(f"{kind}_registry")
    if srv.certs_d is not None:
        monkeypatch.setenv("PYBUILD_CERTS_D", str(srv.certs_d))
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    code, out, err = run(["login", f"https://{srv.host}/", "-u", USER, "--password-stdin"], capsys)
    assert code == 0, err
    assert "Login succeeded" in out
    monkeypatch.setattr("sys.stdin", io.StringIO("not-it\n"))
    code, _, err = run(["login", srv.host, "-u", USER, "--password-stdin"], capsys)
    assert code == 1 and "wrong username or password" in err
    # The failed attempt left the saved (good) credentials alone.
    saved = json.loads((client_env / "docker" / "config.json").read_text())["auths"]
    assert srv.host in saved


def test_cli_copy_to_and_from_an_oci_layout(
    plain_registry: RegistryServer, client_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store.open()
    image = build_image(store, "docker.io/library/lay:1")
    repo = f"{plain_registry.host}/cli/layout"
    assert run(["push", "-q", "lay:1", f"{repo}:1"], capsys)[0] == 0
    layout = client_env / "layout"
    code, out, err = run(["copy", f"docker://{repo}:1", f"oci:{layout}:v1"], capsys)
    assert code == 0, err
    assert str(image.digest) in out
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    code, out, err = run(["copy", "-q", f"oci:{layout}:v1", f"{repo}:from-layout"], capsys)
    assert code == 0, err
    assert out.strip() == str(image.digest)
    code, _, err = run(["copy", f"oci:{layout}:nope", f"{repo}:x"], capsys)
    assert code == 1 and "no image named 'nope'" in err and "v1" in err


def test_cli_reports_retries_on_stderr(
    plain_registry: RegistryServer,
    fault_proxy: FaultProxy,
    client_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = Store.open()
    image = build_image(store, "docker.io/library/retry:1")
    assert run(["push", "-q", "retry:1", f"{plain_registry.host}/cli/retry:1"], capsys)[0] == 0
    fault_proxy.inject(Fault("status", "GET", "/manifests/", times=1, status=503))
    os.environ["PYBUILD_ROOT"] = str(client_env / "pulled")
    code, out, err = run(["pull", "--progress", "plain", f"{fault_proxy.host}/cli/retry:1"], capsys)
    assert code == 0, err
    assert str(image.digest) in out
    assert "retrying GET" in err and "HTTP 503" in err
