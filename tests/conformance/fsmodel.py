"""A filesystem model of an image: its layer tars applied in order, and a comparer of two models.

The conformance tests compare what pybuild and Buildah produce for the same Dockerfile. The
model is written here, with nothing but :mod:`tarfile`, on purpose: it is an implementation
independent of pybuild's ``layerstore``, so a bug there (a lost whiteout, a wrong mode, a
broken hard link) shows up as a difference instead of being repeated on both sides.

Layers are applied as the image spec's "applying changesets" section says: a ``.wh.NAME``
entry deletes NAME (and everything under it) from the layers below, a ``.wh..wh..opq`` entry
in a directory hides everything the layers below put in it, an entry replaces what was at its
path (a non-directory over a directory removes the directory's subtree), and a hard link
takes the content and metadata of the file it names. Each path ends up as an :class:`Entry`
recording type, link target, size, mode bits, owner, xattrs, sha256 of content, mtime and the
other paths sharing its inode.

Modification times are recorded in "buckets": a time before :data:`BUILD_EPOCH` (the fixed
times the tests give base images, contexts and archives) is kept exactly; a later one can only
be "when the builder ran", which differs between any two builds, so it becomes ``"build"``.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, BinaryIO

# Times before this are fixed by the tests (base image, context, archives); later ones are the
# builder's clock. 2021-01-01T00:00:00Z.
BUILD_EPOCH = 1609459200
BUILD_TIME = "build"

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"

_TYPES = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


@dataclass(frozen=True)
class Entry:
    """One path of the final filesystem."""

    type: str  # file | dir | symlink | char | block | fifo
    mode: int  # permission and setuid/setgid/sticky bits (mode & 0o7777)
    uid: int
    gid: int
    size: int = 0
    sha256: str = ""  # of the content (regular files)
    target: str = ""  # symlink target
    device: tuple[int, int] = (0, 0)  # (major, minor) of char/block devices
    xattrs: tuple[tuple[str, str], ...] = ()
    mtime: int | str = 0  # exact seconds before BUILD_EPOCH, else BUILD_TIME
    hardlinks: tuple[str, ...] = ()  # the other paths sharing this inode
    implicit: bool = False  # a directory no layer had an entry for (a missing parent)


# The fields compared by default, in the order differences are listed.
COMPARED_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Entry))


@dataclass(frozen=True)
class Difference:
    path: str
    field: str
    left: object
    right: object

    def __str__(self) -> str:
        if self.field == "mode" and isinstance(self.left, int) and isinstance(self.right, int):
            return f"{self.path}: mode: {self.left:#o} != {self.right:#o}"
        return f"{self.path}: {self.field}: {self.left!r} != {self.right!r}"


class LayerFormatError(Exception):
    """A layer tar the model cannot apply (named by layer index and member)."""


def normalise(name: str) -> str:
    """A member name as an absolute, clean path ('/' for the root)."""
    path = posixpath.normpath("/" + name.lstrip("/"))
    # normpath keeps a leading '//' (POSIX allows it to mean something else); we do not.
    return "/" + path.lstrip("/")


def mtime_bucket(mtime: float) -> int | str:
    seconds = int(mtime)
    return seconds if seconds < BUILD_EPOCH else BUILD_TIME


@dataclass
class _Node:
    """What an inode holds; hard links share one node."""

    entry: Entry


@dataclass
class FilesystemModel:
    """Paths → nodes, built by applying layers one after another."""

    nodes: dict[str, _Node] = field(default_factory=dict)

    # -- applying -------------------------------------------------------------------------

    def apply_layer(self, layer: BinaryIO | Path, index: int = 0) -> None:
        """Apply one layer tar (plain, gzip, bzip2 or xz) on top of the model."""
        fileobj: BinaryIO = layer.open("rb") if isinstance(layer, Path) else layer
        try:
            with tarfile.open(fileobj=fileobj, mode="r:*") as tar:
                members = tar.getmembers()
                self._apply_whiteouts(members)
                for member in members:
                    if posixpath.basename(normalise(member.name)).startswith(WHITEOUT_PREFIX):
                        continue
                    try:
                        self._apply_member(tar, member)
                    except LayerFormatError as e:
                        raise LayerFormatError(f"layer {index}: {member.name}: {e}") from None
        except tarfile.TarError as e:
            raise LayerFormatError(f"layer {index}: not a tar archive: {e}") from None
        finally:
            if isinstance(layer, Path):
                fileobj.close()

    def _apply_whiteouts(self, members: list[tarfile.TarInfo]) -> None:
        # Whiteouts hide what the layers *below* had, so they are applied before any entry of
        # this layer (an opaque marker may come after the directory's new children).
        for member in members:
            path = normalise(member.name)
            parent, base = posixpath.split(path)
            if base == OPAQUE_MARKER:
                for other in self._under(parent):
                    del self.nodes[other]
            elif base.startswith(WHITEOUT_PREFIX):
                self._remove(posixpath.join(parent, base[len(WHITEOUT_PREFIX) :]))

    def _under(self, directory: str) -> list[str]:
        prefix = directory.rstrip("/") + "/"
        return [p for p in self.nodes if p.startswith(prefix)]

    def _remove(self, path: str) -> None:
        self.nodes.pop(path, None)
        for other in self._under(path):
            del self.nodes[other]

    def _ensure_parents(self, path: str) -> None:
        parent = posixpath.dirname(path)
        missing: list[str] = []
        while parent != "/":
            node = self.nodes.get(parent)
            if node is not None:
                if node.entry.type == "dir":
                    break
                # A non-directory where a parent must be: the extractor replaces it.
                self._remove(parent)
            missing.append(parent)
            parent = posixpath.dirname(parent)
        for directory in reversed(missing):
            self.nodes[directory] = _Node(Entry("dir", 0o755, 0, 0, implicit=True))

    def _apply_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        path = normalise(member.name)
        if path == "/":
            return  # the root's own metadata is the runtime's, not the image's
        self._ensure_parents(path)
        existing = self.nodes.get(path)
        if member.islnk():
            source = self.nodes.get(normalise(member.linkname))
            if source is None or source.entry.type == "dir":
                raise LayerFormatError(f"hard link to missing {member.linkname!r}")
            if existing is not None and existing is not source:
                self._remove(path)
            self.nodes[path] = source  # the same node: one inode, two names
            return
        kind = _TYPES.get(member.type)
        if kind is None:
            raise LayerFormatError(f"unsupported tar member type {member.type!r}")
        if existing is not None and not (kind == "dir" and existing.entry.type == "dir"):
            self._remove(path)
        sha256, size = "", 0
        if kind == "file":
            extracted = tar.extractfile(member)
            digest = hashlib.sha256()
            if extracted is not None:
                for chunk in iter(lambda: extracted.read(1 << 20), b""):
                    digest.update(chunk)
                    size += len(chunk)
            sha256 = digest.hexdigest()
        xattrs = tuple(
            sorted(
                (key[len("SCHILY.xattr.") :], value)
                for key, value in member.pax_headers.items()
                if key.startswith("SCHILY.xattr.")
            )
        )
        entry = Entry(
            type=kind,
            mode=member.mode & 0o7777,
            uid=member.uid,
            gid=member.gid,
            size=size,
            sha256=sha256,
            target=member.linkname if kind == "symlink" else "",
            device=(member.devmajor, member.devminor) if kind in ("char", "block") else (0, 0),
            xattrs=xattrs,
            mtime=mtime_bucket(member.mtime),
        )
        if existing is not None and kind == "dir" and existing.entry.type == "dir":
            existing.entry = entry  # a directory entry updates metadata, keeps children
        else:
            self.nodes[path] = _Node(entry)

    # -- reading --------------------------------------------------------------------------

    def entries(self) -> dict[str, Entry]:
        """Every path with its entry; hard-linked paths name each other."""
        by_node: dict[int, list[str]] = {}
        for path, node in self.nodes.items():
            by_node.setdefault(id(node), []).append(path)
        out: dict[str, Entry] = {}
        for path, node in self.nodes.items():
            links = tuple(sorted(p for p in by_node[id(node)] if p != path))
            out[path] = replace(node.entry, hardlinks=links) if links else node.entry
        return dict(sorted(out.items()))


def build_model(layers: Iterable[BinaryIO | Path]) -> dict[str, Entry]:
    """The final filesystem of an image whose layers are ``layers`` (bottom first)."""
    model = FilesystemModel()
    for index, layer in enumerate(layers):
        model.apply_layer(layer, index)
    return model.entries()


def compare_models(
    left: Mapping[str, Entry],
    right: Mapping[str, Entry],
    *,
    ignore: Mapping[str, Iterable[str]] | None = None,
) -> list[Difference]:
    """Every difference between two models, by path then field.

    ``ignore`` maps a field name to the entry types it is not compared for
    (``{"mtime": ["dir"]}`` skips directory mtimes; ``["*"]`` means every type).
    A path present on one side only is one difference with field ``"exists"``.
    """
    skipped = {name: set(types) for name, types in (ignore or {}).items()}
    unknown = set(skipped) - set(COMPARED_FIELDS)
    if unknown:
        raise ValueError(f"unknown fields to ignore: {sorted(unknown)}")
    diffs: list[Difference] = []
    for path in sorted(set(left) | set(right)):
        a, b = left.get(path), right.get(path)
        if a is None or b is None:
            diffs.append(Difference(path, "exists", a is not None, b is not None))
            continue
        for name in COMPARED_FIELDS:
            types = skipped.get(name, set())
            if "*" in types or (a.type in types and b.type in types):
                continue
            va, vb = getattr(a, name), getattr(b, name)
            if va != vb:
                diffs.append(Difference(path, name, va, vb))
    return diffs


# Buildah (1.28) leaves the mount points it made for a RUN step's bind mounts in the layer: an
# empty /etc/hostname and /etc/resolv.conf and an empty /run (containers/buildah#4242, open).
# `docker build` leaves none (BuildKit removes its mount stubs), nor does pybuild.
BUILDAH_RUN_STUBS = ("/etc/hostname", "/etc/resolv.conf", "/run")


def without_buildah_run_stubs(
    ours: Mapping[str, Entry], theirs: Mapping[str, Entry]
) -> dict[str, Entry]:
    """Buildah's model without the RUN mount stubs pybuild's lacks (and their effect on /etc)."""
    out = dict(theirs)
    for path in BUILDAH_RUN_STUBS:
        entry = out.get(path)
        if path in ours or entry is None:
            continue
        children = [p for p in out if p.startswith(path + "/")]
        if (entry.type == "file" and entry.size == 0) or (entry.type == "dir" and not children):
            del out[path]
            parent = path.rsplit("/", 1)[0]
            # Making the stub changed its directory's mtime; pybuild's may rightly be older.
            if parent in out and parent in ours and ours[parent].mtime != out[parent].mtime:
                out[parent] = replace(out[parent], mtime=ours[parent].mtime)
    return out


# -- image archives ---------------------------------------------------------------------


@dataclass
class ImageArchive:
    """A docker-archive tar (``manifest.json`` + config + layer files), read in place."""

    path: Path

    def _manifest(self, tar: tarfile.TarFile) -> dict[str, Any]:
        member = tar.extractfile("manifest.json")
        if member is None:
            raise LayerFormatError(f"{self.path}: manifest.json is not a file")
        manifests = json.load(member)
        if len(manifests) != 1:
            raise LayerFormatError(f"{self.path}: {len(manifests)} images, expected one")
        return dict(manifests[0])

    def config(self) -> dict[str, Any]:
        with tarfile.open(self.path) as tar:
            name = self._manifest(tar)["Config"]
            member = tar.extractfile(name)
            if member is None:
                raise LayerFormatError(f"{self.path}: config {name} is not a file")
            return dict(json.load(member))

    def layers(self) -> Iterator[BinaryIO]:
        with tarfile.open(self.path) as tar:
            for name in self._manifest(tar)["Layers"]:
                member = tar.extractfile(name)
                if member is None:
                    raise LayerFormatError(f"{self.path}: layer {name} is not a file")
                yield io.BytesIO(member.read())

    def model(self) -> dict[str, Entry]:
        return build_model(self.layers())
