"""The RUN sandbox against a real busybox root file system, real namespaces and overlayfs.

Every test that runs a step needs root and overlayfs (marked ``root``, skipped otherwise);
``resolve_user`` is also checked on its own, which needs neither.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from builder.errors import UnknownUserError
from builder.sandbox import (
    BindMount,
    RunResult,
    SandboxConfig,
    TmpfsMount,
    check_sandbox_support,
    resolve_user,
    run_in_sandbox,
)

BUSYBOX = Path("/bin/busybox")
DOCKER_CAPBND = "00000000a80425fb"
ROOT_DIR = Path(__file__).resolve().parent.parent.parent


def _overlay_available() -> bool:
    try:
        return "overlay" in Path("/proc/filesystems").read_text()
    except OSError:
        return False


@pytest.fixture(scope="session")
def sandbox_ready() -> None:
    """Skip (with the reason) unless this machine can build the RUN sandbox."""
    if os.geteuid() != 0:
        pytest.skip("the RUN sandbox tests run as root (namespaces, overlayfs, device nodes)")
    if not _overlay_available():
        pytest.skip("overlayfs is not listed in /proc/filesystems")
    if not BUSYBOX.exists():
        pytest.skip("/bin/busybox missing (Debian package busybox-static)")
    check_sandbox_support()


PASSWD = """\
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
app:x:1000:1000:app:/home/app:/bin/sh
"""
GROUP = """\
root:x:0:
extra:x:2000:app
nogroup:x:65534:
app:x:1000:
"""


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox image tree: applet links, passwd/group with a test user, a file and a dir."""
    if not BUSYBOX.exists():
        pytest.skip("/bin/busybox missing (Debian busybox-static)")
    root = tmp_path_factory.mktemp("busybox-rootfs")
    (root / "bin").mkdir()
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        link = root / applet
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists() and not link.is_symlink():
            link.symlink_to("/bin/busybox")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    (root / "etc" / "motd").write_text("lower motd\n")
    (root / "data").mkdir()
    (root / "data" / "old.txt").write_text("lower data\n")
    (root / "root").mkdir(mode=0o700)
    (root / "home" / "app").mkdir(parents=True)
    if os.geteuid() == 0:
        os.chown(root / "home" / "app", 1000, 1000)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    return root


@pytest.fixture
def layer_dirs(tmp_path: Path) -> tuple[Path, Path]:
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    return upper, work


Runner = Callable[..., RunResult]


@pytest.fixture
def run(sandbox_ready: None, rootfs: Path, layer_dirs: tuple[Path, Path]) -> Runner:
    """Run a shell script in a fresh step over ``rootfs``; extra kwargs go to the config/run."""
    upper, work = layer_dirs

    def runner(script: str, **kwargs: object) -> RunResult:
        config_keys = {"hostname", "network", "extra_hosts", "dns", "binds", "tmpfs"}
        config_kwargs = {k: v for k, v in kwargs.items() if k in config_keys}
        run_kwargs = {k: v for k, v in kwargs.items() if k not in config_keys}
        run_kwargs.setdefault("env", {})
        config = SandboxConfig(
            lowerdirs=[rootfs],
            upperdir=upper,
            workdir=work,
            **config_kwargs,  # type: ignore[arg-type]
        )
        return run_in_sandbox(config, ["/bin/sh", "-c", script], **run_kwargs)  # type: ignore[arg-type]

    return runner


def _upper_tree(upper: Path) -> dict[str, str]:
    """Every entry of the upper directory → a short description of what it is."""
    tree = {}
    for path in sorted(upper.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(upper))
        if stat.S_ISCHR(st.st_mode):
            tree[rel] = f"chr {os.major(st.st_rdev)}/{os.minor(st.st_rdev)}"
        elif stat.S_ISDIR(st.st_mode):
            try:
                opaque = os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False)
            except OSError:
                opaque = b""
            tree[rel] = "dir opaque" if opaque == b"y" else "dir"
        elif stat.S_ISREG(st.st_mode):
            tree[rel] = "file " + path.read_text()
        else:
            tree[rel] = "other"
    return tree


# ---------------------------------------------------------------------------- isolation

HOST_MARKER = Path("/tmp") / f"pybuild-sandbox-marker-{os.getpid()}"

# (id, script, config/run kwargs, expected stdout lines)
ISOLATION_CASES = [
    ("host-tmp-invisible", f"test -e {HOST_MARKER} && echo visible || echo hidden", {}, ["hidden"]),
    (
        "pid-namespace",
        "echo $$; cat /proc/1/cmdline | tr '\\0' ' ' | grep -c nsinit",
        {},
        ["2", "1"],
    ),
    (
        "init-ignores-step-signals",
        "kill -INT 1; kill -TERM 1; kill -HUP 1; sleep 0.1; echo alive",
        {},
        ["alive"],
    ),
    (
        "no-host-processes",
        "ls /proc | grep -E '^[0-9]+$' | awk '$1 > 20' | wc -l",
        {},
        ["0"],
    ),
    ("default-hostname", "hostname; cat /etc/hostname", {}, ["buildkitsandbox"] * 2),
    ("own-hostname", "hostname", {"hostname": "step-host"}, ["step-host"]),
    (
        "network-none-only-lo",
        "ls /sys/class/net; cat /sys/class/net/lo/flags",
        {"network": "none"},
        ["lo", "0x9"],
    ),
    (
        "network-none-proc-net-dev",
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
        {"network": "none"},
        ["lo"],
    ),
    ("capability-bounding-set", "grep CapBnd /proc/self/status | cut -f2", {}, [DOCKER_CAPBND]),
    ("root-effective-caps", "grep CapEff /proc/self/status | cut -f2", {}, [DOCKER_CAPBND]),
    (
        "user-has-no-effective-caps",
        "grep -E 'Cap(Eff|Prm)' /proc/self/status | cut -f2",
        {"user": "app"},
        ["0000000000000000"] * 2,
    ),
    (
        "cannot-mount",
        "mount -t tmpfs none /mnt 2>/dev/null && echo mounted || echo refused",
        {},
        ["refused"],
    ),
    (
        "cannot-set-hostname",
        "hostname other 2>/dev/null && echo changed || echo refused",
        {},
        ["refused"],
    ),
    # CAP_SYS_NICE is not in Docker's set (a harmless probe: nothing outside changes if it works)
    (
        "cannot-raise-priority",
        "renice -n -5 $$ >/dev/null 2>&1 && echo raised || echo refused",
        {},
        ["refused"],
    ),
    (
        "proc-sys-read-only",
        "echo 1 2>/dev/null > /proc/sys/kernel/sysrq && echo wrote || echo refused",
        {},
        ["refused"],
    ),
    ("sys-read-only", "touch /sys/x 2>/dev/null && echo wrote || echo refused", {}, ["refused"]),
    ("no-new-privs-off", "grep NoNewPrivs /proc/self/status | cut -f2", {}, ["0"]),
    ("stdin-is-dev-null", "cat; readlink /proc/self/fd/0", {}, ["/dev/null"]),
    (
        "dev-nodes",
        "ls /dev | tr '\\n' ' '",
        {},
        ["fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero "],
    ),
    (
        "dev-shm-writable",
        "echo x > /dev/shm/a && cat /dev/shm/a && stat -c %a /dev/shm",
        {},
        ["x", "1777"],
    ),
    ("dev-ptmx-opens", "exec 3<>/dev/ptmx && ls /dev/pts | tr '\\n' ' '", {}, ["0 ptmx "]),
    ("dev-null-works", "echo x > /dev/null && head -c 4 /dev/zero | wc -c", {}, ["4"]),
    (
        "default-path",
        "echo $PATH",
        {},
        ["/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    ),
    ("env-as-given", "echo $FOO $PATH", {"env": {"FOO": "bar", "PATH": "/bin"}}, ["bar /bin"]),
    ("home-from-passwd", "echo $HOME", {"user": "app"}, ["/home/app"]),
    ("home-and-hostname-defaults", "echo $HOME $HOSTNAME", {"env": {}}, ["/root buildkitsandbox"]),
    ("env-wins-over-defaults", "echo $HOME", {"env": {"HOME": "/x"}}, ["/x"]),
    ("hosts-file", "cat /etc/hosts | head -1", {}, ["127.0.0.1\tlocalhost buildkitsandbox"]),
    (
        "extra-hosts",
        "grep reg /etc/hosts",
        {"extra_hosts": [("reg.local", "10.0.0.7")]},
        ["10.0.0.7\treg.local"],
    ),
    ("dns", "cat /etc/resolv.conf", {"dns": "nameserver 10.9.8.7\n"}, ["nameserver 10.9.8.7"]),
    (
        "resolv-read-only",
        "echo x 2>/dev/null >> /etc/resolv.conf && echo wrote || echo refused",
        {},
        ["refused"],
    ),
    (
        "workdir-created",
        "pwd; stat -c %u:%g /w/a/b /w",
        {"cwd": "/w/a/b", "user": "app"},
        ["/w/a/b", "1000:1000", "1000:1000"],
    ),
    ("workdir-existing", "pwd; stat -c %u /data", {"cwd": "/data", "user": "app"}, ["/data", "0"]),
    ("tmp-sticky", "stat -c %a /tmp", {}, ["1777"]),
]


@pytest.mark.root
@pytest.mark.parametrize(
    ("script", "kwargs", "expected"),
    [c[1:] for c in ISOLATION_CASES],
    ids=[c[0] for c in ISOLATION_CASES],
)
@pytest.mark.usefixtures("host_marker")
def test_step_sees_only_its_sandbox(
    run: Runner, script: str, kwargs: dict[str, object], expected: list[str]
) -> None:
    result = run(script, **kwargs)
    assert (result.exit_code, list(result.output_tail)) == (0, expected)


@pytest.fixture
def host_marker() -> Iterator[None]:
    HOST_MARKER.write_text("host secret\n")
    yield
    HOST_MARKER.unlink(missing_ok=True)


@pytest.mark.root
def test_default_network_is_the_hosts(run: Runner) -> None:
    host = sorted(os.listdir("/sys/class/net"))
    result = run("ls /sys/class/net")
    assert list(result.output_tail) == host


# ---------------------------------------------------------------------------- users

# (USER spec, expected `id` output)
USER_CASES = [
    (None, "uid=0(root) gid=0(root) groups=0(root)"),
    ("root", "uid=0(root) gid=0(root) groups=0(root)"),
    ("app", "uid=1000(app) gid=1000(app) groups=1000(app),2000(extra)"),
    ("1000", "uid=1000(app) gid=1000(app) groups=1000(app),2000(extra)"),
    ("1000:1000", "uid=1000(app) gid=1000(app) groups=1000(app)"),
    ("app:extra", "uid=1000(app) gid=2000(extra) groups=2000(extra)"),
    ("nobody", "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"),
    ("4242", "uid=4242 gid=0(root) groups=0(root)"),
    ("4242:4343", "uid=4242 gid=4343 groups=4343"),
]


@pytest.mark.root
@pytest.mark.parametrize(("spec", "expected"), USER_CASES)
def test_user_resolved_through_the_images_passwd(
    run: Runner, spec: str | None, expected: str
) -> None:
    result = run("id", user=spec)
    assert (result.exit_code, result.output_tail) == (0, (expected,))


# (rootfs-relative passwd/group, spec, expected (uid, gid, groups) or error text)
RESOLVE_CASES = [
    ("app", (1000, 1000, (1000, 2000))),
    ("app:2000", (1000, 2000, (2000,))),
    ("0:extra", (0, 2000, (2000,))),
    (":extra", (0, 2000, (2000,))),
    ("", (0, 0, (0,))),
    ("ghost", "unable to find user ghost: no matching entries in passwd file"),
    ("app:ghosts", "unable to find group ghosts: no matching entries in group file"),
]


@pytest.mark.parametrize(("spec", "expected"), RESOLVE_CASES)
def test_resolve_user(rootfs: Path, spec: str, expected: object) -> None:
    if isinstance(expected, str):
        with pytest.raises(UnknownUserError, match=expected):
            resolve_user(rootfs, spec)
    else:
        assert resolve_user(rootfs, spec) == expected


def test_resolve_user_never_reads_the_hosts_passwd(tmp_path: Path) -> None:
    # /etc escapes the tree with ../ and an absolute link: both must stay inside it.
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "etc").symlink_to("../../../../../../etc")
    with pytest.raises(UnknownUserError, match="unable to find user root"):
        resolve_user(tmp_path / "img", "root")
    (tmp_path / "img2" / "etc").mkdir(parents=True)
    (tmp_path / "img2" / "etc" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(UnknownUserError, match="unable to find user root"):
        resolve_user(tmp_path / "img2", "root")


@pytest.mark.root
def test_unknown_user_is_a_clear_error(run: Runner) -> None:
    with pytest.raises(
        UnknownUserError, match="unable to find user ghost: no matching entries in passwd file"
    ):
        run("id", user="ghost")


# ---------------------------------------------------------------------------- exit status, output

# (id, script, exit code, signal, last output line)
EXIT_CASES = [
    ("success", "true", 0, None, None),
    ("exit-code", "echo failing; exit 3", 3, None, "failing"),
    ("killed-by-signal", "kill -KILL $$", 137, signal.SIGKILL, None),
    ("terminated", "kill -TERM $$", 143, signal.SIGTERM, None),
]


@pytest.mark.root
@pytest.mark.parametrize(
    ("script", "code", "signum", "last"),
    [c[1:] for c in EXIT_CASES],
    ids=[c[0] for c in EXIT_CASES],
)
def test_exit_status_reported(
    run: Runner, script: str, code: int, signum: int | None, last: str | None
) -> None:
    result = run(script)
    assert (result.exit_code, result.signal) == (code, signum)
    assert result.output_tail[-1:] == ((last,) if last else ())


@pytest.mark.root
@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["no-such-command"], 127, 'exec: "no-such-command": executable file not found in $PATH'),
        (["/etc/motd"], 126, 'exec: "/etc/motd": permission denied'),
    ],
)
def test_exec_failure_is_reported(
    sandbox_ready: None,
    rootfs: Path,
    layer_dirs: tuple[Path, Path],
    argv: list[str],
    code: int,
    message: str,
) -> None:
    upper, work = layer_dirs
    config = SandboxConfig(lowerdirs=[rootfs], upperdir=upper, workdir=work)
    result = run_in_sandbox(config, argv, env={})
    assert (result.exit_code, result.output_tail) == (code, (message,))


@pytest.mark.root
def test_output_streams_in_order_and_keeps_the_tail(run: Runner) -> None:
    chunks: list[bytes] = []
    script = "i=0; while [ $i -lt 300 ]; do echo out $i; echo err $i >&2; i=$((i+1)); done; printf partial"
    result = run(script, on_output=chunks.append)
    expected = [f"{stream} {i}" for i in range(300) for stream in ("out", "err")] + ["partial"]
    assert b"".join(chunks).decode().split("\n") == expected
    assert result.output_tail == tuple(expected[-20:])


# ---------------------------------------------------------------------------- the upper layer


def _our_mounts(*paths: Path) -> list[str]:
    """Host mount table lines that concern these paths or a step's private directory.

    Only those: other processes on the machine (another build, buildah in a benchmark)
    may mount and unmount at the same time, so the whole table is not stable.
    """
    needles = [str(p) for p in paths] + ["pybuild-run-"]
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in lines if any(n in line for n in needles)]


@pytest.mark.root
def test_noop_step_leaves_upper_empty_and_no_mounts(
    run: Runner, layer_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    upper, _ = layer_dirs
    source = tmp_path / "ctx"
    source.mkdir()
    (source / "file").write_text("from the context\n")
    before = _our_mounts(upper, tmp_path)
    result = run(
        "cat /ctx/file /etc/hosts /etc/resolv.conf /etc/hostname > /dev/null && ls /proc /sys /dev /cache/deep > /dev/null",
        binds=[BindMount(source, "/ctx"), BindMount(source / "file", "/etc/from-context")],
        tmpfs=[TmpfsMount("/cache/deep", size=1 << 20)],
    )
    assert result.exit_code == 0, result.output_tail
    assert _upper_tree(upper) == {}
    assert _our_mounts(upper, tmp_path) == before


@pytest.mark.root
def test_mount_points_hidden_by_an_opaque_layer_stay_out_of_upper(
    sandbox_ready: None, rootfs: Path, layer_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    # A layer that replaced /etc and /data (opaque) hides the scaffold's mount points, so
    # they are created through the overlay and must be removed again afterwards.
    top = tmp_path / "top"
    for directory in ("etc", "data"):
        (top / directory).mkdir(parents=True)
        os.setxattr(top / directory, "trusted.overlay.opaque", b"y")
    (top / "etc" / "passwd").write_text(PASSWD)
    (top / "etc" / "group").write_text(GROUP)
    upper, work = layer_dirs
    config = SandboxConfig(
        lowerdirs=[top, rootfs],
        upperdir=upper,
        workdir=work,
        tmpfs=[TmpfsMount("/data/cache/x")],
    )
    result = run_in_sandbox(
        config, ["/bin/sh", "-c", "cat /etc/hosts >/dev/null; ls /etc; id -un"], env={}, user="app"
    )
    assert result.output_tail == ("group", "hostname", "hosts", "passwd", "resolv.conf", "app")
    assert _upper_tree(upper) == {}


@pytest.mark.root
def test_many_layers_with_long_paths(
    sandbox_ready: None, rootfs: Path, layer_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    # 120 layers × ~130-character paths: far more than mount(2)'s one page of options.
    layers = []
    for index in range(120):
        layer = tmp_path / ("layer-" + "x" * 60) / f"{index:03d}"
        (layer / "layers").mkdir(parents=True)
        (layer / "layers" / f"{index:03d}").write_text("")
        (layer / "which").write_text(f"{index}\n")
        layers.append(layer)
    upper, work = layer_dirs
    config = SandboxConfig(lowerdirs=[*layers, rootfs], upperdir=upper, workdir=work)
    result = run_in_sandbox(config, ["/bin/sh", "-c", "cat /which; ls /layers | wc -l"], env={})
    assert result.output_tail == ("0", "120")  # the first lowerdir is the top-most


@pytest.mark.root
def test_upper_holds_exactly_the_steps_changes(run: Runner, layer_dirs: tuple[Path, Path]) -> None:
    upper, _ = layer_dirs
    script = "echo new > /newfile && rm /etc/motd && rm -r /data && mkdir /data && echo y > /data/y"
    assert run(script).exit_code == 0
    assert _upper_tree(upper) == {
        "newfile": "file new\n",
        "etc": "dir",
        "etc/motd": "chr 0/0",
        "data": "dir opaque",
        "data/y": "file y\n",
    }


@pytest.mark.root
def test_binds_are_read_only_unless_asked(run: Runner, tmp_path: Path) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    script = "touch /ro/x 2>/dev/null && echo wrote || echo refused; echo hi > /rw/x && echo wrote"
    result = run(script, binds=[BindMount(ro, "/ro"), BindMount(rw, "/rw", readonly=False)])
    assert result.output_tail == ("refused", "wrote")
    assert (rw / "x").read_text() == "hi\n"


@pytest.mark.root
def test_parallel_steps_from_threads(sandbox_ready: None, rootfs: Path, tmp_path: Path) -> None:
    # The executor runs stages in parallel threads: each step gets its own sandbox.
    from concurrent.futures import ThreadPoolExecutor

    def step(index: int) -> tuple[RunResult, dict[str, str]]:
        upper, work = tmp_path / f"upper{index}", tmp_path / f"work{index}"
        upper.mkdir()
        work.mkdir()
        config = SandboxConfig(
            lowerdirs=[rootfs], upperdir=upper, workdir=work, hostname=f"h{index}"
        )
        result = run_in_sandbox(config, ["/bin/sh", "-c", "hostname; hostname > /mine"], env={})
        return result, _upper_tree(upper)

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(step, range(8)))
    for index, (result, tree) in enumerate(outcomes):
        assert (result.exit_code, result.output_tail) == (0, (f"h{index}",))
        assert tree == {"mine": f"file h{index}\n"}


# ---------------------------------------------------------------------------- stopping a step


def _sleepers(seconds: str) -> list[int]:
    """PIDs of host processes running exactly ``sleep SECONDS`` (a unique duration per test)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"sleep", seconds.encode()]:
            found.append(int(entry))
    return found


def _wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _sleep_in_background(seconds: str) -> str:
    return f"sleep {seconds} & echo started; wait"


@pytest.mark.root
def test_timeout_kills_the_step(run: Runner) -> None:
    marker = "417.25"
    seen: list[bool] = []
    started = time.monotonic()
    result = run(
        _sleep_in_background(marker),
        timeout=2.0,
        on_output=lambda _: seen.append(_wait_until(lambda: bool(_sleepers(marker)))),
    )
    assert result.timed_out and result.signal == signal.SIGKILL
    assert result.output_tail == ("started",)
    assert time.monotonic() - started < 10
    assert seen == [True], "the step's sleep was never seen running"
    assert not _sleepers(marker)  # gone by the time run_in_sandbox returns


@pytest.mark.root
def test_interrupt_in_pybuild_stops_the_step(run: Runner) -> None:
    marker = "418.25"
    seen: list[bool] = []

    def interrupt(chunk: bytes) -> None:
        seen.append(_wait_until(lambda: bool(_sleepers(marker))))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(_sleep_in_background(marker), on_output=interrupt)
    assert seen == [True], "the step's sleep was never seen running"
    assert not _sleepers(marker)


@pytest.mark.root
def test_processes_left_behind_die_with_the_step(run: Runner) -> None:
    # A daemon the step started (re-parented to the step's init) must not outlive the step.
    marker = "421.25"
    result = run(f"(sleep {marker} > /dev/null 2>&1 &); echo left")
    assert (result.exit_code, result.output_tail) == (0, ("left",))
    assert not _sleepers(marker)


PARENT_SCRIPT = """\
import sys
import tempfile
from pathlib import Path
from builder.sandbox import SandboxConfig, run_in_sandbox
lower, upper, work, marker = sys.argv[1:]
config = SandboxConfig(lowerdirs=[Path(lower)], upperdir=Path(upper), workdir=Path(work))
def echo(chunk):
    sys.stdout.buffer.write(chunk)
    sys.stdout.flush()
run_in_sandbox(config, ["/bin/sh", "-c", f"echo started; sleep {marker}"], env={}, on_output=echo)
"""


@pytest.mark.root
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_killed_pybuild_leaves_no_step_running(
    sandbox_ready: None, rootfs: Path, layer_dirs: tuple[Path, Path], signum: int
) -> None:
    upper, work = layer_dirs
    marker = f"419.{int(signum)}"
    before = _our_mounts(upper, rootfs)
    private_before = set(Path(tempfile.gettempdir()).glob("pybuild-run-*"))
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT, str(rootfs), str(upper), str(work), marker],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT_DIR,
    )
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline() == b"started\n"
        assert _wait_until(lambda: bool(_sleepers(marker)))
        parent.send_signal(signum)
        parent.wait(timeout=10)
        assert _wait_until(lambda: not _sleepers(marker))
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert _our_mounts(upper, rootfs) == before
    # The helper removes the step's private directory when pybuild could not.
    assert _wait_until(
        lambda: set(Path(tempfile.gettempdir()).glob("pybuild-run-*")) <= private_before
    )


@pytest.mark.parametrize(
    ("missing", "hint"),
    [
        ("user", "user.max_user_namespaces"),
        ("overlay", "modprobe overlay"),
        ("pid", "CONFIG_PID_NS"),
        ("pivot_root", "pivot_root"),
    ],
)
def test_missing_kernel_feature_is_named(
    monkeypatch: pytest.MonkeyPatch, missing: str, hint: str
) -> None:
    # A kernel without the feature cannot be made for real here: stand in for the probe.
    from builder.errors import SandboxUnavailable
    from builder.sandbox import support

    monkeypatch.setattr(support, "_probe", lambda: (missing, "Operation not permitted"))
    with pytest.raises(SandboxUnavailable, match=hint) as caught:
        check_sandbox_support()
    assert "Operation not permitted" in str(caught.value)


# ---------------------------------------------------------------------------- rootless

ROOTLESS_SCRIPT = """\
import json, sys
from pathlib import Path
from builder.errors import BuildError
from builder.sandbox import SandboxConfig, check_sandbox_support, run_in_sandbox
check_sandbox_support()
base = Path(sys.argv[1])
results = []
for index, (script, user, network) in enumerate(json.loads(sys.argv[2])):
    upper, work = base / f"upper{index}", base / f"work{index}"
    upper.mkdir()
    work.mkdir()
    config = SandboxConfig(lowerdirs=[base / "rootfs"], upperdir=upper, workdir=work, network=network)
    try:
        result = run_in_sandbox(config, ["/bin/sh", "-c", script], env={}, user=user)
        results.append([result.exit_code, list(result.output_tail)])
    except BuildError as exc:
        results.append([type(exc).__name__, str(exc)])
print(json.dumps(results))
"""

# (script, USER, network, expected [exit code, lines] or [error class, message part])
ROOTLESS_CASES = [
    ("id -u; echo $$; hostname", None, "default", [0, ["0", "2", "buildkitsandbox"]]),
    ("ls /sys/class/net", None, "none", [0, ["lo"]]),
    ("grep CapBnd /proc/self/status | cut -f2", None, "default", [0, [DOCKER_CAPBND]]),
    (
        "cat /dev/null; echo ok > /dev/null; cat /etc/hostname",
        None,
        "default",
        [0, ["buildkitsandbox"]],
    ),
    (
        "rm /etc/motd && rm -r /data && mkdir /data && echo n > /new",
        None,
        "default",
        [0, []],
    ),
    ("id", "app", "default", ["SandboxUnavailable", "runs steps only as root"]),
]


def _python_for(uid: int) -> str | None:
    """An interpreter that ``uid`` may run (the venv's may live under root's home)."""
    for candidate in (sys.executable, f"/usr/bin/python3.{sys.version_info.minor}"):
        real = os.path.realpath(candidate)
        parts = Path(real).parents
        if all(os.stat(p).st_mode & 0o001 for p in parts) and os.access(real, os.X_OK):
            return candidate
    return None


@pytest.mark.root
def test_rootless_user_namespace(sandbox_ready: None, rootfs: Path) -> None:
    python = _python_for(65534)
    if python is None or shutil.which("setpriv") is None:
        pytest.skip("needs setpriv and a Python interpreter the nobody user can run")
    if (
        not all(os.stat(p).st_mode & 0o001 for p in ROOT_DIR.parents)
        or not os.stat(ROOT_DIR).st_mode & 0o005
    ):
        pytest.skip(f"the checkout {ROOT_DIR} is not readable by other users")
    base = Path(tempfile.mkdtemp(prefix="pybuild-rootless-"))
    try:
        base.chmod(0o755)
        shutil.copytree(rootfs, base / "rootfs", symlinks=True)
        for path in [base, base / "rootfs", *(base / "rootfs").rglob("*")]:
            os.chown(path, 65534, 65534, follow_symlinks=False)
        cases = [[script, user, network] for script, user, network, _ in ROOTLESS_CASES]
        completed = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                python,
                "-c",
                ROOTLESS_SCRIPT,
                str(base),
                json.dumps(cases),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT_DIR,
            timeout=60,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr
        results = json.loads(completed.stdout)
        for (script, _, _, expected), actual in zip(ROOTLESS_CASES, results):
            if isinstance(expected[0], str):
                assert actual[0] == expected[0] and expected[1] in actual[1], script
            else:
                assert actual == expected, script
        # Unprivileged overlayfs marks opaque directories with user.overlay.opaque.
        upper = base / "upper4"
        assert stat.S_ISCHR((upper / "etc" / "motd").lstat().st_mode)
        assert (upper / "etc" / "motd").lstat().st_rdev == 0
        assert os.getxattr(upper / "data", "user.overlay.opaque") == b"y"
        assert sorted(p.name for p in upper.iterdir()) == ["data", "etc", "new"]
        assert sorted(p.name for p in (upper / "etc").iterdir()) == ["motd"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------- the helper's imports

# The helper runs as `python -I -S` (no site-packages) and loads these files directly.
HELPER_MODULES = ["nsinit", "libc", "rootpath", "userdb"]
HELPER_MAY_IMPORT = {f"builder.sandbox.{name}" for name in HELPER_MODULES} | {"builder.errors"}


@pytest.mark.parametrize(
    "path",
    [ROOT_DIR / "builder" / "sandbox" / f"{name}.py" for name in HELPER_MODULES]
    + [ROOT_DIR / "builder" / "errors.py"],
    ids=lambda p: p.name,
)
def test_helper_modules_import_only_the_standard_library(path: Path) -> None:
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "builder.sandbox":
            names += [f"builder.sandbox.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    bad = [
        name
        for name in names
        if name.split(".")[0] not in sys.stdlib_module_names and name not in HELPER_MAY_IMPORT
    ]
    assert not bad, f"{path.name} is loaded by the sandbox helper without site-packages: {bad}"
