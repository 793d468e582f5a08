"""Resolve a container path inside a root directory, following symlinks without escaping it.

Mount targets and ``/etc/passwd`` are looked up in an image's tree before (or without)
``pivot_root``: an image may hold ``/etc -> /host/somewhere`` or ``../../..`` links, and a
plain ``os.path.join`` would follow them out onto the host. This is the "secure join" that
runc and buildah use (filepath-securejoin): absolute links restart at the root, ``..`` stops
at the root. Nothing runs in the tree while we resolve, so there is no race to guard against.

Standard library only: the sandbox helper process imports it.
"""

from __future__ import annotations

import os
import stat

_MAX_SYMLINKS = 40  # Linux's MAXSYMLINKS


def resolve_in_root(root: str, path: str, *, follow_final: bool = True) -> str:
    """The host path of container path ``path`` under ``root`` (need not exist).

    With ``follow_final=False`` a symlink in the last component is not followed (for
    replacing the link itself). Raises ``OSError(ELOOP)`` after 40 symlinks, as the kernel
    would.
    """
    root = os.path.abspath(root)
    pending = [part for part in path.split("/") if part not in ("", ".")]
    pending.reverse()
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if not pending and not follow_final:
            resolved.append(part)
            continue
        try:
            mode = os.lstat(candidate).st_mode
        except FileNotFoundError:
            resolved.append(part)
            continue
        except NotADirectoryError:
            resolved.append(part)
            continue
        if not stat.S_ISLNK(mode):
            resolved.append(part)
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            raise OSError(40, "too many levels of symbolic links", os.path.join("/", path))
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        parts = [p for p in target.split("/") if p not in ("", ".")]
        pending.extend(reversed(parts))
    return os.path.join(root, *resolved)
