"""Run one RUN step in the sandbox from pybuild's side: prepare, start, stream, clean up.

pybuild writes the step's spec and generated files into a private temporary directory,
starts the stdlib-only helper (``builder.sandbox.nsinit``) in a fresh ``python -I -S``
process in its own session (so a terminal's Ctrl-C reaches pybuild, which then stops the
step, rather than the step directly), streams the merged stdout/stderr pipe to
``on_output`` and reads the helper's JSON status messages.

The helper dies with pybuild (``PR_SET_PDEATHSIG``), the step's init dies with the helper,
and the kernel kills everything in the step's PID namespace when init exits. So a
``SIGKILL``\\ed pybuild leaves no step running, and since all mounts live in the step's own
mount namespace, none outlives it. On ``KeyboardInterrupt`` or a timeout pybuild kills the
helper and waits for it before returning.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from builder.errors import SandboxUnavailable, UnknownUserError

Network = Literal["default", "none", "host"]

DEFAULT_HOSTNAME = "buildkitsandbox"  # what BuildKit names every RUN step's host
OUTPUT_TAIL_LINES = 20

# Loads the helper's modules without running the package __init__ files (which may import
# heavier things): the helper needs only the standard library and these few files.
BOOTSTRAP = """\
import sys, types
root = sys.argv.pop(1)
for name in ("builder", "builder.sandbox"):
    module = types.ModuleType(name)
    module.__path__ = [root + "/" + name.replace(".", "/")]
    sys.modules[name] = module
from builder.sandbox.nsinit import main
main(sys.argv)
"""
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent.parent)


def helper_command(spec_path: Path, status_fd: int) -> list[str]:
    """The command line of the stdlib-only helper (isolated mode, no site packages)."""
    return [
        sys.executable,
        "-I",
        "-S",
        "-c",
        BOOTSTRAP,
        PACKAGE_ROOT,
        str(spec_path),
        str(status_fd),
    ]


@dataclass(frozen=True)
class BindMount:
    """A host path bind-mounted into the step (``RUN --mount=type=bind|cache|secret``)."""

    source: Path
    target: str
    readonly: bool = True


@dataclass(frozen=True)
class TmpfsMount:
    """A fresh tmpfs in the step (``RUN --mount=type=tmpfs``); ``size`` in bytes."""

    target: str
    size: int | None = None
    mode: int = 0o1777


@dataclass(frozen=True)
class SandboxConfig:
    """The file system and network a RUN step sees.

    ``lowerdirs`` are the image's unpacked layer directories, top-most first (overlayfs
    ``lowerdir=`` order, never copied); ``upperdir`` receives the step's changes and
    ``workdir`` is overlayfs' scratch directory on the same file system, both empty.
    ``network``: ``"default"`` and ``"host"`` share the host's network (``docker build``'s
    default gives RUN network access), ``"none"`` is a namespace with only ``lo``.
    ``dns`` is the ``/etc/resolv.conf`` content (default: the host's file);
    ``extra_hosts`` are ``(name, address)`` lines added to ``/etc/hosts``.
    """

    lowerdirs: Sequence[Path]
    upperdir: Path
    workdir: Path
    hostname: str = DEFAULT_HOSTNAME
    network: Network = "default"
    extra_hosts: Sequence[tuple[str, str]] = ()
    dns: str | None = None
    binds: Sequence[BindMount] = ()
    tmpfs: Sequence[TmpfsMount] = ()


@dataclass(frozen=True)
class RunResult:
    """How a step ended: exit code (``128 + signal`` when killed), signal, last output lines."""

    exit_code: int
    signal: int | None = None
    output_tail: tuple[str, ...] = ()
    timed_out: bool = False
    duration: float = field(default=0.0, compare=False)


class _Tail:
    """The last complete lines of a byte stream, plus the pending partial line."""

    def __init__(self, lines: int) -> None:
        self.lines: deque[str] = deque(maxlen=lines)
        self.partial = b""

    def feed(self, chunk: bytes) -> None:
        data = self.partial + chunk
        *complete, self.partial = data.split(b"\n")
        for line in complete[-(self.lines.maxlen or 1) :]:
            self.lines.append(line.decode(errors="replace").rstrip("\r"))
        if len(self.partial) > 65536:
            self.partial = self.partial[-65536:]

    def result(self) -> tuple[str, ...]:
        lines = list(self.lines)
        if self.partial:
            lines.append(self.partial.decode(errors="replace").rstrip("\r"))
        return tuple(lines[-(self.lines.maxlen or 1) :])


def _hosts_file(config: SandboxConfig) -> str:
    lines = [
        f"127.0.0.1\tlocalhost {config.hostname}",
        "::1\tlocalhost ip6-localhost ip6-loopback",
    ]
    lines.extend(f"{address}\t{name}" for name, address in config.extra_hosts)
    return "\n".join(lines) + "\n"


def _resolv_conf(config: SandboxConfig) -> str:
    if config.dns is not None:
        return config.dns
    try:
        return Path("/etc/resolv.conf").read_text()
    except OSError:
        return ""


def _validate(config: SandboxConfig, argv: Sequence[str], cwd: str) -> None:
    if not argv:
        raise ValueError("run_in_sandbox: argv is empty")
    if config.network not in ("default", "none", "host"):
        raise ValueError(f"run_in_sandbox: unknown network mode {config.network!r}")
    for name, path in (("upperdir", config.upperdir), ("workdir", config.workdir)):
        if not Path(path).is_dir():
            raise ValueError(f"run_in_sandbox: {name} {path} is not a directory")
    for path in config.lowerdirs:
        if not Path(path).is_dir():
            raise ValueError(f"run_in_sandbox: lower directory {path} is not a directory")
    if not cwd.startswith("/"):
        raise ValueError(f"run_in_sandbox: cwd {cwd!r} is not absolute")
    for bind in config.binds:
        if not bind.target.startswith("/"):
            raise ValueError(f"run_in_sandbox: mount target {bind.target!r} is not absolute")
        if not Path(bind.source).exists():
            raise ValueError(f"run_in_sandbox: mount source {bind.source} does not exist")


def _make_scaffold(scaffold: Path, config: SandboxConfig) -> None:
    """The bottom-most lower layer: every mount point, so none is created in the upper layer."""
    for directory in ("proc", "dev", "sys", "etc"):
        (scaffold / directory).mkdir(parents=True, exist_ok=True)
    for name in ("hosts", "resolv.conf", "hostname"):
        (scaffold / "etc" / name).touch()
    targets = [(b.target, Path(b.source).is_dir()) for b in config.binds]
    targets += [(t.target, True) for t in config.tmpfs]
    for target, is_dir in targets:
        path = scaffold / target.lstrip("/")
        if is_dir:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()


def _is_opaque(path: Path) -> bool:
    for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
        with contextlib.suppress(OSError):
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
    return False


def _subordinate_range(path: str, names: set[str]) -> tuple[int, int] | None:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in names and fields[1].isdigit() and fields[2].isdigit():
            return int(fields[1]), int(fields[2])
    return None


def _rootless_idmap() -> dict[str, list[tuple[int, int, int]]] | None:
    """uid/gid maps onto our ``/etc/subuid``/``subgid`` range, if we have one and the tools."""
    if not (shutil.which("newuidmap") and shutil.which("newgidmap")):
        return None
    uid, gid = os.getuid(), os.getgid()
    import pwd  # deferred: only rootless needs it

    names = {str(uid)}
    with contextlib.suppress(KeyError):
        names.add(pwd.getpwuid(uid).pw_name)
    uids = _subordinate_range("/etc/subuid", names)
    gids = _subordinate_range("/etc/subgid", names | {str(gid)})
    if uids is None or gids is None:
        return None
    return {
        "uid": [(0, uid, 1), (1, uids[0], uids[1])],
        "gid": [(0, gid, 1), (1, gids[0], gids[1])],
    }


def _lower_entry(lowerdirs: Sequence[Path], relative: str) -> os.stat_result | None:
    for lower in lowerdirs:
        with contextlib.suppress(OSError):
            return (Path(lower) / relative).lstat()
    return None


def _remove_created(upperdir: Path, lowerdirs: Sequence[Path], created: Sequence[str]) -> None:
    """Undo mount points the helper had to create through the overlay.

    That happens only where the image hides the scaffold's entry (an opaque directory or a
    whiteout in a layer). The mount points go (deepest first, only while still empty), and
    so do parent directories the creation copied up, when they are empty, not opaque and
    equal in mode and owner to the image's own directory: removing them changes nothing in
    the merged view, and keeps them out of the step's layer.
    """
    parents: set[str] = set()
    for container_path in sorted(set(created), key=lambda p: p.count("/"), reverse=True):
        relative = container_path.strip("/")
        path = upperdir / relative
        try:
            st = path.lstat()
        except OSError:
            continue
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(st.st_mode):
                path.rmdir()  # only if still empty: the step may have put files there
            elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                path.unlink()
        parent = os.path.dirname(relative)
        while parent:
            parents.add(parent)
            parent = os.path.dirname(parent)
    for relative in sorted(
        parents - {c.strip("/") for c in created}, key=lambda p: p.count("/"), reverse=True
    ):
        path = upperdir / relative
        lower = _lower_entry(lowerdirs, relative)
        try:
            st = path.lstat()
            if (
                lower is None
                or not stat.S_ISDIR(st.st_mode)
                or not stat.S_ISDIR(lower.st_mode)
                or (st.st_mode, st.st_uid, st.st_gid) != (lower.st_mode, lower.st_uid, lower.st_gid)
                or _is_opaque(path)
                or any(path.iterdir())
            ):
                continue
            path.rmdir()
        except OSError:
            continue


def _remove_private_dir(private: Path) -> None:
    root = private / "root"
    if os.path.ismount(root):
        # Cannot happen (the overlay lives in the step's mount namespace), but never
        # delete through a mounted image tree.
        return
    shutil.rmtree(private, ignore_errors=True)


def run_in_sandbox(
    config: SandboxConfig,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str = "/",
    user: str | None = None,
    on_output: Callable[[bytes], None] | None = None,
    timeout: float | None = None,
) -> RunResult:
    """Run ``argv`` (exec form; wrap shell form in ``["/bin/sh", "-c", cmd]``) as a RUN step.

    ``env`` is passed as given (``PATH`` defaults to Docker's when unset, ``HOME`` to the
    user's passwd entry); ``user`` is a Dockerfile ``USER`` spec resolved through the image's
    own ``/etc/passwd`` and ``/etc/group``; ``cwd`` is created (owned by the user) if
    missing. Output chunks go to ``on_output`` as they arrive; the last 20 lines are kept in
    the result. Returns when the step and everything it started are gone and unmounted.

    Raises ``UnknownUserError`` for an unknown user or group, ``SandboxUnavailable`` when the
    kernel refuses a namespace or mount, ``ValueError`` for a malformed call.

    May be called from several threads at once (one step each). The helper dies with the
    *thread* that started it (``PR_SET_PDEATHSIG`` follows the forking thread), which is
    fine because this call blocks in that thread until the step is over.
    """
    _validate(config, argv, cwd)
    started = time.monotonic()
    private = Path(tempfile.mkdtemp(prefix="pybuild-run-"))
    try:
        (private / "root").mkdir()
        scaffold = private / "scaffold"
        _make_scaffold(scaffold, config)
        etc = private / "etc"
        etc.mkdir()
        files = {
            "/etc/hosts": _hosts_file(config),
            "/etc/resolv.conf": _resolv_conf(config),
            "/etc/hostname": config.hostname + "\n",
        }
        etc_files = []
        for container_path, content in files.items():
            host_path = etc / Path(container_path).name
            host_path.write_text(content)
            host_path.chmod(0o644)
            etc_files.append((container_path, str(host_path)))
        spec: dict[str, Any] = {
            "mode": "run",
            "parent_pid": os.getpid(),
            "lowerdirs": [str(Path(p).resolve()) for p in config.lowerdirs],
            "upperdir": str(Path(config.upperdir).resolve()),
            "workdir": str(Path(config.workdir).resolve()),
            "private_dir": str(private),
            "rootdir": str(private / "root"),
            "scaffold": str(scaffold),
            "hostname": config.hostname,
            "network": "none" if config.network == "none" else "host",
            "etc_files": etc_files,
            "binds": [
                {"src": str(Path(b.source).resolve()), "dst": b.target, "readonly": b.readonly}
                for b in config.binds
            ],
            "tmpfs": [
                {
                    "dst": t.target,
                    "options": f"mode={t.mode:o}" + (f",size={t.size}" if t.size else ""),
                }
                for t in config.tmpfs
            ],
            "argv": list(argv),
            "env": dict(env),
            "cwd": cwd,
            "user": user,
            "userns": os.geteuid() != 0,
            "uid": os.getuid(),
            "gid": os.getgid(),
            "idmap": _rootless_idmap() if os.geteuid() != 0 else None,
        }
        spec_path = private / "spec.json"
        spec_path.write_text(json.dumps(spec))
        messages = _run_helper(spec_path, on_output=on_output, timeout=timeout)
        created = [p for m in messages.events if "created" in m for p in m["created"]]
        if created:
            _remove_created(Path(config.upperdir), config.lowerdirs, created)
    finally:
        _remove_private_dir(private)
    return messages.result(started)


@dataclass
class _HelperOutcome:
    events: list[dict[str, Any]]
    tail: tuple[str, ...]
    returncode: int
    timed_out: bool

    def result(self, started: float) -> RunResult:
        duration = time.monotonic() - started
        by_key = {key: m[key] for m in self.events for key in m}
        if self.timed_out:
            return RunResult(
                exit_code=128 + signal.SIGKILL,
                signal=signal.SIGKILL,
                output_tail=self.tail,
                timed_out=True,
                duration=duration,
            )
        if "error" in by_key:
            kind = by_key.get("kind", "setup")
            if kind == "user":
                raise UnknownUserError(by_key["error"])
            raise SandboxUnavailable(f"RUN sandbox: {by_key['error']}")
        if "signal" in by_key:
            signum = int(by_key["signal"])
            return RunResult(128 + signum, signum, self.tail, duration=duration)
        if "exit" in by_key:
            return RunResult(int(by_key["exit"]), None, self.tail, duration=duration)
        detail = ""
        if "init_status" in by_key:
            status = int(by_key["init_status"])
            if os.WIFSIGNALED(status):
                detail = f" (killed by signal {os.WTERMSIG(status)})"
        elif self.returncode < 0:
            detail = f" (helper killed by signal {-self.returncode})"
        raise SandboxUnavailable(
            f"RUN sandbox: the step's init process ended without a status{detail}"
            + "".join(f"\n  {line}" for line in self.tail)
        )


def _run_helper(
    spec_path: Path,
    *,
    on_output: Callable[[bytes], None] | None,
    timeout: float | None,
) -> _HelperOutcome:
    status_r, status_w = os.pipe()
    try:
        process = subprocess.Popen(
            helper_command(spec_path, status_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=(status_w,),
            start_new_session=True,
            env={"LC_ALL": "C.UTF-8"},
        )
    finally:
        os.close(status_w)
    assert process.stdout is not None
    output_fd = process.stdout.fileno()
    tail = _Tail(OUTPUT_TAIL_LINES)
    status_buffer = b""
    timed_out = False
    deadline = None if timeout is None else time.monotonic() + timeout
    selector = selectors.DefaultSelector()
    interrupted = True
    try:
        selector.register(output_fd, selectors.EVENT_READ, "output")
        selector.register(status_r, selectors.EVENT_READ, "status")
        open_streams = 2
        while open_streams:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = selector.select(wait)
            if not ready and deadline is not None and time.monotonic() >= deadline:
                timed_out = True
                break
            for key, _ in ready:
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    open_streams -= 1
                elif key.data == "output":
                    tail.feed(chunk)
                    if on_output is not None:
                        on_output(chunk)
                else:
                    status_buffer += chunk
        interrupted = False
    finally:
        selector.close()
        if timed_out or interrupted:
            # Killing the helper cascades: init gets PDEATHSIG, the kernel kills the rest.
            # Then wait for the output pipe's EOF: every process of the step is gone.
            process.kill()
            _drain(output_fd, limit=10.0)
        process.wait()
        process.stdout.close()
        os.close(status_r)
    events = []
    for line in status_buffer.splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return _HelperOutcome(events, tail.result(), process.returncode, timed_out)


def _drain(fd: int, *, limit: float) -> None:
    """Read ``fd`` until EOF (all writers gone) or ``limit`` seconds, discarding the data."""
    deadline = time.monotonic() + limit
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0:
            if selector.select(remaining) and not os.read(fd, 65536):
                return
