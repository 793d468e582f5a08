"""A stage's root file system as an overlay of layer snapshots, for COPY/ADD/WORKDIR work.

COPY must see the stage's merged tree (an image symlink such as ``/var/run -> /run`` is
honoured at the destination, an existing directory is copied into, ``--chown`` names come
from the image's ``/etc/passwd``) while writing only the changes, so that the new layer is
exactly the copied files plus the directories overlayfs copied up. An overlay mount does
both: lower = the stage's snapshots (never copied), upper = a fresh directory.

The mount is made in a private mount namespace of one short-lived *thread*: a thread may
``unshare(CLONE_NEWNS)`` on its own (the namespace belongs to the task, not the process),
then mounts are visible to that thread only, and they vanish when it ends. No ``fork`` of
a threaded interpreter and no helper process are needed, and the copy runs in-process
with the caller's objects (ignore matcher, content hasher). Nothing is ever mounted in the
host's namespace, so a crash cannot leave a mount behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from builder.errors import SandboxUnavailable
from builder.sandbox import libc

T = TypeVar("T")

_OVERLAY_EXTRAS = ",index=off,metacopy=off,redirect_dir=nofollow"


def _escape(path: Path | str) -> str:
    return str(path).replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def _mount_overlay(
    lowerdirs: Sequence[Path], target: Path, upper: Path | None, work: Path | None, scratch: Path
) -> None:
    lowers = list(lowerdirs)
    if upper is None and len(lowers) < 2:
        # a read-only overlay needs two lower layers; an empty one changes nothing
        empty = scratch / f"empty-{len(os.listdir(scratch))}"
        empty.mkdir()
        lowers.append(empty)
    if not lowers:
        empty = scratch / "empty-lower"
        empty.mkdir(exist_ok=True)
        lowers = [empty]
    data = "lowerdir=" + ":".join(_escape(p) for p in lowers)
    if upper is not None and work is not None:
        data += f",upperdir={_escape(upper)},workdir={_escape(work)}"
    if len(data) + len(_OVERLAY_EXTRAS) >= 4095:
        links = scratch / f"l{len(os.listdir(scratch))}"
        links.mkdir()
        for index, lower in enumerate(lowers):
            os.symlink(lower, links / f"{index:x}")
        data = "lowerdir=" + ":".join(str(links / f"{i:x}") for i in range(len(lowers)))
        if upper is not None and work is not None:
            data += f",upperdir={_escape(upper)},workdir={_escape(work)}"
    flags = 0 if upper is not None else libc.MS_RDONLY
    try:
        try:
            libc.mount("overlay", str(target), "overlay", flags, data + _OVERLAY_EXTRAS)
        except OSError:
            libc.mount("overlay", str(target), "overlay", flags, data)
    except OSError as e:
        raise SandboxUnavailable(
            f"cannot mount the stage's root file system (overlayfs): {e} — COPY/ADD need "
            "root, overlayfs (`modprobe overlay`) and a store ($PYBUILD_ROOT) on a file "
            "system overlayfs accepts as an upper layer (ext4, xfs, btrfs, tmpfs)"
        ) from None


def with_rootfs(
    lowerdirs: Sequence[Path],
    upper: Path,
    work: Path,
    fn: Callable[[Path, list[Path]], T],
    *,
    views: Sequence[Sequence[Path]] = (),
) -> T:
    """Call ``fn(root, view_roots)`` with the stage's tree mounted writable at ``root``.

    ``lowerdirs`` are snapshots, top-most first; changes land in ``upper`` (``work`` is
    overlayfs' scratch directory on the same file system). Each entry of ``views`` is
    another layer stack mounted read-only (``COPY --from`` a stage or image); its merged
    tree is passed in ``view_roots``. Returns what ``fn`` returns, raises what it raises.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        scratch = Path(tempfile.mkdtemp(prefix="pybuild-rootfs-"))
        mounted: list[Path] = []
        try:
            try:
                libc.unshare(libc.CLONE_NEWNS)
                libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
            except OSError as e:
                raise SandboxUnavailable(
                    f"cannot create a private mount namespace for COPY/ADD: {e} (needs root "
                    "or CAP_SYS_ADMIN)"
                ) from None
            root = scratch / "root"
            root.mkdir()
            _mount_overlay(lowerdirs, root, upper, work, scratch)
            mounted.append(root)
            view_roots: list[Path] = []
            for index, stack in enumerate(views):
                view = scratch / f"view{index}"
                view.mkdir()
                if len(stack) == 1:
                    view_roots.append(Path(stack[0]))
                    continue
                _mount_overlay(stack, view, None, None, scratch)
                mounted.append(view)
                view_roots.append(view)
            result.append(fn(root, view_roots))
        except BaseException as e:
            error.append(e)
        finally:
            stuck = False
            for path in reversed(mounted):
                try:
                    libc.umount2(str(path), libc.MNT_DETACH)
                except OSError:
                    stuck = True
            if not stuck:  # never delete through a mount that is still there
                shutil.rmtree(scratch, ignore_errors=True)

    thread = threading.Thread(target=body, name="pybuild-rootfs", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def with_view(stack: Sequence[Path], fn: Callable[[Path], T]) -> T:
    """Call ``fn(root)`` with the layer stack ``stack`` (top-most first) mounted read-only."""
    if not stack:
        with tempfile.TemporaryDirectory(prefix="pybuild-empty-") as empty:
            return fn(Path(empty))
    if len(stack) == 1:
        return fn(Path(stack[0]))
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        scratch = Path(tempfile.mkdtemp(prefix="pybuild-view-"))
        view = scratch / "view"
        view.mkdir()
        mounted = False
        try:
            libc.unshare(libc.CLONE_NEWNS)
            libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
            _mount_overlay(stack, view, None, None, scratch)
            mounted = True
            result.append(fn(view))
        except BaseException as e:
            error.append(e)
        finally:
            stuck = False
            if mounted:
                try:
                    libc.umount2(str(view), libc.MNT_DETACH)
                except OSError:
                    stuck = True
            if not stuck:
                shutil.rmtree(scratch, ignore_errors=True)

    thread = threading.Thread(target=body, name="pybuild-view", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
