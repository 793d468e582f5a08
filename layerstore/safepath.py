"""Containment rules for writing archive entries and copies under a root directory.

Every path an archive names is first cleaned lexically (:func:`clean_member_name`): a
leading ``/`` is stripped, as Docker and containerd do, so ``/etc/passwd`` means
``<root>/etc/passwd``; ``.`` and empty components vanish; a ``..`` that would climb above
the root is refused. The cleaned path is then resolved by :class:`RootDir` one component
at a time with ``openat(O_NOFOLLOW | O_DIRECTORY)`` relative to directory descriptors the
walk already holds, so the kernel never follows a symlink for us and never resolves
``..`` (the walk pops its own stack instead). That closes the time-of-check/time-of-use
gap an ``lstat``-then-``open`` check leaves, and it covers symlinks planted by earlier
entries of the same archive as well as by earlier layers.

A symlink met as a *parent* component is followed only when its target is relative and
stays inside the root (so merged-``/usr`` images, where ``lib -> usr/lib``, still work);
an absolute target or one climbing above the root is refused with
:class:`~layerstore.errors.UnsafePathError`. containerd would re-root an absolute target
instead; refusing is stricter and no layer produced by a diff ever needs it. The final
component is never followed: callers remove what is there and create with ``O_EXCL``,
``mknodat``, ``symlinkat`` or ``linkat`` without ``AT_SYMLINK_FOLLOW``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path
from types import TracebackType

from layerstore.errors import ArchiveError, UnsafePathError

# The same bound the kernel applies to one path lookup (MAXSYMLINKS).
MAX_SYMLINK_HOPS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Descriptors kept open between lookups; a layer with more directories than this just
# reopens some of them.
_FD_CACHE_LIMIT = 512


def clean_member_name(name: str) -> str:
    """The root-relative form of an archive path; ``""`` is the root itself.

    Strips a leading ``/`` and ``./``, drops empty and ``.`` components, folds ``a/..``
    and refuses a ``..`` that would leave the root (:class:`UnsafePathError`). NUL bytes
    are refused too: the kernel would silently truncate the name there.
    """
    if "\x00" in name:
        raise UnsafePathError(name, "the name contains a NUL byte")
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                raise UnsafePathError(name, "'..' climbs above the root")
            parts.pop()
            continue
        parts.append(comp)
    return "/".join(parts)


def split_parent(rel: str) -> tuple[str, str]:
    """``"a/b/c"`` → ``("a/b", "c")``; ``"c"`` → ``("", "c")``."""
    head, _, tail = rel.rpartition("/")
    return head, tail


class RootDir:
    """Descriptor-relative operations confined to one directory tree.

    Holds a descriptor of the root and a small cache of resolved parent directories. Any operation that removes or replaces a directory or symlink must
    call :meth:`invalidate`, because a cached descriptor stands for the path as it was.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # requested parent path → (descriptor, canonical root-relative path)
        self._cache: dict[str, tuple[int, str]] = {}

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        self.invalidate()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RootDir:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def invalidate(self) -> None:
        """Forget every cached directory descriptor."""
        for fd, _ in self._cache.values():
            os.close(fd)
        self._cache.clear()

    # -- resolution ------------------------------------------------------------------

    def resolve_dir(
        self, rel: str, *, entry: str, create: bool = False, mode: int = 0o755
    ) -> tuple[int, str] | None:
        """A descriptor of directory ``rel`` (cleaned, root-relative) and its canonical path.

        The caller owns (and closes) the descriptor: it is a duplicate of a cached one, so
        a later :meth:`invalidate` cannot pull it from under the caller. Missing components are made
        (``mode``, owned by the caller) when ``create`` is true, else ``None`` is returned.
        Raises :class:`UnsafePathError` naming ``entry`` for an escaping symlink and
        :class:`ArchiveError` when a component is not a directory.
        """
        if rel == "":
            return os.dup(self.fd), ""
        hit = self._cache.get(rel)
        if hit is None:
            hit = self._walk(rel, entry=entry, create=create, mode=mode)
            if hit is None:
                return None
            if len(self._cache) >= _FD_CACHE_LIMIT:
                self.invalidate()
            self._cache[rel] = hit
        return os.dup(hit[0]), hit[1]

    def _walk(self, rel: str, *, entry: str, create: bool, mode: int) -> tuple[int, str] | None:
        # stack of (descriptor, name) from the root down; the root itself is not on it
        stack: list[tuple[int, str]] = []
        # (component, came from a symlink target); pop() from the end = next component
        pending = [(c, False) for c in reversed(rel.split("/"))]
        hops = 0
        try:
            while pending:
                comp, via_link = pending.pop()
                if comp in ("", "."):
                    continue
                if comp == "..":
                    if not stack:
                        raise UnsafePathError(entry, f"a symlink in {rel!r} climbs above the root")
                    os.close(stack.pop()[0])
                    continue
                cur = stack[-1][0] if stack else self.fd
                try:
                    fd = os.open(comp, _DIR_FLAGS, dir_fd=cur)
                except FileNotFoundError:
                    if via_link and create:
                        # like the kernel: a dangling symlink is no place to mkdir -p
                        where = "/".join([n for _, n in stack] + [comp])
                        raise ArchiveError(
                            f"entry {entry!r}: {rel!r} goes through a dangling symlink "
                            f"(no {where!r})"
                        ) from None
                    if not create:
                        for d, _ in stack:
                            os.close(d)
                        return None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(comp, mode, dir_fd=cur)
                    fd = os.open(comp, _DIR_FLAGS, dir_fd=cur)
                    os.fchmod(fd, mode)  # mkdir's mode is masked by the umask
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(comp, dir_fd=cur, follow_symlinks=False)
                    where = "/".join([n for _, n in stack] + [comp])
                    if not stat.S_ISLNK(st.st_mode):
                        raise ArchiveError(
                            f"entry {entry!r}: {where!r} is not a directory"
                        ) from None
                    target = os.readlink(comp, dir_fd=cur)
                    if target.startswith("/"):
                        raise UnsafePathError(
                            entry, f"{where!r} is a symlink to the absolute path {target!r}"
                        ) from None
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise UnsafePathError(
                            entry, f"too many symlinks resolving {rel!r}"
                        ) from None
                    pending.extend((c, True) for c in reversed(target.split("/")))
                    continue
                stack.append((fd, comp))
        except BaseException:
            for d, _ in stack:
                os.close(d)
            raise
        if not stack:  # e.g. "a/.." via a symlink: the root itself
            return os.dup(self.fd), ""
        for d, _ in stack[:-1]:
            os.close(d)
        return stack[-1][0], "/".join(n for _, n in stack)

    def parent_of(
        self, rel: str, *, entry: str, create: bool = False
    ) -> tuple[int, str, str] | None:
        """``(parent descriptor, canonical parent path, basename)`` for a cleaned path.

        The caller closes the descriptor.
        """
        head, name = split_parent(rel)
        found = self.resolve_dir(head, entry=entry, create=create)
        if found is None:
            return None
        return found[0], found[1], name

    # -- final-component operations (never follow the last component) ---------------

    @staticmethod
    def lstat(dir_fd: int, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def remove(self, dir_fd: int, name: str, st: os.stat_result | None = None) -> bool:
        """Remove whatever ``name`` is (a tree for a directory); False when nothing was there."""
        if st is None:
            st = self.lstat(dir_fd, name)
            if st is None:
                return False
        if stat.S_ISDIR(st.st_mode):
            self.invalidate()
            # rmtree with dir_fd walks by descriptor and never follows symlinks
            shutil.rmtree(name, dir_fd=dir_fd)
        else:
            if stat.S_ISLNK(st.st_mode):
                self.invalidate()
            os.unlink(name, dir_fd=dir_fd)
        return True

    @staticmethod
    def proc_path(dir_fd: int, name: str) -> str:
        """A path naming ``name`` in ``dir_fd`` for calls that take no ``dir_fd``."""
        return f"/proc/self/fd/{dir_fd}/{name}"
