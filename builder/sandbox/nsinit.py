"""The inside of the RUN sandbox: namespaces, overlay root, mounts, privileges, then exec.

It runs in a fresh ``python -I -S`` helper process that ``builder.sandbox.runner`` starts
(never a ``fork`` of pybuild itself: pybuild has threads, and a forked copy of a threaded
interpreter can deadlock on a lock some other thread held). Three processes are involved:

* the **supervisor** (the helper): ``PR_SET_PDEATHSIG`` so it learns when pybuild dies
  (it then kills init and removes the step's private directory), then (rootless) a user
  namespace and a PID namespace, then ``fork``;
* **init**, PID 1 of the new PID namespace: unshares the mount, IPC, UTS (and, for
  ``--network=none``, network) namespaces, mounts the overlay root (image layers as
  ``lowerdir``, the step's fresh ``upperdir``), ``/proc``, a minimal ``/dev``, a read-only
  ``/sys``, the generated ``/etc/hosts``/``resolv.conf``/``hostname``, ``RUN --mount`` binds
  and tmpfs; ``pivot_root``; then forks the step and reaps zombies until the step exits.
  When init exits the kernel kills whatever the step left behind, and when the last process
  leaves the mount namespace every mount in it disappears: nothing is ever mounted in the
  host's namespace, so nothing can leak there, even on ``SIGKILL``;
* the **step**: drops the capability bounding set to Docker's default set, switches to the
  ``USER``, ``chdir``\\s into ``WORKDIR`` and ``execve``\\s the command with stdin on
  ``/dev/null`` and stdout/stderr on the output pipe pybuild reads.

Mount points the image lacks (``/proc``, ``/etc/hosts``, ``RUN --mount`` targets) come from a
"scaffold" directory that pybuild adds as the bottom-most ``lowerdir``, so creating them does
not write into the upper layer. Where an image hides a scaffold entry (an opaque directory,
a whiteout) the mount point is created through the overlay and reported as ``created``;
pybuild removes those from the upper directory afterwards.

Messages to pybuild are JSON lines on the status pipe: ``{"error": …, "kind": …}``,
``{"created": [...]}``, ``{"exec_error": …}``, ``{"exit": n}`` or ``{"signal": n}``, and the
supervisor's ``{"init_status": …}``.

Standard library only (plus the stdlib-only sibling modules): see ``runner.BOOTSTRAP``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import shutil
import signal
import stat
import sys
from typing import Any, NoReturn

from builder.errors import UnknownUserError
from builder.sandbox import libc
from builder.sandbox.rootpath import resolve_in_root
from builder.sandbox.userdb import ExecUser, lookup_user

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW
# SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP: moby's oci/caps/defaults.go, mask 0xa80425fb.
DOCKER_DEFAULT_CAPABILITIES = (0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31)
DOCKER_DEFAULT_CAPABILITY_MASK = sum(1 << cap for cap in DOCKER_DEFAULT_CAPABILITIES)

# (name, major, minor): the devices runc creates in every container.
_DEVICES = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
_DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)
# Docker's masked and read-only paths (moby oci/defaults.go).
_MASKED_PATHS = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

_NOSUID_NODEV_NOEXEC = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC


class SetupError(Exception):
    """A sandbox setup step failed; ``kind`` tells pybuild which error class to raise."""

    def __init__(self, message: str, kind: str = "setup") -> None:
        super().__init__(message)
        self.kind = kind


class _Status:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, **message: Any) -> None:
        data = (json.dumps(message) + "\n").encode()
        try:
            os.write(self.fd, data)
        except OSError:
            pass  # pybuild is gone; PDEATHSIG is about to end us anyway


# ---------------------------------------------------------------------------- supervisor


def main(argv: list[str]) -> NoReturn:
    """Entry point of the helper process: ``argv = [_, spec.json, status_fd]``."""
    status = _Status(int(argv[2]))
    os.set_inheritable(status.fd, False)
    try:
        with open(argv[1], encoding="utf-8") as f:
            spec = json.load(f)
        if spec.get("mode") == "probe":
            status.send(probe=probe(spec))
            os._exit(0)
        _supervise(spec, status)
    except SetupError as exc:
        status.send(error=str(exc), kind=exc.kind)
    except BaseException as exc:
        status.send(error=f"sandbox helper failed: {type(exc).__name__}: {exc}", kind="setup")
    os._exit(1)


class _ParentWatch:
    """SIGTERM when pybuild dies (``PR_SET_PDEATHSIG``): stop init, then clean up after it."""

    def __init__(self, expected_parent: int) -> None:
        self.parent_gone = False
        self.init_pid = 0
        signal.signal(signal.SIGTERM, self._on_term)
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGTERM)
        # The parent may have died before prctl took effect: then we were re-parented already.
        if os.getppid() != expected_parent:
            os._exit(1)

    def _on_term(self, signum: int, frame: object) -> None:
        self.parent_gone = True
        if self.init_pid:
            with contextlib.suppress(OSError):
                os.kill(self.init_pid, signal.SIGKILL)


def _enter_user_namespace(spec: dict[str, Any]) -> None:
    """Become root of a new user namespace (rootless pybuild).

    With a subordinate id range (``/etc/subuid``, ``/etc/subgid`` and the setuid
    ``newuidmap``/``newgidmap`` helpers) the image's users 1…N map onto it; without one,
    only root (our own uid) exists inside and ``USER`` must be root.
    """
    uid, gid, idmap = spec["uid"], spec["gid"], spec.get("idmap")
    if idmap:
        # newuidmap must write our maps from outside the namespace: a child forked before
        # unshare stays outside; it waits for the unshare, maps us and exits.
        ready_r, ready_w = os.pipe()
        helper = os.fork()
        if helper == 0:
            os.close(ready_w)
            os.read(ready_r, 1)
            target = str(os.getppid())
            for tool, ranges in (("newuidmap", idmap["uid"]), ("newgidmap", idmap["gid"])):
                args = [tool, target]
                for inside, outside, count in ranges:
                    args += [str(inside), str(outside), str(count)]
                child = os.fork()
                if child == 0:
                    try:
                        os.execvp(tool, args)
                    finally:
                        os._exit(127)
                if os.waitpid(child, 0)[1] != 0:
                    os._exit(1)
            os._exit(0)
        os.close(ready_r)
    try:
        libc.unshare(libc.CLONE_NEWUSER)
    except OSError as exc:
        raise SetupError(f"cannot create a user namespace: {exc.strerror}", "unavailable") from exc
    if idmap:
        os.write(ready_w, b"x")
        os.close(ready_w)
        if os.waitpid(helper, 0)[1] != 0:
            raise SetupError(
                "newuidmap/newgidmap could not map the subordinate id range", "unavailable"
            )
        return
    try:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {gid} 1")
    except OSError as exc:
        raise SetupError(
            f"cannot map our uid into the user namespace: {exc.strerror}", "unavailable"
        ) from exc


def _supervise(spec: dict[str, Any], status: _Status) -> NoReturn:
    watch = _ParentWatch(int(spec["parent_pid"]))
    if spec.get("userns"):
        _enter_user_namespace(spec)
    # Only the PID namespace here: init unshares the others itself, so that this process
    # stays in the host's mount namespace (init's pivot_root would otherwise move our root
    # too) and can remove the private directory when pybuild is gone.
    try:
        libc.unshare(libc.CLONE_NEWPID)
    except OSError as exc:
        raise SetupError(
            f"cannot create the step's PID namespace: {exc.strerror}", "unavailable"
        ) from exc
    lifeline_r, lifeline_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.close(lifeline_w)
        try:
            _init(spec, status, lifeline_r)
        except SetupError as exc:
            status.send(error=str(exc), kind=exc.kind)
        except BaseException as exc:
            status.send(error=f"sandbox init failed: {type(exc).__name__}: {exc}", kind="setup")
        os._exit(1)
    watch.init_pid = pid
    os.close(lifeline_r)
    if watch.parent_gone:
        os.kill(pid, signal.SIGKILL)
    while True:
        try:
            _, wait_status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    status.send(init_status=wait_status)
    if watch.parent_gone or os.getppid() != int(spec["parent_pid"]):
        # Nobody else is left to remove the step's private directory (spec, scaffold, …).
        private = spec["private_dir"]
        if not os.path.ismount(os.path.join(private, "root")):
            shutil.rmtree(private, ignore_errors=True)
    os._exit(0)


# ---------------------------------------------------------------------------- init (PID 1)


def _init(spec: dict[str, Any], status: _Status, lifeline: int) -> NoReturn:
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    # getppid() is 0 inside the new PID namespace, so the supervisor's liveness is checked
    # through a pipe only it holds open: readable (EOF) means it is already gone.
    if select.select([lifeline], [], [], 0)[0]:
        os._exit(1)
    # Default dispositions: the kernel then drops signals the step sends its init (PID 1),
    # where Python's own SIGINT handler would have turned them into KeyboardInterrupt.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    os.umask(0o022)
    flags = libc.CLONE_NEWNS | libc.CLONE_NEWIPC | libc.CLONE_NEWUTS
    if spec["network"] == "none":
        flags |= libc.CLONE_NEWNET
    try:
        libc.unshare(flags)
    except OSError as exc:
        raise SetupError(
            f"cannot create the step's namespaces: {exc.strerror}", "unavailable"
        ) from exc
    root = spec["rootdir"]
    created: list[str] = []
    _mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE, what="make the mount tree private")
    _mount_overlay(spec)
    _mount_proc(root, created)
    _mount_dev(root, created)
    _mount_sys(root, created)
    _mask_paths(root)
    for container_path, host_path in spec["etc_files"]:
        target = _mountpoint(root, container_path, is_dir=False, created=created)
        _mount(host_path, target, None, libc.MS_BIND, what=f"bind {container_path}")
        _remount_readonly(target, container_path)
    for bind in spec["binds"]:
        is_dir = os.path.isdir(bind["src"])
        target = _mountpoint(root, bind["dst"], is_dir=is_dir, created=created)
        _mount(bind["src"], target, None, libc.MS_BIND | libc.MS_REC, what=f"bind {bind['dst']}")
        if bind["readonly"]:
            _remount_readonly(target, bind["dst"])
    for tmpfs in spec["tmpfs"]:
        target = _mountpoint(root, tmpfs["dst"], is_dir=True, created=created)
        _mount(
            "tmpfs",
            target,
            "tmpfs",
            libc.MS_NOSUID | libc.MS_NODEV,
            tmpfs["options"],
            what=f"tmpfs on {tmpfs['dst']}",
        )
    if created:
        status.send(created=created)
    try:
        libc.sethostname(spec["hostname"])
    except OSError as exc:
        raise SetupError(f"cannot set the step's hostname: {exc.strerror}") from exc
    if spec["network"] == "none":
        try:
            libc.interface_up("lo")
        except OSError as exc:
            raise SetupError(
                f"cannot bring up lo in the step's network namespace: {exc.strerror}"
            ) from exc
    _pivot_root(root)

    try:
        user = lookup_user("/", spec["user"])
    except UnknownUserError as exc:
        raise SetupError(str(exc), "user") from exc
    single_id = bool(spec.get("userns")) and not spec.get("idmap")
    if single_id and (user.uid, user.gid) != (0, 0):
        raise SetupError(
            f"rootless pybuild without a subordinate id range runs steps only as root, not as "
            f"{spec['user']!r} (uid {user.uid}, gid {user.gid}): add a range for your user to "
            f"/etc/subuid and /etc/subgid (and install newuidmap/newgidmap, package uidmap)"
        )
    env = dict(spec["env"])
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", user.home)
    env.setdefault("HOSTNAME", spec["hostname"])  # containerd's WithHostname, as in BuildKit

    exec_error_r, exec_error_w = os.pipe()  # O_CLOEXEC: EOF on a successful exec
    step = os.fork()
    if step == 0:
        os.close(exec_error_r)
        _exec_step(spec["argv"], env, spec["cwd"], user, exec_error_w, single_id=single_id)
    os.close(exec_error_w)
    message = _read_all(exec_error_r)
    os.close(exec_error_r)
    if message:
        text = message.decode(errors="replace")
        status.send(exec_error=text)
        try:
            os.write(2, f"{text}\n".encode())
        except OSError:
            pass
    while True:
        try:
            pid, wait_status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            wait_status = 0
            break
        if pid == step:
            break
    if os.WIFSIGNALED(wait_status):
        status.send(signal=os.WTERMSIG(wait_status))
    else:
        status.send(exit=os.WEXITSTATUS(wait_status))
    # Exiting as PID 1 makes the kernel SIGKILL every process the step left behind.
    os._exit(0)


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except InterruptedError:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _mount(
    source: str | None,
    target: str,
    fstype: str | None,
    flags: int = 0,
    data: str | None = None,
    *,
    what: str,
) -> None:
    try:
        libc.mount(source, target, fstype, flags, data)
    except OSError as exc:
        raise SetupError(f"cannot {what}: {exc.strerror}") from exc


def _remount_readonly(target: str, name: str) -> None:
    # A bind mount only becomes read-only through a second, remounting call.
    flags = libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY
    try:
        libc.mount(None, target, None, flags | _locked_flags(target))
    except OSError as exc:
        raise SetupError(f"cannot make {name} read-only: {exc.strerror}") from exc


def _locked_flags(path: str) -> int:
    # A remount must repeat the nosuid/nodev/noexec and atime flags the mount already has,
    # or it fails with EPERM in a user namespace (they are locked there).
    flags = 0
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    for bit, name in (
        (os.ST_NOSUID, libc.MS_NOSUID),
        (os.ST_NODEV, libc.MS_NODEV),
        (os.ST_NOEXEC, libc.MS_NOEXEC),
        (os.ST_NOATIME, libc.MS_NOATIME),
        (os.ST_NODIRATIME, libc.MS_NODIRATIME),
        (os.ST_RELATIME, libc.MS_RELATIME),
    ):
        if st.f_flag & bit:
            flags |= name
    return flags


def _mountpoint(root: str, container_path: str, *, is_dir: bool, created: list[str]) -> str:
    """The host path of mount point ``container_path``, created (and recorded) if missing."""
    try:
        target = resolve_in_root(root, container_path)
    except OSError as exc:
        raise SetupError(f"cannot resolve mount point {container_path}: {exc.strerror}") from exc
    if os.path.lexists(target):
        return target
    parts = os.path.relpath(target, root).split(os.sep)
    current = root
    for index, part in enumerate(parts):
        current = os.path.join(current, part)
        if os.path.lexists(current):
            continue
        try:
            if index == len(parts) - 1 and not is_dir:
                os.close(os.open(current, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            else:
                os.mkdir(current, 0o755)
        except OSError as exc:
            raise SetupError(f"cannot create mount point {container_path}: {exc.strerror}") from exc
        created.append("/" + os.path.relpath(current, root))
    return target


def _escape_overlay_path(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def _mount_overlay(spec: dict[str, Any]) -> None:
    lowers = [*spec["lowerdirs"], spec["scaffold"]]
    upper, work = spec["upperdir"], spec["workdir"]
    # index/metacopy/redirect_dir off: the upper directory must hold whole files and plain
    # whiteouts/opaque markers, which a tree-walking differ can turn into a layer (Docker's
    # overlay2 "naive diff" has the same requirement).
    # (redirect_dir=nofollow: no redirects created, none followed; "off" is refused with
    # userxattr.)
    extras = ",index=off,metacopy=off,redirect_dir=nofollow"
    required = ""
    if spec.get("userns"):
        # Unprivileged overlayfs (Linux 5.11+) keeps its markers in user.overlay.* xattrs.
        required = ",userxattr"

    def options(paths: list[str], up: str, wk: str) -> str:
        lower = ":".join(_escape_overlay_path(p) for p in paths)
        return f"lowerdir={lower},upperdir={_escape_overlay_path(up)},workdir={_escape_overlay_path(wk)}"

    data = options(lowers, upper, work)
    if len(data) + len(extras) + len(required) >= 4095:
        # mount(2) takes one page of options. With many layers, name each through a short
        # symlink in our private directory, relative to it (Docker's overlay2 "l/" links):
        # the overlay follows them at mount time and resolves against our working directory.
        links = os.path.join(os.path.dirname(spec["rootdir"]), "l")
        os.mkdir(links, 0o700)
        for index, lower in enumerate(lowers):
            os.symlink(lower, os.path.join(links, f"{index:x}"))
        os.chdir(links)
        data = options([f"{index:x}" for index in range(len(lowers))], upper, work)
        if len(data) + len(extras) + len(required) >= 4095:
            raise SetupError(f"too many image layers for one overlay mount ({len(lowers) - 1})")
    try:
        try:
            libc.mount("overlay", spec["rootdir"], "overlay", 0, data + required + extras)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # An older kernel may not know one of the extra options.
            libc.mount("overlay", spec["rootdir"], "overlay", 0, data + required)
    except OSError as exc:
        hint = {
            errno.ENODEV: " (overlayfs is not available: load it with `modprobe overlay`)",
            errno.EINVAL: " (are upperdir and workdir on one file system that supports overlayfs upper layers?)",
        }.get(exc.errno or 0, "")
        raise SetupError(
            f"cannot mount the overlay root file system: {exc.strerror}{hint}"
        ) from exc
    finally:
        os.chdir("/")


def _mount_proc(root: str, created: list[str]) -> None:
    target = _mountpoint(root, "/proc", is_dir=True, created=created)
    _mount("proc", target, "proc", _NOSUID_NODEV_NOEXEC, what="mount /proc")


def _mount_dev(root: str, created: list[str]) -> None:
    dev = _mountpoint(root, "/dev", is_dir=True, created=created)
    _mount(
        "tmpfs",
        dev,
        "tmpfs",
        libc.MS_NOSUID | libc.MS_STRICTATIME,
        "mode=755,size=65536k",
        what="mount /dev",
    )
    for name, major, minor in _DEVICES:
        path = os.path.join(dev, name)
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(path, 0o666)
        except PermissionError:
            # No CAP_MKNOD (a user namespace): bind the host's node instead, as runc does.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o666))
            _mount(f"/dev/{name}", path, None, libc.MS_BIND, what=f"bind /dev/{name}")
    for name, target in _DEV_LINKS:
        os.symlink(target, os.path.join(dev, name))
    for name in ("pts", "shm", "mqueue"):
        os.mkdir(os.path.join(dev, name), 0o755)
    pts = os.path.join(dev, "pts")
    try:
        libc.mount(
            "devpts",
            pts,
            "devpts",
            libc.MS_NOSUID | libc.MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
        )
    except OSError:
        # gid 5 may be unmapped in a user namespace.
        _mount(
            "devpts",
            pts,
            "devpts",
            libc.MS_NOSUID | libc.MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620",
            what="mount /dev/pts",
        )
    _mount(
        "shm",
        os.path.join(dev, "shm"),
        "tmpfs",
        _NOSUID_NODEV_NOEXEC,
        "mode=1777,size=65536k",
        what="mount /dev/shm",
    )
    try:
        libc.mount("mqueue", os.path.join(dev, "mqueue"), "mqueue", _NOSUID_NODEV_NOEXEC)
    except OSError:
        pass  # POSIX message queues are optional (CONFIG_POSIX_MQUEUE)


def _mount_sys(root: str, created: list[str]) -> None:
    target = _mountpoint(root, "/sys", is_dir=True, created=created)
    try:
        libc.mount("sysfs", target, "sysfs", libc.MS_RDONLY | _NOSUID_NODEV_NOEXEC)
    except OSError:
        # sysfs may only be mounted by the owner of the network namespace: without a
        # network namespace of our own (rootless, host network) bind the host's read-only.
        _mount("/sys", target, None, libc.MS_BIND | libc.MS_REC, what="bind /sys")
        _remount_readonly(target, "/sys")


def _mask_paths(root: str) -> None:
    for path in _MASKED_PATHS:
        target = resolve_in_root(root, path)
        try:
            mode = os.lstat(target).st_mode
        except OSError:
            continue
        if stat.S_ISDIR(mode):
            _mount(
                "tmpfs",
                target,
                "tmpfs",
                libc.MS_RDONLY | _NOSUID_NODEV_NOEXEC,
                "size=0",
                what=f"mask {path}",
            )
        else:
            _mount(os.path.join(root, "dev/null"), target, None, libc.MS_BIND, what=f"mask {path}")
    for path in _READONLY_PATHS:
        target = resolve_in_root(root, path)
        if not os.path.lexists(target):
            continue
        _mount(target, target, None, libc.MS_BIND | libc.MS_REC, what=f"bind {path}")
        _remount_readonly(target, path)


def _pivot_root(root: str) -> None:
    # pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only the
    # image's tree (runc's trick: no put_old directory inside the image is needed).
    os.chdir(root)
    try:
        libc.pivot_root(".", ".")
        libc.umount2(".", libc.MNT_DETACH)
    except OSError as exc:
        raise SetupError(
            f"pivot_root into the step's root file system failed: {exc.strerror}", "unavailable"
        ) from exc
    os.chdir("/")


# ---------------------------------------------------------------------------- the step


def _exec_step(
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    user: ExecUser,
    error_fd: int,
    *,
    single_id: bool,
) -> NoReturn:
    try:
        # Python ignores SIGPIPE and SIGXFSZ; an ignored signal survives execve.
        for signum in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        _create_workdir(cwd, user)
        bounding = DOCKER_DEFAULT_CAPABILITY_MASK
        for cap in range(libc.last_capability() + 1):
            if not bounding & (1 << cap):
                try:
                    libc.prctl(libc.PR_CAPBSET_DROP, cap)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
        if not single_id:  # setgroups is denied when only our own id is mapped
            os.setgroups(list(user.groups))
        os.setresgid(user.gid, user.gid, user.gid)
        # Set while still root; switching to a non-zero uid then clears permitted and
        # effective (as in Docker, where a non-root step has no capabilities until it runs
        # a setuid or file-capability binary: no_new_privs stays off).
        libc.capset(bounding, bounding, bounding)
        os.setresuid(user.uid, user.uid, user.uid)
        libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)
        os.chdir(cwd)
    except OSError as exc:
        _report_exec_error(error_fd, f"unable to start container process: {exc}", 126)
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        if "/" in argv[0]:
            _report_exec_error(
                error_fd, f'exec: "{argv[0]}": stat {argv[0]}: no such file or directory', 127
            )
        _report_exec_error(error_fd, f'exec: "{argv[0]}": executable file not found in $PATH', 127)
    except PermissionError:
        _report_exec_error(error_fd, f'exec: "{argv[0]}": permission denied', 126)
    except OSError as exc:
        _report_exec_error(error_fd, f'exec: "{argv[0]}": {exc.strerror}', 126)


def _report_exec_error(fd: int, message: str, code: int) -> NoReturn:
    try:
        os.write(fd, message.encode())
    finally:
        os._exit(code)


def _create_workdir(cwd: str, user: ExecUser) -> None:
    # Created as root (we still are) and handed to the step's user, like BuildKit's WORKDIR.
    missing = []
    path = os.path.normpath(cwd) if cwd else "/"
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        os.mkdir(directory, 0o755)
        os.chown(directory, user.uid, user.gid)


# ---------------------------------------------------------------------------- probe


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Try each kernel feature the sandbox needs; return ``{"missing": name, "detail": …}``."""
    if os.geteuid() != 0:
        try:
            libc.unshare(libc.CLONE_NEWUSER)
        except OSError as exc:
            return {"missing": "user", "detail": exc.strerror}
        uid, gid = spec["uid"], spec["gid"]
        try:
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"0 {uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"0 {gid} 1")
        except OSError as exc:
            return {"missing": "user", "detail": f"cannot write uid_map: {exc.strerror}"}
    for name, flag in (
        ("mount", libc.CLONE_NEWNS),
        ("pid", libc.CLONE_NEWPID),
        ("ipc", libc.CLONE_NEWIPC),
        ("uts", libc.CLONE_NEWUTS),
        ("net", libc.CLONE_NEWNET),
    ):
        try:
            libc.unshare(flag)
        except OSError as exc:
            return {"missing": name, "detail": exc.strerror}
    scratch = spec["scratch"]
    try:
        libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
        libc.mount("tmpfs", scratch, "tmpfs", 0, "size=1m")
    except OSError as exc:
        return {"missing": "mount", "detail": exc.strerror}
    for name in ("lower", "upper", "work", "root"):
        os.mkdir(os.path.join(scratch, name))
    userxattr = ",userxattr" if os.geteuid() != 0 else ""
    try:
        libc.mount(
            "overlay",
            os.path.join(scratch, "root"),
            "overlay",
            0,
            f"lowerdir={scratch}/lower,upperdir={scratch}/upper,workdir={scratch}/work{userxattr}",
        )
    except OSError as exc:
        return {"missing": "overlay", "detail": exc.strerror}
    try:
        os.chdir(os.path.join(scratch, "root"))
        libc.pivot_root(".", ".")
        libc.umount2(".", libc.MNT_DETACH)
    except OSError as exc:
        return {"missing": "pivot_root", "detail": exc.strerror}
    return {"missing": None, "detail": ""}


if __name__ == "__main__":
    main(sys.argv)
