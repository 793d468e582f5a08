"""COPY and ADD semantics: selecting sources, destination rules, ownership and modes.

Sources are resolved inside a source root (the build context or another stage's
filesystem) and never outside it: a ``..`` is clamped at the root, and a symlink met while
resolving a source is followed only within the root, absolute targets re-rooted, as
BuildKit's ``FollowSymlinks`` with a scoped root does. Symlinks *inside* a copied
directory are copied as symlinks.

Wildcards follow Go's ``filepath.Match`` (``*`` and ``?`` never match ``/``, ``[...]``
classes with ``^`` negation, ``\\`` escapes), matched component by component, as BuildKit
does. Destination rules follow the Dockerfile reference: a trailing ``/`` (or an existing
directory) means "into this directory"; more than one source needs such a destination; a
directory source copies its contents, not itself; a relative destination is taken against
WORKDIR; new files are owned by root unless ``--chown`` says otherwise and keep their
permission bits unless ``--chmod`` overrides them.

Copies are written into a root filesystem directory (in the executor, an overlayfs mount of
the stage so far, so its upper directory then holds exactly the copied files). The
destination is resolved inside that root the same scoped way, so an image's symlinks
(``/var/run -> /run``) are honoured but cannot lead outside it.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.errors import ContextError
from builder.sandbox.rootpath import resolve_in_root

Excluded = Callable[[str], bool]


class PatternError(ContextError):
    """A wildcard source pattern that is malformed (Go's ErrBadPattern)."""


def has_wildcard(pattern: str) -> bool:
    """True when ``pattern`` has an unescaped ``*``, ``?`` or ``[``."""
    escaped = False
    for ch in pattern:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in "*?[":
            return True
    return False


@functools.lru_cache(maxsize=1024)
def _component_regex(pattern: str) -> re.Pattern[str]:
    """Translate one path component of a Go ``filepath.Match`` pattern to a regex."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            i += 1
            if i >= n:
                raise PatternError(f"bad wildcard pattern {pattern!r}: trailing backslash")
            out.append(re.escape(pattern[i]))
        elif ch == "[":
            j = i + 1
            negate = j < n and pattern[j] == "^"
            if negate:
                j += 1
            items: list[str] = []
            first = True
            while True:
                if j >= n:
                    raise PatternError(f"bad wildcard pattern {pattern!r}: unterminated [")
                c = pattern[j]
                if c == "]" and not first:
                    break
                first = False
                if c == "\\":
                    j += 1
                    if j >= n:
                        raise PatternError(f"bad wildcard pattern {pattern!r}")
                    c = pattern[j]
                lo = c
                j += 1
                if j + 1 < n and pattern[j] == "-" and pattern[j + 1] != "]":
                    hi = pattern[j + 1]
                    if hi == "\\":
                        j += 1
                        if j + 1 >= n:
                            raise PatternError(f"bad wildcard pattern {pattern!r}")
                        hi = pattern[j + 1]
                    if hi < lo:
                        raise PatternError(f"bad wildcard pattern {pattern!r}: bad range")
                    items.append(f"{re.escape(lo)}-{re.escape(hi)}")
                    j += 2
                else:
                    items.append(re.escape(lo))
            if not items:
                raise PatternError(f"bad wildcard pattern {pattern!r}: empty class")
            out.append("[" + ("^/" if negate else "") + "".join(items) + "]")
            i = j
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def match_component(pattern: str, name: str) -> bool:
    """Go ``filepath.Match`` of one path component."""
    return _component_regex(pattern).fullmatch(name) is not None


def clean_source(pattern: str) -> str:
    """A source path relative to its root: leading ``/`` dropped, ``..`` clamped at the root."""
    cleaned = posixpath.normpath("/" + pattern)
    return cleaned.lstrip("/")


def scoped_resolve(root: Path, rel: str, *, follow_final: bool = True) -> Path:
    """Resolve ``rel`` inside ``root`` like ``chroot(root); realpath(rel)``.

    Symlinks are followed, but absolute targets are re-rooted at ``root`` and ``..`` never
    climbs above it, so the result is always inside ``root`` (the sandbox's secure join,
    :func:`builder.sandbox.rootpath.resolve_in_root`). The final component is followed only
    with ``follow_final``. Missing components are appended as they are.
    """
    try:
        return Path(resolve_in_root(os.fspath(root), rel, follow_final=follow_final))
    except OSError as e:
        raise ContextError(f"cannot resolve {rel!r}: {e.strerror or e}") from None


@dataclass(frozen=True)
class Source:
    """One selected source: its path relative to the source root and on disk."""

    rel: str
    path: Path

    @property
    def is_dir(self) -> bool:
        return self.path.is_dir() and not self.path.is_symlink()


def _glob(root: Path, components: list[str], excluded: Excluded | None) -> Iterator[str]:
    """Relative paths under ``root`` matching the wildcard components, sorted."""
    frontier = [""]
    for index, comp in enumerate(components):
        last = index == len(components) - 1
        following: list[str] = []
        for base in frontier:
            directory = root / base if base else root
            try:
                names = [n for n in sorted(os.listdir(directory)) if match_component(comp, n)]
            except (NotADirectoryError, FileNotFoundError, PermissionError):
                continue
            for name in names:
                rel = f"{base}/{name}" if base else name
                if excluded is not None and excluded(rel):
                    continue
                if not last and not (root / rel).is_dir():
                    continue
                following.append(rel)
        frontier = following
    return iter(sorted(frontier))


def resolve_sources(
    root: Path, patterns: Sequence[str], *, excluded: Excluded | None = None
) -> list[Source]:
    """Select the sources named by ``patterns`` inside ``root``.

    A name that matches nothing is an error (``"x": not found``), as in BuildKit; so is a
    source hidden by .dockerignore (``excluded``), since it is not in the context.
    """
    selected: list[Source] = []
    for pattern in patterns:
        rel = clean_source(pattern)
        if has_wildcard(rel):
            matches = list(_glob(root, rel.split("/"), excluded))
            if not matches:
                raise ContextError(f'"{pattern}": not found (no file matches the pattern)')
            selected.extend(Source(m, scoped_resolve(root, m)) for m in matches)
            continue
        if rel and excluded is not None and excluded(rel):
            raise ContextError(f'"{pattern}": not found (excluded by .dockerignore)')
        path = scoped_resolve(root, rel) if rel else root
        if not (path.exists() or path.is_symlink()):
            raise ContextError(f'"{pattern}": not found')
        selected.append(Source(rel, path))
    return selected


def walk_source(source: Source, *, excluded: Excluded | None = None) -> Iterator[str]:
    """Every path (relative to the source root) a copy of ``source`` reads, depth-first sorted.

    Used for content digests: a directory yields itself and everything below it that is
    not excluded; symlinks below it are not followed.
    """
    yield source.rel
    if source.is_dir:
        yield from _walk_dir(source.path, source.rel, excluded)


def _walk_dir(directory: Path, rel: str, excluded: Excluded | None) -> Iterator[str]:
    with os.scandir(directory) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        child = f"{rel}/{entry.name}" if rel else entry.name
        if excluded is not None and excluded(child):
            continue
        yield child
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_dir(Path(entry.path), child, excluded)


@dataclass(frozen=True)
class Ownership:
    """uid/gid for copied files; ``None`` keeps root:root (the Dockerfile default)."""

    uid: int = 0
    gid: int = 0


def _destination(dest: str, workdir: str) -> tuple[str, bool]:
    """(absolute destination path, whether it names a directory by its trailing slash)."""
    into_dir = dest.endswith("/") or dest in (".", "") or dest.endswith("/.")
    if not dest.startswith("/"):
        dest = posixpath.join(workdir or "/", dest)
    return posixpath.normpath(dest), into_dir


# Extended attributes never copied: overlayfs bookkeeping and SELinux labels belong to the
# host, not to the file (the layer writer leaves them out for the same reason).
_SKIPPED_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.", "security.selinux")


def _copy_xattrs(src: Path, dst: Path) -> None:
    """Copy ``src``'s extended attributes to ``dst`` (after chown, which drops capabilities)."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if name.startswith(_SKIPPED_XATTR_PREFIXES):
            continue
        try:
            os.setxattr(
                dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False
            )
        except OSError:
            # Not supported by the target file system, or not permitted (user namespace).
            continue


class _Copier:
    def __init__(
        self,
        rootfs: Path,
        owner: Ownership | None,
        chmod: int | None,
        excluded: Excluded | None,
        *,
        clear_setid: bool,
    ) -> None:
        self.rootfs = rootfs
        self.owner = owner  # None: keep the source's owners (COPY --from)
        self.chmod = chmod
        self.excluded = excluded
        self.clear_setid = clear_setid
        self.links: dict[tuple[int, int], Path] = {}

    def makedirs(self, rel: str, *, owner: Ownership | None = None) -> Path:
        """Create ``rel`` (and parents) inside the root; return its scoped path."""
        owner = owner or Ownership()
        parts = [p for p in rel.split("/") if p]
        current = ""
        path = self.rootfs
        for part in parts:
            current = f"{current}/{part}"
            path = scoped_resolve(self.rootfs, current)
            if path.is_dir():
                continue
            if path.exists() or path.is_symlink():
                raise ContextError(f"cannot copy to {current}: it exists and is not a directory")
            path.mkdir(mode=0o755)
            os.chmod(path, 0o755)
            os.chown(path, owner.uid, owner.gid)
        return path

    def _apply_meta(
        self, src_st: os.stat_result, dst: Path, *, is_link: bool, src: Path | None = None
    ) -> None:
        if self.owner is None:
            os.chown(dst, src_st.st_uid, src_st.st_gid, follow_symlinks=False)
        else:
            os.chown(dst, self.owner.uid, self.owner.gid, follow_symlinks=False)
        if not is_link:
            if self.chmod is not None:
                mode = self.chmod
            else:
                mode = stat.S_IMODE(src_st.st_mode)
                if self.clear_setid:
                    mode &= ~(stat.S_ISUID | stat.S_ISGID)
            os.chmod(dst, mode)
            if src is not None:
                _copy_xattrs(src, dst)
        os.utime(dst, ns=(src_st.st_atime_ns, src_st.st_mtime_ns), follow_symlinks=False)

    def _remove_existing(self, dst: Path, *, want_dir: bool) -> None:
        if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
            dst.unlink()
        elif dst.is_dir() and not want_dir:
            shutil.rmtree(dst)

    def copy_entry(self, src: Path, dst: Path) -> None:
        """Copy one non-directory entry (file, symlink, fifo) from ``src`` to ``dst``."""
        st = os.lstat(src)
        self._remove_existing(dst, want_dir=False)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dst)
            self._apply_meta(st, dst, is_link=True)
            return
        if stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:
                os.link(self.links[key], dst)
                return
            shutil.copyfile(src, dst, follow_symlinks=False)
            if st.st_nlink > 1:
                self.links[key] = dst
        elif stat.S_ISFIFO(st.st_mode):
            os.mkfifo(dst)
        else:  # sockets and device nodes are not copied, as BuildKit skips them
            return
        self._apply_meta(st, dst, is_link=False, src=src)

    def copy_tree(self, src_dir: Path, src_rel: str, dst_dir: Path) -> None:
        """Copy the contents of ``src_dir`` into the existing directory ``dst_dir``."""
        for name in sorted(os.listdir(src_dir)):
            rel = posixpath.join(src_rel, name) if src_rel else name
            if self.excluded is not None and self.excluded(rel):
                continue
            src = src_dir / name
            dst = dst_dir / name
            st = os.lstat(src)
            if stat.S_ISDIR(st.st_mode):
                self._remove_existing(dst, want_dir=True)
                if not dst.is_dir():
                    dst.mkdir()
                self.copy_tree(src, rel, dst)
                self._apply_meta(st, dst, is_link=False, src=src)
            else:
                self.copy_entry(src, dst)


def copy_sources(
    sources: Sequence[Source],
    rootfs: Path,
    dest: str,
    *,
    workdir: str = "/",
    owner: Ownership | None = None,
    chmod: int | None = None,
    excluded: Excluded | None = None,
    from_context: bool = True,
) -> list[str]:
    """Copy ``sources`` to ``dest`` inside ``rootfs`` with the Dockerfile's rules.

    ``owner`` is ``--chown``. Without it, files from the build context (``from_context``)
    belong to root and lose their setuid/setgid bits, as with ``docker build``, while files
    from another stage or image (``COPY --from``) keep their owners and modes. Extended
    attributes are copied either way. Returns the absolute image paths written at the top
    level (for history and tests).
    """
    new_dir_owner = owner or Ownership()
    if owner is None and from_context:
        owner = Ownership()
    dest_path, into_dir = _destination(dest, workdir)
    if len(sources) > 1 and not into_dir:
        existing = scoped_resolve(rootfs, dest_path)
        if not existing.is_dir():
            raise ContextError(
                "When using COPY with more than one source file, the destination must be a "
                f"directory and end with a / (got {dest!r})"
            )
        into_dir = True
    copier = _Copier(rootfs, owner, chmod, excluded, clear_setid=from_context)
    written: list[str] = []
    for source in sources:
        target = scoped_resolve(rootfs, dest_path)
        dest_is_dir = into_dir or target.is_dir()
        if source.is_dir:
            # A directory's contents go into the destination directory; a destination that
            # does not exist yet is made afresh (0755, now), not copied from the source
            # directory (moby/buildkit#1941), though --chmod applies to it (buildkit#4945).
            created = not target.is_dir()
            target = copier.makedirs(dest_path, owner=new_dir_owner)
            copier.copy_tree(source.path, source.rel, target)
            if created and chmod is not None:
                os.chmod(target, chmod)
            written.append(dest_path)
            continue
        if dest_is_dir:
            copier.makedirs(dest_path, owner=new_dir_owner if not target.is_dir() else None)
            name = posixpath.basename(source.rel) or source.path.name
            image_path = posixpath.join(dest_path, name)
        else:
            copier.makedirs(posixpath.dirname(dest_path))
            image_path = dest_path
        copier.copy_entry(source.path, scoped_resolve(rootfs, image_path, follow_final=False))
        written.append(image_path)
    return written
