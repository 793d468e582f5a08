"""Resolve a Dockerfile ``USER`` spec through an image's own ``/etc/passwd`` and ``/etc/group``.

The rules are runc's ``GetExecUser`` (what ``docker build`` applies): ``name``, ``uid``,
``name:group``, ``uid:gid`` and mixtures; a numeric id missing from the files is used as is
(gid 0 when only a uid is given), a missing *name* is an error worded as Docker words it
("unable to find user x: no matching entries in passwd file"). Supplementary groups are the
groups listing the user as a member, unless the spec names a group explicitly. The files
are read from the image, never from the host, with symlinks resolved inside the image.

Standard library (and ``builder.errors``) only: the sandbox helper process imports it.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from builder.errors import UnknownUserError
from builder.sandbox.rootpath import resolve_in_root


@dataclass(frozen=True)
class ExecUser:
    """Who a RUN step runs as: ids, supplementary groups and the passwd home directory."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def _read_table(root: str, path: str) -> list[list[str]]:
    try:
        with open(resolve_in_root(root, path), encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP):
            return []  # as if the image had no such file: numeric ids still work
        raise
    rows = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        rows.append(line.split(":"))
    return rows


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def lookup_user(root: str, spec: str | None) -> ExecUser:
    """Resolve ``spec`` (``user[:group]``; empty or ``None`` means root) under ``root``."""
    spec = (spec or "").strip()
    user_part, _, group_part = spec.partition(":")
    if not user_part and group_part:
        # ":group" alone keeps the default user (root), like runc.
        user_part = "0"
    user_part = user_part or "0"
    user_number = _int_or_none(user_part)

    uid, gid, home, name = (user_number if user_number is not None else -1), 0, "/", ""
    found = False
    for row in _read_table(root, "/etc/passwd"):
        if len(row) < 4:
            continue
        row_uid, row_gid = _int_or_none(row[2]), _int_or_none(row[3])
        if row_uid is None or row_gid is None:
            continue
        if row[0] == user_part or (user_number is not None and row_uid == user_number):
            uid, gid, name = row_uid, row_gid, row[0]
            home = row[5] if len(row) > 5 and row[5] else "/"
            found = True
            break
    if not found and user_number is None:
        raise UnknownUserError(
            f"unable to find user {user_part}: no matching entries in passwd file"
        )

    groups_table = _read_table(root, "/etc/group")
    if group_part:
        group_number = _int_or_none(group_part)
        for row in groups_table:
            if len(row) < 3:
                continue
            row_gid = _int_or_none(row[2])
            if row_gid is None:
                continue
            if row[0] == group_part or (group_number is not None and row_gid == group_number):
                gid = row_gid
                break
        else:
            if group_number is None:
                raise UnknownUserError(
                    f"unable to find group {group_part}: no matching entries in group file"
                )
            gid = group_number
        return ExecUser(uid=uid, gid=gid, groups=(gid,), home=home)

    supplementary: list[int] = []
    if name:
        for row in groups_table:
            if len(row) < 4:
                continue
            row_gid = _int_or_none(row[2])
            members = [m.strip() for m in row[3].split(",")]
            if row_gid is not None and name in members and row_gid not in supplementary:
                supplementary.append(row_gid)
    if gid not in supplementary:
        supplementary.insert(0, gid)
    return ExecUser(uid=uid, gid=gid, groups=tuple(supplementary), home=home)


def resolve_user(
    rootfs: os.PathLike[str] | str, spec: str | None
) -> tuple[int, int, tuple[int, ...]]:
    """``(uid, gid, supplementary gids)`` for ``spec`` under the image tree ``rootfs``.

    Raises ``builder.errors.UnknownUserError`` for a name that the image does not define.
    """
    user = lookup_user(os.fspath(rootfs), spec)
    return user.uid, user.gid, user.groups
