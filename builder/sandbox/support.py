"""Check, once per process, that this kernel lets pybuild build the RUN sandbox.

The check does what a RUN step does, in a throw-away helper: (when not root) a user
namespace, then mount, PID, IPC, UTS and network namespaces, a tmpfs, an overlay mount on it
and ``pivot_root`` into that, and names the first thing that fails with how to enable it.
Reading ``/proc/self/ns`` alone would miss a seccomp filter or a sysctl that forbids
``unshare`` (common in CI containers).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from functools import cache
from pathlib import Path

from builder.errors import SandboxUnavailable
from builder.sandbox.runner import helper_command

_HOW_TO_ENABLE = {
    "user": (
        "user namespaces are unavailable: enable them with `sysctl -w user.max_user_namespaces=15000` "
        "(and `kernel.unprivileged_userns_clone=1` on Debian kernels), or run pybuild as root"
    ),
    "mount": "mount namespaces are unavailable (kernel built without CONFIG_NAMESPACES, or a seccomp "
    "profile forbids unshare/mount: run the CI container with --privileged or a profile allowing them)",
    "pid": "PID namespaces are unavailable (needs CONFIG_PID_NS; in a container, run it --privileged)",
    "ipc": "IPC namespaces are unavailable (needs CONFIG_IPC_NS; in a container, run it --privileged)",
    "uts": "UTS namespaces are unavailable (needs CONFIG_UTS_NS; in a container, run it --privileged)",
    "net": "network namespaces are unavailable (needs CONFIG_NET_NS; in a container, run it --privileged)",
    "overlay": "overlayfs cannot be mounted: load it with `modprobe overlay` (CONFIG_OVERLAY_FS); "
    "rootless needs Linux 5.11 or later",
    "pivot_root": "pivot_root into an overlay mount failed (is / a ramfs/initramfs? run from a real root)",
}


def _overlay_listed() -> bool:
    try:
        text = Path("/proc/filesystems").read_text()
    except OSError:
        return True  # no /proc to ask: let the probe's mount decide
    return any(line.split()[-1:] == ["overlay"] for line in text.splitlines())


@cache
def _probe() -> tuple[str | None, str]:
    with tempfile.TemporaryDirectory(prefix="pybuild-probe-") as scratch_dir:
        scratch = Path(scratch_dir) / "scratch"
        scratch.mkdir()
        spec_path = Path(scratch_dir) / "spec.json"
        spec_path.write_text(
            json.dumps(
                {"mode": "probe", "scratch": str(scratch), "uid": os.getuid(), "gid": os.getgid()}
            )
        )
        status_r, status_w = os.pipe()
        try:
            completed = subprocess.run(
                helper_command(spec_path, status_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(status_w,),
                timeout=30,
                check=False,
            )
        finally:
            os.close(status_w)
        with os.fdopen(status_r, "rb") as status:
            lines = status.read().splitlines()
    for line in lines:
        message = json.loads(line)
        if "probe" in message:
            return message["probe"]["missing"], message["probe"]["detail"]
        if "error" in message:
            return "helper", message["error"]
    output = completed.stdout.decode(errors="replace").strip()
    return "helper", f"the sandbox probe exited with status {completed.returncode}: {output}"


def check_sandbox_support() -> None:
    """Raise ``SandboxUnavailable`` naming the missing kernel feature and how to enable it."""
    missing, detail = _probe()
    if missing is None:
        return
    if missing == "overlay" and not _overlay_listed():
        detail += "; overlay is not listed in /proc/filesystems"
    how = _HOW_TO_ENABLE.get(missing, "the sandbox helper could not run")
    raise SandboxUnavailable(f"RUN sandbox unavailable: {how} ({detail})")
