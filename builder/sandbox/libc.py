"""Thin ctypes bindings for the Linux system calls the RUN sandbox needs.

Python 3.11 has no ``os.unshare``/``os.setns`` and never had ``mount``, ``pivot_root`` or
``capset``, so they are called through libc. Each wrapper raises ``OSError`` with the real
errno, which is what the sandbox turns into "which kernel feature is missing" messages.

This module imports only the standard library: it is loaded by the sandbox helper process
(``builder.sandbox.nsinit``), which runs with ``python -I -S`` and no package ``__init__``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import platform
import socket
import struct
from functools import cache

# <linux/sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# <linux/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# <linux/capability.h>
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# System call numbers glibc has no wrapper for (pivot_root) or that we call raw (capset).
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "capset": 126},
    "aarch64": {"pivot_root": 41, "capset": 91},
    "ppc64le": {"pivot_root": 203, "capset": 184},
    "s390x": {"pivot_root": 217, "capset": 185},
    "riscv64": {"pivot_root": 41, "capset": 91},
}

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


@cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_char_p,
    ]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    libc.prctl.argtypes = [
        ctypes.c_int,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    libc.syscall.restype = ctypes.c_long
    return libc


def _check(result: int, what: str, *paths: str) -> None:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", *paths[:1])


def _syscall_number(name: str) -> int:
    machine = platform.machine()
    try:
        return _SYSCALLS[machine][name]
    except KeyError:
        raise OSError(
            38, f"{name}: system call number unknown for architecture {machine}"
        ) from None


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (``unshare(2)``)."""
    _check(_libc().unshare(flags), "unshare")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    """``mount(2)``; ``data`` is the file-system specific option string."""
    _check(
        _libc().mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
        f"mount {fstype or 'bind'} on {target}",
        target,
    )


def umount2(target: str, flags: int = 0) -> None:
    """``umount2(2)``."""
    _check(_libc().umount2(_b(target), flags), f"umount {target}", target)


def pivot_root(new_root: str, put_old: str) -> None:
    """``pivot_root(2)`` (no glibc wrapper: a raw system call)."""
    libc = _libc()
    number = _syscall_number("pivot_root")
    _check(libc.syscall(number, _b(new_root), _b(put_old)), "pivot_root", new_root)


def sethostname(name: str) -> None:
    """``sethostname(2)`` in the current UTS namespace."""
    raw = name.encode()
    _check(_libc().sethostname(raw, len(raw)), "sethostname")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0) -> int:
    """``prctl(2)``; returns the call's result."""
    # Unused arguments must be 0 (PR_CAP_AMBIENT rejects anything else with EINVAL).
    result = int(_libc().prctl(option, arg2, arg3, arg4, 0))
    _check(result, f"prctl({option})")
    return result


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set the calling thread's capability sets (64-bit masks, ``_LINUX_CAPABILITY_VERSION_3``)."""
    header = struct.pack("Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    low = 0xFFFFFFFF
    data = struct.pack(
        "6I",
        effective & low,
        permitted & low,
        inheritable & low,
        effective >> 32,
        permitted >> 32,
        inheritable >> 32,
    )
    header_buf = ctypes.create_string_buffer(header, len(header))
    data_buf = ctypes.create_string_buffer(data, len(data))
    _check(_libc().syscall(_syscall_number("capset"), header_buf, data_buf), "capset")


def last_capability() -> int:
    """The highest capability number this kernel knows (``/proc/sys/kernel/cap_last_cap``)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40


def interface_up(name: str) -> None:
    """Set ``IFF_UP`` on a network interface of the current network namespace (``lo``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(
            sock.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(), flags | _IFF_UP)
        )
