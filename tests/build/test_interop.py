"""Interop: pushed images run under podman; umoci reads type=oci; podman loads type=docker."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ..registry.conftest import RegistryServer, plain_registry  # noqa: F401 - a fixture
from .conftest import Pybuild, tree

pytestmark = [pytest.mark.root, pytest.mark.tools, pytest.mark.registry]


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")


@pytest.fixture
def podman() -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    _need("podman")
    _need("runc")
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="pbpod-"))  # podman wants a short runroot

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "podman",
                "--root",
                str(work / "root"),
                "--runroot",
                str(work / "run"),
                "--runtime",
                "runc",
                "--storage-driver",
                "vfs",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )

    yield run
    subprocess.run(["umount", "-R", str(work / "root")], capture_output=True)
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def pushed_base(pybuild: Pybuild, plain_registry: RegistryServer) -> str:  # noqa: F811
    pybuild("push", "busybox:test", plain_registry.ref("library/busybox:test"))
    return plain_registry.host


def test_pushed_image_runs_under_podman(
    pybuild: Pybuild,
    context: Callable[[str], Path],
    pushed_base: str,
    podman: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    name = f"{pushed_base}/interop/app:1"
    res = pybuild.build(
        context("interop"), "--build-arg", f"REGISTRY={pushed_base}", "-t", name, "--push"
    )
    assert "pushed" in res.stdout
    run = podman(
        "run",
        "--rm",
        "--network",
        "host",
        "--ulimit",
        "nofile=20000:20000",
        "--ulimit",
        "nproc=4096:4096",
        "--tls-verify=false",
        name,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "hello from the Dockerfile\n"


def test_oci_output_unpacks_like_local_output(
    pybuild: Pybuild, context: Callable[[str], Path], pushed_base: str, tmp_path: Path
) -> None:
    _need("umoci")
    ctx = context("interop")
    arg = ("--build-arg", f"REGISTRY={pushed_base}")
    local = pybuild.export(ctx, tmp_path / "local", *arg)
    pybuild.build(
        ctx, *arg, "-t", "oci-out:1", "-o", f"type=oci,dest={tmp_path / 'layout'},tar=false"
    )
    bundle = tmp_path / "bundle"
    proc = subprocess.run(
        [
            "umoci",
            "unpack",
            "--image",
            f"{tmp_path / 'layout'}:docker.io/library/oci-out:1",
            str(bundle),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert tree(bundle / "rootfs") == tree(local)
    archive = tmp_path / "app.oci.tar"
    pybuild.build(ctx, *arg, "-o", f"type=oci,dest={archive}")
    assert archive.stat().st_size > 0


def test_docker_output_loads_in_podman(
    pybuild: Pybuild,
    context: Callable[[str], Path],
    pushed_base: str,
    tmp_path: Path,
    podman: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    archive = tmp_path / "app.docker.tar"
    pybuild.build(
        context("interop"),
        "--build-arg",
        f"REGISTRY={pushed_base}",
        "-t",
        "docker-out:1",
        "-o",
        f"type=docker,dest={archive}",
    )
    load = podman("load", "-i", str(archive))
    assert load.returncode == 0, load.stderr
    assert "docker-out:1" in load.stdout


def test_pull_re_resolves_the_base(
    fresh_store: Pybuild,
    pybuild: Pybuild,
    plain_registry: RegistryServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    base = plain_registry.ref("library/pulltest:1")
    pybuild("push", "busybox:test", base)
    (tmp_path / "Dockerfile").write_text(f"FROM {base}\nRUN cat /marker 2>/dev/null || echo none\n")
    first = fresh_store.build(tmp_path)
    assert "[stage-0] none" in first.stderr  # pulled: not in the fresh store before
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "Dockerfile").write_text("FROM busybox:test\nRUN echo new > /marker\n")
    pybuild.build(tmp_path / "b", "-t", base, "--push")
    cached = fresh_store.build(tmp_path)
    assert "STEP 2/2: CACHED" in cached.stderr  # the local copy is used without --pull
    pulled = fresh_store.build(tmp_path, "--pull")
    assert "[stage-0] new" in pulled.stderr


def test_registry_output_pushes_named_image(
    pybuild: Pybuild,
    context: Callable[[str], Path],
    pushed_base: str,
) -> None:
    name = f"{pushed_base}/interop/exported:7"
    pybuild.build(context("interop"), "--build-arg", f"REGISTRY={pushed_base}",
                  "-o", f"type=registry,name={name}")  # fmt: skip
    assert "7" in pybuild("ls-tags", f"{pushed_base}/interop/exported").stdout.split()


def test_inline_cache_reused_on_a_fresh_machine(
    pybuild: Pybuild,
    fresh_store: Pybuild,
    context: Callable[[str], Path],
    pushed_base: str,
) -> None:
    ctx = context("interop")
    name = f"{pushed_base}/interop/cached:1"
    arg = ("--build-arg", f"REGISTRY={pushed_base}")
    pybuild.build(ctx, *arg, "-t", name, "--cache-to", "type=inline", "--push", "--no-cache")
    assert "io.pybuild.cache.v1" in pybuild.config(name)
    res = fresh_store.build(ctx, *arg, "--cache-from", name, "-t", "from-cache:1")
    assert "step records imported" in res.stderr
    assert [n for n in (2, 3, 4) if f"STEP {n}/4: CACHED" in res.stderr] == [2, 3, 4]
    assert "io.pybuild.cache.v1" not in fresh_store.config("from-cache:1")
    assert fresh_store("run", "from-cache:1").stdout == "hello from the Dockerfile\n"
    missing = fresh_store.build(ctx, *arg, "--cache-from", f"{pushed_base}/interop/none:1")
    assert "warning: --cache-from" in missing.stderr
