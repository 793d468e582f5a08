"""Conformance fixtures: a registry with a busybox base, and every selected case built twice.

Each case is a folder ``fixtures/conformance/<case>/`` (a Dockerfile, a small context and an
optional ``case.json``; :class:`Case` documents its keys). The session builds every selected
case once with pybuild and once with Buildah (a private ``--root``/``--runroot`` for the
session, removed afterwards), exports both as docker-archive tars and hands the tests their
paths. The builds run a few at a time in threads (they are subprocesses): pybuild's in
parallel, Buildah's one at a time (its store is shared by the session), cases named as a
``base`` by another case first.

The base image is made from ``busybox-static`` with every mtime pinned to
:data:`BASE_TIME`, imported and pushed by pybuild to a private ``docker-registry``; contexts
are copied to a temporary folder and pinned to :data:`CONTEXT_TIME`, so any later mtime in a
result can only be the builder's clock (see :mod:`.fsmodel`).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..registry.conftest import RegistryServer, plain_registry  # noqa: F401 - a fixture

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "fixtures" / "conformance"
BASE_TIME = 946684800  # 2000-01-01: every file of the busybox base
CONTEXT_TIME = 1577836800  # 2020-01-01: every file of a build context
ARCHIVE_TIME = 1546300800  # 2019-01-01: members of tar archives made for ADD
BUILD_TIMEOUT = 180
WORKERS = 3  # builds in flight: subprocesses, so threads are enough; 2 cores


@dataclass
class Case:
    """One conformance case, read from ``fixtures/conformance/<name>/case.json``.

    Keys (all optional): ``description``; ``build_args`` {K: V}; ``target`` (a stage);
    ``base`` (another case built first and tagged ``REGISTRY/conformance/<base>:latest`` in each
    tool's store); ``context`` (a list of operations making what git cannot hold: see
    :func:`prepare_context`); ``skip_config`` {path: reason} and ``skip_fs``
    {field: {"types": [...], "reason": ...}} beyond the defaults; ``documented`` (where Buildah
    departs from the Dockerfile reference: each {"config": path} or {"path": p, "field": f}
    with ``expected``, ``reason`` and ``reference``: pybuild must give ``expected``, Buildah
    is checked to still differ); ``xfail`` {"config"|"fs": "pybuild: …"} (a known pybuild
    defect, strict); ``buildah_dockerfile`` {file, reason, reference}: where Buildah cannot
    read a documented construct at all, the file (in the case folder) says the same without
    it and Buildah builds that instead.
    """

    name: str
    description: str = ""
    build_args: dict[str, str] = field(default_factory=dict)
    target: str = ""
    base: str = ""
    context: list[dict[str, Any]] = field(default_factory=list)
    skip_config: dict[str, str] = field(default_factory=dict)
    skip_fs: dict[str, dict[str, Any]] = field(default_factory=dict)
    documented: list[dict[str, Any]] = field(default_factory=list)
    xfail: dict[str, str] = field(default_factory=dict)
    buildah_dockerfile: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, name: str) -> Case:
        spec = CASES / name / "case.json"
        data = json.loads(spec.read_text()) if spec.exists() else {}
        known = {f for f in cls.__dataclass_fields__ if f != "name"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{spec}: unknown keys {sorted(unknown)}")
        return cls(name=name, **data)

    def image(self, registry: str) -> str:
        return f"{registry}/conformance/{self.name}:latest"


def case_names() -> list[str]:
    return sorted(p.name for p in CASES.iterdir() if (p / "Dockerfile").exists())


# -- contexts ---------------------------------------------------------------------------


def _mode(value: str | int) -> int:
    return int(value, 8) if isinstance(value, str) else value


def prepare_context(case: Case, dest: Path) -> Path:
    """Copy the case folder (without case.json) to ``dest``, apply its operations, pin mtimes.

    Operations (``op`` and its keys): ``write`` path text; ``mkdir`` path [mode]; ``chmod``
    path mode; ``chown`` path uid gid; ``symlink`` path target; ``hardlink`` path target;
    ``xattr`` path name hex (the value, hex-encoded);
    ``tar`` path from [compression: ""|"gz"|"bz2"|"xz"] (an archive of a folder of the
    case, members owned by uid/gid 0 unless ``uid``/``gid`` are given, dated ARCHIVE_TIME; the
    folder is removed from the context unless ``keep``).
    """
    shutil.copytree(
        CASES / case.name, dest, symlinks=True, ignore=shutil.ignore_patterns("case.json")
    )
    for op in case.context:
        path = dest / op["path"]
        kind = op["op"]
        if kind == "write":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(op["text"])
        elif kind == "mkdir":
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(_mode(op.get("mode", "0755")))
        elif kind == "chmod":
            path.chmod(_mode(op["mode"]))
        elif kind == "chown":
            os.chown(path, op["uid"], op["gid"], follow_symlinks=False)
        elif kind == "symlink":
            path.symlink_to(op["target"])
        elif kind == "hardlink":
            os.link(dest / op["target"], path)
        elif kind == "xattr":
            os.setxattr(path, op["name"], bytes.fromhex(op["hex"]), follow_symlinks=False)
        elif kind == "tar":
            source = dest / op["from"]
            _make_tar(path, source, op.get("compression", ""), op.get("uid", 0), op.get("gid", 0))
            if not op.get("keep"):
                shutil.rmtree(source)
        else:
            raise ValueError(f"{case.name}: unknown context op {kind!r}")
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in [*dirnames, *filenames]:
            os.utime(Path(dirpath) / name, (CONTEXT_TIME, CONTEXT_TIME), follow_symlinks=False)
    os.utime(dest, (CONTEXT_TIME, CONTEXT_TIME))
    return dest


def _make_tar(path: Path, source: Path, compression: str, uid: int, gid: int) -> None:
    def pin(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime = ARCHIVE_TIME
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
        return info

    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for child in sorted(source.rglob("*")):
            tar.add(child, arcname=str(child.relative_to(source)), recursive=False, filter=pin)


# -- the tools --------------------------------------------------------------------------


@dataclass
class BuildResult:
    archive: Path | None
    log: str

    def require(self, tool: str) -> Path:
        if self.archive is None:
            pytest.fail(f"{tool} build failed:\n{self.log[-4000:]}", pytrace=False)
        return self.archive


def _run(argv: list[str], env: dict[str, str] | None = None) -> tuple[bool, str]:
    try:
        proc = subprocess.run(
            argv, capture_output=True, env=env, timeout=BUILD_TIMEOUT, cwd=ROOT, check=False
        )
    except subprocess.TimeoutExpired as e:
        return False, f"timed out after {BUILD_TIMEOUT}s: {' '.join(argv)}\n{e.stderr!r}"
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    return proc.returncode == 0, f"$ {' '.join(argv)}\n{out}"


@dataclass
class Tools:
    """pybuild and Buildah, each with a private store for the session."""

    work: Path
    registry: str
    http: str = ""  # host:port of a file server for ADD <url>: serves work/cases/
    buildah_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_archive(self) -> Path:
        """The busybox base as a docker-archive (what a case that changes nothing would be)."""
        return self.work / "base.tar"

    @property
    def pybuild_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("SOURCE_DATE_EPOCH", None)
        env["PYBUILD_ROOT"] = str(self.work / "pybuild")
        env["PYBUILD_INSECURE_REGISTRIES"] = self.registry
        return env

    def pybuild(self, *args: str) -> tuple[bool, str]:
        return _run([sys.executable, "-m", "builder", *args], self.pybuild_env)

    def buildah(self, *args: str) -> tuple[bool, str]:
        root = self.work / "buildah"
        env = dict(os.environ)
        env.pop("SOURCE_DATE_EPOCH", None)
        return _run(
            [
                "buildah",
                "--root",
                str(root / "root"),
                "--runroot",
                str(root / "run"),
                "--storage-driver",
                "overlay",
                *args,
            ],
            env,
        )

    def _args(self, case: Case, context: Path, dockerfile: str = "Dockerfile") -> list[str]:
        args = ["--build-arg", f"REGISTRY={self.registry}"]
        if "ARG HTTP" in (context / dockerfile).read_text():
            args += ["--build-arg", f"HTTP={self.http}"]
        for key, value in case.build_args.items():
            args += ["--build-arg", f"{key}={value}"]
        if case.target:
            args += ["--target", case.target]
        return [*args, "-t", case.image(self.registry), "-f", str(context / dockerfile)]

    def build_pybuild(self, case: Case, context: Path, out: Path) -> BuildResult:
        archive = out / "pybuild.tar"
        ok, log = self.pybuild(
            "build",
            "--progress",
            "plain",
            *self._args(case, context),
            "-o",
            f"type=docker,dest={archive}",
            str(context),
        )
        return BuildResult(archive if ok else None, log)

    def build_buildah(self, case: Case, context: Path, out: Path) -> BuildResult:
        with self.buildah_lock:  # one store: concurrent bud runs in it have raced (--mount from=)
            return self._build_buildah(case, context, out)

    def _build_buildah(self, case: Case, context: Path, out: Path) -> BuildResult:
        archive = out / "buildah.tar"
        image = case.image(self.registry)
        ok, log = self.buildah(
            "bud",
            "--layers",
            "--pull=false",
            "--isolation",
            "chroot",
            "--network",
            "host",
            "--tls-verify=false",
            "--format",
            "docker",
            *self._args(case, context, case.buildah_dockerfile.get("file", "Dockerfile")),
            str(context),
        )
        if ok:
            ok, push_log = self.buildah("push", image, f"docker-archive:{archive}:{image}")
            log += push_log
        return BuildResult(archive if ok else None, log)

    def cleanup(self) -> None:
        subprocess.run(
            ["umount", "-R", str(self.work / "buildah" / "root" / "overlay")],
            capture_output=True,
            check=False,
        )
        if os.environ.get("CONFORMANCE_KEEP"):  # keep contexts and archives to look at
            shutil.rmtree(self.work / "buildah", ignore_errors=True)
            sys.stderr.write(f"\nconformance: contexts and archives kept in {self.work}/cases\n")
            return
        shutil.rmtree(self.work, ignore_errors=True)


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "builds need root (namespaces and overlayfs)"
    for tool, package in (("buildah", "buildah"), ("busybox", "busybox-static")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install {package})"
    try:
        from builder.sandbox import check_sandbox_support

        check_sandbox_support()
    except Exception as e:  # SandboxUnavailable, with the reason
        return f"pybuild cannot build here: {e}"
    return None


def _tmpfs_dir(prefix: str) -> Path:
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


@pytest.fixture(scope="session")
def tools(plain_registry: RegistryServer) -> Iterator[Tools]:  # noqa: F811
    """Both tools, with the busybox base pushed to the registry as library/busybox:latest."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    work = _tmpfs_dir("pybuild-conformance-")
    (work / "cases").mkdir()
    server = _file_server(work / "cases")
    found = Tools(work, plain_registry.host, f"127.0.0.1:{server.server_address[1]}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rootfs = work / "busybox"
        subprocess.run([str(ROOT / "scripts" / "make-busybox-rootfs"), str(rootfs)], check=True)
        for dirpath, dirnames, filenames in os.walk(rootfs):
            for name in [*dirnames, *filenames]:
                os.utime(Path(dirpath) / name, (BASE_TIME, BASE_TIME), follow_symlinks=False)
        base = f"{found.registry}/library/busybox:latest"
        for argv in (
            ["import", str(rootfs), base, "--change", 'CMD ["sh"]'],
            ["push", base],
            ["save", base, "-o", str(found.base_archive)],
        ):
            ok, log = found.pybuild(*argv)
            if not ok:
                pytest.fail(f"making the busybox base failed:\n{log}", pytrace=False)
        yield found
    finally:
        server.shutdown()
        server.server_close()
        found.cleanup()


def _file_server(root: Path) -> http.server.ThreadingHTTPServer:
    """A plain HTTP server of ``root`` (Last-Modified from each file's mtime), quiet."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@dataclass
class CaseBuilds:
    case: Case
    pybuild: BuildResult
    buildah: BuildResult


@pytest.fixture(scope="session")
def builds(request: pytest.FixtureRequest, tools: Tools) -> dict[str, CaseBuilds]:
    """Every case the session's tests name, built by both tools (bases first)."""
    wanted: set[str] = set()
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "case_name" in callspec.params:
            wanted.add(callspec.params["case_name"])
    cases = {name: Case.load(name) for name in case_names()}
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        base = cases[name].base
        if base:
            visit(base)
        order.append(name)

    for name in sorted(wanted):
        visit(name)
    started = time.monotonic()
    results: dict[str, CaseBuilds] = {}
    futures: dict[tuple[str, str], Future[BuildResult]] = {}
    with ThreadPoolExecutor(WORKERS) as pool:

        def build(name: str, tool: str) -> BuildResult:
            case = cases[name]
            if case.base:
                futures[(case.base, tool)].result()  # submitted earlier: bases first
            out = tools.work / "cases" / name
            context = out / "context"
            if tool == "pybuild":
                return tools.build_pybuild(case, context, out)
            return tools.build_buildah(case, context, out)

        for name in order:
            # Contexts are prepared here, before either build thread starts on them.
            out = tools.work / "cases" / name
            out.mkdir(parents=True, exist_ok=True)
            prepare_context(cases[name], out / "context")
            for tool in ("buildah", "pybuild"):
                futures[(name, tool)] = pool.submit(build, name, tool)
        for name in order:
            results[name] = CaseBuilds(
                cases[name],
                futures[(name, "pybuild")].result(),
                futures[(name, "buildah")].result(),
            )
    elapsed = time.monotonic() - started
    sys.stderr.write(f"\nconformance: built {len(order)} cases with both tools in {elapsed:.1f}s\n")
    return results
