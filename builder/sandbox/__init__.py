"""The RUN step sandbox: one command in its own namespaces over an overlayfs image root.

What a step gets (the ``docker build`` / BuildKit behaviour, as root):

* new mount, PID, IPC and UTS namespaces; with ``network="none"`` also a network namespace
  with only ``lo`` (up); ``"default"``/``"host"`` share the host's network, as BuildKit's
  default gives RUN network access;
* a root file system that is an overlay of the image's layer directories (never copied)
  and a fresh upper directory, entered with ``pivot_root``; a fresh ``/proc`` (Docker's
  masked and read-only paths applied), a minimal ``/dev`` (null, zero, full, random,
  urandom, tty, a private devpts, shm, mqueue, the fd links), a read-only ``/sys``, and
  read-only generated ``/etc/hosts``, ``/etc/resolv.conf`` and ``/etc/hostname``;
* hostname ``buildkitsandbox`` (BuildKit's), Docker's default capability set as bounding,
  effective, permitted and inheritable set (``CapBnd 00000000a80425fb``), ``no_new_privs``
  off, the ``USER`` resolved through the image's own passwd/group files, ``WORKDIR``
  created if missing, stdin on ``/dev/null``, stdout and stderr merged in one pipe.

After the step nothing stays mounted (the mounts only ever exist in the step's mount
namespace) and the upper directory holds exactly the step's changes in overlayfs' format:
whiteouts are 0/0 character devices, replaced directories carry ``trusted.overlay.opaque``.
The overlay is mounted with ``redirect_dir``, ``metacopy`` and ``index`` off so that a tree
walk of the upper directory is a complete diff.

API (called by the executor)::

    config = SandboxConfig(lowerdirs=[top, ..., base], upperdir=upper, workdir=work,
                           network="default", binds=[BindMount(src, "/dst")])
    check_sandbox_support()                      # raises SandboxUnavailable (once cached)
    result = run_in_sandbox(config, ["/bin/sh", "-c", "make"], env={"A": "1"},
                            cwd="/src", user="app", on_output=sink.write, timeout=None)
    result.exit_code, result.signal, result.output_tail

``resolve_user(rootfs, "app:staff")`` gives ``(uid, gid, groups)`` for an unpacked tree
(e.g. for ``COPY --chown``).
"""

from __future__ import annotations

from builder.sandbox.runner import (
    DEFAULT_HOSTNAME,
    BindMount,
    RunResult,
    SandboxConfig,
    TmpfsMount,
    run_in_sandbox,
)
from builder.sandbox.support import check_sandbox_support
from builder.sandbox.userdb import resolve_user

__all__ = [
    "DEFAULT_HOSTNAME",
    "BindMount",
    "RunResult",
    "SandboxConfig",
    "TmpfsMount",
    "check_sandbox_support",
    "resolve_user",
    "run_in_sandbox",
]
