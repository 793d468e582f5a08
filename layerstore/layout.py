"""Import and export of images: docker-archive, OCI archive and OCI layout directories.

Everything streams: archives are written with ``tarfile`` in stream mode and read in one
pass, each blob going straight into the :class:`BlobStore` (digest-verified when its name
is a digest), so a layer is never held in memory whole and ``-`` (a pipe) works both ways.

Formats written:

* ``docker`` — the dual form Docker ≥ 25 writes with its classic image store: an OCI layout
  (``oci-layout``, ``index.json``, ``blobs/sha256/…``) that is also a docker-archive
  (``manifest.json``, ``repositories``). As Docker does, layers are written *uncompressed*,
  named by their diff ID, with OCI media types, because ``docker load`` keys layers by diff
  ID; ``index.json`` names each image as Docker does (``io.containerd.image.name`` = the
  full name, ``org.opencontainers.image.ref.name`` = the tag). A compressed stored layer is
  decompressed into an anonymous temp file first (a tar header needs the size up front),
  checking it against the config's diff ID on the way.
* ``oci`` — an OCI image layout as stored: original blobs and digests;
  ``org.opencontainers.image.ref.name`` is the full name, as in the local store (see
  :func:`layerstore.images.ref_name_for`), and ``io.containerd.image.name`` too.

Names are opaque strings here; callers pass ``normalize`` (archive name → full name) and
``familiar`` (full name → ``docker images`` form for ``RepoTags``) because reference
grammar lives in ``registry`` and layerstore imports none of it.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import posixpath
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from layerstore.blobs import BlobStore, fsync_dir
from layerstore.canonicaljson import canonical_json
from layerstore.config import ImageConfig
from layerstore.descriptor import Descriptor, MediaType, Platform
from layerstore.digest import Digest, Hasher
from layerstore.errors import (
    ArchiveError,
    DigestMismatch,
    InvalidManifest,
    StoreError,
)
from layerstore.images import CONTAINERD_NAME, REF_NAME
from layerstore.manifest import Index, Manifest, parse_document
from layerstore.store import OCI_LAYOUT_VERSION, Store

FORMATS = ("docker", "oci")
_CHUNK = 1 << 20
_SMALL_FILES = ("manifest.json", "index.json", "repositories", "oci-layout")
_SMALL_LIMIT = 64 << 20
_BLOB_PATH_RE = re.compile(r"^blobs/(sha256|sha512)/([0-9a-f]+)$")
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _identity(name: str) -> str:
    return name


@dataclass(frozen=True)
class ExportImage:
    """One image to save: its stored document and the full names to record it under."""

    descriptor: Descriptor
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadedImage:
    """One image a load stored: its name (``None`` = loaded without one) and document."""

    name: str | None
    descriptor: Descriptor
    image_id: Digest
    note: str | None = None


@dataclass
class _Written:
    """Blobs already in the archive (shared layers and configs go in once)."""

    digests: set[Digest] = field(default_factory=set)
    sizes: dict[Digest, int] = field(default_factory=dict)  # uncompressed layers by diff ID


def split_name(name: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest) of a *normalised* name such as ``docker.io/library/a:1``."""
    rest, _, digest = name.partition("@")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        return rest[:colon], rest[colon + 1 :], digest or None
    return rest, None, digest or None


# -- writing -----------------------------------------------------------------------------


class _TarSink:
    """Entries appended to a stream-mode tar with fixed metadata (reproducible archives)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self._dirs: set[str] = set()

    def _info(self, name: str, size: int, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = mode
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def add_dir(self, name: str) -> None:
        if name in self._dirs:
            return
        self._dirs.add(name)
        info = self._info(name, 0, 0o755)
        info.type = tarfile.DIRTYPE
        self.tar.addfile(info)

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self.tar.addfile(self._info(name, len(data), mode), io.BytesIO(data))

    def add_stream(self, name: str, size: int, stream: IO[bytes], mode: int = 0o444) -> None:
        self.tar.addfile(self._info(name, size, mode), stream)

    def close(self) -> None:
        self.tar.close()


def _blob_name(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex}"


def _add_blob(sink: _TarSink, store: Store, digest: Digest, written: _Written) -> None:
    if digest in written.digests:
        return
    sink.add_dir("blobs/")
    sink.add_dir(f"blobs/{digest.algorithm}/")
    size = store.blobs.size(digest)
    with store.blobs.open(digest) as f:
        sink.add_stream(_blob_name(digest), size, f)
    written.digests.add(digest)


def _decompressed(stream: BinaryIO, media_type: str) -> IO[bytes]:
    kind = MediaType.compression(media_type)
    if kind == "none":
        head = stream.read(4)
        stream.seek(0)
        if head.startswith(_GZIP_MAGIC):
            kind = "gzip"
        elif head.startswith(_ZSTD_MAGIC):
            kind = "zstd"
    if kind == "gzip":
        return cast(IO[bytes], gzip.GzipFile(fileobj=stream, mode="rb"))
    if kind == "zstd":
        import zstandard

        reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(stream)
        return reader
    return stream


def _platform_manifest(store: Store, image: ExportImage, platform: Platform | None) -> Manifest:
    doc = store.read_document(image.descriptor.digest, image.descriptor.media_type)
    if isinstance(doc, Manifest):
        return doc
    chosen = doc.select(platform or Platform.host())
    if not store.blobs.has(chosen.digest):
        raise ArchiveError(
            f"cannot save {', '.join(image.names) or image.descriptor.digest}: its "
            f"{chosen.platform} manifest {chosen.digest} is not stored locally"
        )
    sub = store.read_document(chosen.digest, chosen.media_type)
    if not isinstance(sub, Manifest):
        raise ArchiveError(f"index entry {chosen.digest} is not an image manifest")
    return sub


def _add_uncompressed_layer(
    sink: _TarSink, store: Store, layer: Descriptor, diff_id: Digest, written: _Written
) -> int:
    """Write ``layer`` as an uncompressed tar named by ``diff_id``; returns its size."""
    if diff_id in written.sizes:
        return written.sizes[diff_id]
    sink.add_dir("blobs/")
    sink.add_dir(f"blobs/{diff_id.algorithm}/")
    with store.blobs.open(layer.digest) as raw:
        head = raw.read(4)
        raw.seek(0)
        compressed = MediaType.compression(layer.media_type) != "none" or head.startswith(
            (_GZIP_MAGIC, _ZSTD_MAGIC)
        )
        if not compressed:
            if layer.digest != diff_id:
                raise ArchiveError(
                    f"layer {layer.digest} is uncompressed but the config's diff ID is {diff_id}"
                )
            size = store.blobs.size(layer.digest)
            sink.add_stream(_blob_name(diff_id), size, raw)
        else:
            store.blobs.ingest_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=store.blobs.ingest_dir) as tmp:
                hasher = Hasher(diff_id.algorithm)
                src = _decompressed(raw, layer.media_type)
                try:
                    while block := src.read(_CHUNK):
                        hasher.update(block)
                        tmp.write(block)
                except (OSError, EOFError, ValueError) as e:
                    raise ArchiveError(f"layer {layer.digest} does not decompress: {e}") from None
                if hasher.digest() != diff_id:
                    raise ArchiveError(
                        f"layer {layer.digest} decompresses to {hasher.digest()}, but the "
                        f"image config says its diff ID is {diff_id}"
                    )
                size = hasher.size
                tmp.seek(0)
                sink.add_stream(_blob_name(diff_id), size, tmp)
    written.digests.add(diff_id)
    written.sizes[diff_id] = size
    return size


def _write_docker(
    sink: _TarSink,
    store: Store,
    images: list[ExportImage],
    platform: Platform | None,
    familiar: Callable[[str], str],
) -> None:
    written = _Written()
    # One manifest.json entry per distinct image, with every name in RepoTags (as Docker).
    manifest_json: dict[Digest, dict[str, Any]] = {}
    index_entries: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    for image in images:
        manifest = _platform_manifest(store, image, platform)
        config = store.read_config(manifest.config.digest)
        diff_ids = config.rootfs.diff_ids
        if len(diff_ids) != len(manifest.layers):
            raise ArchiveError(
                f"image {manifest.digest}: {len(manifest.layers)} layers but "
                f"{len(diff_ids)} diff IDs in its config"
            )
        _add_blob(sink, store, manifest.config.digest, written)
        layers = []
        for layer, diff_id in zip(manifest.layers, diff_ids):
            if not store.blobs.has(layer.digest):
                what = "foreign (non-distributable) layer" if layer.urls else "layer"
                raise ArchiveError(
                    f"cannot save image {manifest.digest}: {what} {layer.digest} is not stored"
                )
            size = _add_uncompressed_layer(sink, store, layer, diff_id, written)
            layers.append(Descriptor(MediaType.OCI_LAYER, diff_id, size))
        oci = Manifest.build(
            config=Descriptor(MediaType.OCI_CONFIG, manifest.config.digest, manifest.config.size),
            layers=layers,
        )
        if oci.digest not in written.digests:
            sink.add_dir("blobs/")
            sink.add_dir("blobs/sha256/")
            sink.add_bytes(_blob_name(oci.digest), oci.to_bytes(), 0o444)
            written.digests.add(oci.digest)
        entry = manifest_json.setdefault(
            oci.digest,
            {
                "Config": _blob_name(manifest.config.digest),
                "RepoTags": [],
                "Layers": [_blob_name(d.digest) for d in layers],
            },
        )
        for name in image.names:
            _repo, tag, _digest = split_name(name)
            annotations = {CONTAINERD_NAME: name}
            if tag is not None:
                annotations[REF_NAME] = tag
                short = familiar(name)
                if short not in entry["RepoTags"]:
                    entry["RepoTags"].append(short)
                if diff_ids:
                    repositories.setdefault(split_name(short)[0], {})[tag] = diff_ids[-1].hex
            index_entries.append(oci.descriptor(annotations=annotations).to_json())
        if not image.names:
            index_entries.append(oci.descriptor().to_json())
    for entry in manifest_json.values():
        entry["RepoTags"] = entry["RepoTags"] or None
    sink.add_bytes(
        "index.json",
        canonical_json(
            {"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": index_entries}
        ),
    )
    sink.add_bytes("manifest.json", canonical_json(list(manifest_json.values())))
    sink.add_bytes("oci-layout", OCI_LAYOUT_VERSION)
    sink.add_bytes("repositories", canonical_json(repositories))


def _write_oci(sink: _TarSink, store: Store, images: list[ExportImage]) -> None:
    written = _Written()
    entries: list[dict[str, Any]] = []
    sink.add_bytes("oci-layout", OCI_LAYOUT_VERSION)
    for image in images:
        for d in store.referenced_by(image.descriptor):
            if store.blobs.has(d.digest):
                _add_blob(sink, store, d.digest, written)
            elif d is image.descriptor or not (
                MediaType.is_manifest(d.media_type) or MediaType.is_foreign(d.media_type)
            ):
                raise ArchiveError(
                    f"cannot save {', '.join(image.names) or image.descriptor.digest}: "
                    f"blob {d.digest} ({d.media_type}) is not stored"
                )
        base = Descriptor(
            image.descriptor.media_type, image.descriptor.digest, image.descriptor.size
        )
        for name in image.names:
            entries.append(
                Descriptor(
                    base.media_type,
                    base.digest,
                    base.size,
                    annotations=tuple(sorted({CONTAINERD_NAME: name, REF_NAME: name}.items())),
                ).to_json()
            )
        if not image.names:
            entries.append(base.to_json())
    sink.add_bytes(
        "index.json",
        canonical_json(
            {"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": entries}
        ),
    )


def save(
    store: Store,
    images: list[ExportImage],
    out: IO[bytes],
    *,
    format: str = "docker",
    platform: Platform | None = None,
    familiar: Callable[[str], str] = _identity,
) -> None:
    """Write ``images`` to ``out`` as a docker-archive (``docker``) or OCI archive (``oci``)."""
    if format not in FORMATS:
        raise ArchiveError(f"unknown archive format {format!r} (expected one of {FORMATS})")
    if not images:
        raise ArchiveError("no images to save")
    sink = _TarSink(out)
    try:
        if format == "docker":
            _write_docker(sink, store, images, platform, familiar)
        else:
            _write_oci(sink, store, images)
    finally:
        sink.close()


def save_to_path(
    store: Store,
    images: list[ExportImage],
    path: Path,
    **options: Any,
) -> None:
    """:func:`save` into a file, atomically: a failed save leaves no partial archive."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 is for secrets, not archives
        with os.fdopen(fd, "wb") as f:
            save(store, images, f, **options)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def save_layout_dir(store: Store, images: list[ExportImage], dest: Path) -> None:
    """Write ``images`` into an OCI layout directory (created, or merged into an existing one).

    Blobs are written atomically and verified, like the store's own; ``index.json`` keeps
    entries for other names and replaces those with a name written now.
    """
    dest = Path(dest)
    if not images:
        raise ArchiveError("no images to save")
    dest.mkdir(parents=True, exist_ok=True)
    index_path = dest / "index.json"
    existing: list[dict[str, Any]] = []
    if index_path.exists():
        try:
            existing = list(json.loads(index_path.read_bytes()).get("manifests") or [])
        except (ValueError, AttributeError) as e:
            raise ArchiveError(f"{dest}: existing index.json is unreadable: {e}") from None
    elif any(dest.iterdir()):
        raise ArchiveError(f"{dest}: directory is not empty and is not an OCI layout")
    out = BlobStore(dest)
    entries: list[dict[str, Any]] = []
    for image in images:
        for d in store.referenced_by(image.descriptor):
            if store.blobs.has(d.digest):
                if not out.has(d.digest):
                    with store.blobs.open(d.digest) as f:
                        out.put_stream(f, d.digest)
            elif d is image.descriptor or not (
                MediaType.is_manifest(d.media_type) or MediaType.is_foreign(d.media_type)
            ):
                raise ArchiveError(f"cannot save: blob {d.digest} ({d.media_type}) is not stored")
        base = image.descriptor
        for name in image.names:
            ann = tuple(sorted({CONTAINERD_NAME: name, REF_NAME: name}.items()))
            entries.append(
                Descriptor(base.media_type, base.digest, base.size, annotations=ann).to_json()
            )
        if not image.names:
            entries.append(Descriptor(base.media_type, base.digest, base.size).to_json())
    written = {e.get("annotations", {}).get(REF_NAME) for e in entries} - {None}
    unnamed = {e["digest"] for e in entries if REF_NAME not in e.get("annotations", {})}
    kept = [
        e
        for e in existing
        if (e.get("annotations") or {}).get(REF_NAME) not in written
        and not (REF_NAME not in (e.get("annotations") or {}) and e.get("digest") in unnamed)
    ]
    with contextlib.suppress(OSError):
        out.ingest_dir.rmdir()
    layout = dest / "oci-layout"
    if not layout.exists():
        layout.write_bytes(OCI_LAYOUT_VERSION)
    tmp = dest / f".index.json.{os.getpid()}.tmp"
    tmp.write_bytes(
        canonical_json(
            {"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": kept + entries}
        )
    )
    os.replace(tmp, index_path)
    fsync_dir(dest)


# -- reading -----------------------------------------------------------------------------


def _clean_member(name: str, where: str) -> str:
    path = posixpath.normpath(name.lstrip("/")) if name not in ("", ".", "./") else "."
    if path == ".." or path.startswith("../"):
        raise ArchiveError(f"{where}: entry {name!r} points outside the archive")
    return path


@dataclass
class _Pass:
    """What one pass over an archive found."""

    blobs: dict[str, Digest] = field(default_factory=dict)  # archive path → stored digest
    small: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    def digest_at(self, path: str, where: str) -> Digest:
        seen = 0
        p = _clean_member(path, where)
        while p in self.links and seen < 32:
            p = self.links[p]
            seen += 1
        d = self.blobs.get(p)
        if d is None:
            raise ArchiveError(
                f"{where}: {path!r} is named in manifest.json but not in the archive"
            )
        return d


def _read_tar(store: Store, tar: tarfile.TarFile, where: str) -> _Pass:
    found = _Pass()
    for member in tar:
        name = _clean_member(member.name, where)
        if member.isdir():
            continue
        if member.issym():
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
            found.links[name] = _clean_member(target, where)
            continue
        if member.islnk():
            found.links[name] = _clean_member(member.linkname, where)
            continue
        if not member.isfile():
            continue
        stream = tar.extractfile(member)
        if stream is None:
            continue
        if name in _SMALL_FILES:
            if member.size > _SMALL_LIMIT:
                raise ArchiveError(f"{where}: {name} is implausibly large ({member.size} bytes)")
            found.small[name] = stream.read()
            continue
        m = _BLOB_PATH_RE.match(name)
        expected = Digest(m.group(1), m.group(2)) if m else None
        if expected is not None:
            try:
                expected = Digest.parse(str(expected))
            except ValueError:
                expected = None
        if m is None and not (name.endswith((".tar", ".json", ".tar.gz")) or "/" not in name):
            continue  # legacy VERSION / json files of v1 layer folders
        if expected is not None and store.blobs.has(expected):
            found.blobs[name] = expected
            continue
        try:
            found.blobs[name] = store.blobs.put_stream(stream, expected)
        except DigestMismatch as e:
            raise ArchiveError(f"{where}: {name} does not match its digest ({e})") from None
    return found


def _json(data: bytes, what: str, where: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ArchiveError(f"{where}: {what} is not valid JSON: {e}") from None


def _sniff_layer(store: Store, digest: Digest) -> str:
    with store.blobs.open(digest) as f:
        head = f.read(4)
    if head.startswith(_GZIP_MAGIC):
        return MediaType.OCI_LAYER_GZIP
    if head.startswith(_ZSTD_MAGIC):
        return MediaType.OCI_LAYER_ZSTD
    return MediaType.OCI_LAYER


def _check_complete(store: Store, root: Descriptor, where: str) -> None:
    """Every blob the document needs must be stored (absent index children are allowed)."""
    for d in store.referenced_by(root):
        if store.blobs.has(d.digest):
            continue
        if d is not root and (
            MediaType.is_manifest(d.media_type) or MediaType.is_foreign(d.media_type)
        ):
            continue
        raise ArchiveError(f"{where}: image {root.digest} needs blob {d.digest}, which is missing")


def _image_id(store: Store, desc: Descriptor) -> Digest:
    doc = store.read_document(desc.digest, desc.media_type)
    return doc.config.digest if isinstance(doc, Manifest) else doc.digest


def _name_of_entry(
    desc: Descriptor, normalize: Callable[[str], str], where: str
) -> tuple[str | None, str | None]:
    """(full name, note) for an ``index.json`` entry."""
    full = desc.annotation(CONTAINERD_NAME)
    ref = desc.annotation(REF_NAME)
    candidate = full or (ref if ref and any(c in ref for c in "/:@") else None)
    if candidate is None:
        if ref:
            return None, f"ref name {ref!r} is only a tag, not an image name"
        return None, None
    try:
        return normalize(candidate), None
    except ValueError as e:
        raise ArchiveError(f"{where}: image name {candidate!r} is invalid: {e}") from None


def _oci_candidates(store: Store, index_raw: bytes | None, where: str) -> list[Descriptor]:
    if index_raw is None:
        return []
    try:
        index = Index.from_bytes(index_raw)
    except InvalidManifest as e:
        raise ArchiveError(f"{where}: index.json: {e}") from None
    return list(index.manifests)


def _from_oci(
    store: Store, found_index: bytes, normalize: Callable[[str], str], where: str
) -> list[LoadedImage]:
    out = []
    for entry in _oci_candidates(store, found_index, where):
        if not store.blobs.has(entry.digest):
            raise ArchiveError(f"{where}: index.json names {entry.digest}, which is not in it")
        try:
            parse_document(store.blobs.read_bytes(entry.digest), entry.media_type or None)
        except InvalidManifest as e:
            raise ArchiveError(f"{where}: {entry.digest}: {e}") from None
        _check_complete(store, entry, where)
        name, note = _name_of_entry(entry, normalize, where)
        desc = Descriptor(entry.media_type, entry.digest, entry.size)
        out.append(LoadedImage(name, desc, _image_id(store, desc), note))
    return out


def _from_docker(
    store: Store,
    found: _Pass,
    normalize: Callable[[str], str],
    where: str,
) -> list[LoadedImage]:
    entries = _json(found.small["manifest.json"], "manifest.json", where)
    if not isinstance(entries, list):
        raise ArchiveError(f"{where}: manifest.json must be a list")
    # Docker ≥ 25 archives also carry the OCI manifest of each image: reuse it (and its
    # digest) when it describes exactly the same config and layers.
    # Docker with the containerd store nests an index per image: walk it.
    by_config: dict[Digest, Manifest] = {}
    stack = _oci_candidates(store, found.small.get("index.json"), where)
    seen: set[Digest] = set()
    while stack:
        cand = stack.pop(0)
        if cand.digest in seen or not store.blobs.has(cand.digest):
            continue
        seen.add(cand.digest)
        with contextlib.suppress(StoreError):
            doc = store.read_document(cand.digest, cand.media_type)
            if isinstance(doc, Manifest):
                by_config.setdefault(doc.config.digest, doc)
            else:
                stack.extend(doc.image_manifests())
    out: list[LoadedImage] = []
    for i, entry in enumerate(entries):
        here = f"{where}: manifest.json entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise ArchiveError(f"{here}: needs a Config path")
        layer_paths = entry.get("Layers") or []
        if not isinstance(layer_paths, list) or not all(isinstance(p, str) for p in layer_paths):
            raise ArchiveError(f"{here}: Layers must be a list of paths")
        config_digest = found.digest_at(entry["Config"], here)
        try:
            config = ImageConfig.from_bytes(store.blobs.read_bytes(config_digest))
        except InvalidManifest as e:
            raise ArchiveError(f"{here}: config: {e}") from None
        layer_digests = [found.digest_at(p, here) for p in layer_paths]
        if len(layer_digests) != len(config.rootfs.diff_ids):
            raise ArchiveError(
                f"{here}: {len(layer_digests)} layers but the config lists "
                f"{len(config.rootfs.diff_ids)} diff IDs"
            )
        manifest = by_config.get(config_digest)
        if manifest is None or [d.digest for d in manifest.layers] != layer_digests:
            layers = []
            for n, (d, diff_id) in enumerate(zip(layer_digests, config.rootfs.diff_ids)):
                media_type = _sniff_layer(store, d)
                if media_type == MediaType.OCI_LAYER and d != diff_id:
                    raise ArchiveError(
                        f"{here}: layer {n} ({layer_paths[n]}) has digest {d} but the config "
                        f"says its diff ID is {diff_id}"
                    )
                layers.append(Descriptor(media_type, d, store.blobs.size(d)))
            manifest = Manifest.build(
                config=Descriptor(
                    MediaType.OCI_CONFIG, config_digest, store.blobs.size(config_digest)
                ),
                layers=layers,
            )
            store.put_manifest(manifest)
        desc = manifest.descriptor()
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list):
            raise ArchiveError(f"{here}: RepoTags must be a list")
        names = []
        for tag in tags:
            try:
                names.append(normalize(str(tag)))
            except ValueError as e:
                raise ArchiveError(f"{here}: RepoTags entry {tag!r} is invalid: {e}") from None
        if not names:
            out.append(LoadedImage(None, desc, config_digest))
        out.extend(LoadedImage(n, desc, config_digest) for n in names)
    return out


def _commit(store: Store, loaded: list[LoadedImage]) -> None:
    for img in loaded:
        if img.name is None:
            store.images.add(img.descriptor)
        else:
            store.images.tag(img.name, img.descriptor)


def load_archive(
    store: Store,
    stream: IO[bytes],
    *,
    normalize: Callable[[str], str] = _identity,
    where: str = "archive",
) -> list[LoadedImage]:
    """Load a docker-archive or OCI archive (optionally gzip/bzip2/xz compressed) in one pass."""
    with store.lease():
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                found = _read_tar(store, tar, where)
        except tarfile.TarError as e:
            raise ArchiveError(f"{where}: not a readable tar archive: {e}") from None
        except (EOFError, OSError, gzip.BadGzipFile) as e:
            raise ArchiveError(f"{where}: archive is truncated or corrupt: {e}") from None
        if "manifest.json" in found.small:
            loaded = _from_docker(store, found, normalize, where)
        elif "index.json" in found.small:
            loaded = _from_oci(store, found.small["index.json"], normalize, where)
        else:
            raise ArchiveError(
                f"{where}: neither manifest.json (docker-archive) nor index.json (OCI archive) "
                "found in it"
            )
        _commit(store, loaded)
    return loaded


def load_path(
    store: Store, path: Path, *, normalize: Callable[[str], str] = _identity
) -> list[LoadedImage]:
    """Load from an archive file or an OCI layout directory."""
    path = Path(path)
    if path.is_dir():
        return load_layout_dir(store, path, normalize=normalize)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise ArchiveError(f"cannot open {path}: {e.strerror}") from None
    with f:
        return load_archive(store, f, normalize=normalize, where=str(path))


def _layout_blobs(root: Path, entry: Descriptor, where: str) -> Iterator[Descriptor]:
    """Descriptors reachable from ``entry`` in a layout directory (present ones)."""
    stack = [entry]
    seen: set[Digest] = set()
    while stack:
        d = stack.pop()
        if d.digest in seen:
            continue
        seen.add(d.digest)
        path = root / "blobs" / d.digest.algorithm / d.digest.hex
        if not path.is_file():
            if d is not entry and (
                MediaType.is_manifest(d.media_type) or MediaType.is_foreign(d.media_type)
            ):
                continue
            raise ArchiveError(f"{where}: blob {d.digest} ({d.media_type}) is missing")
        yield d
        if MediaType.is_manifest(d.media_type) or MediaType.is_index(d.media_type):
            try:
                doc = parse_document(path.read_bytes(), d.media_type)
            except InvalidManifest as e:
                raise ArchiveError(f"{where}: {d.digest}: {e}") from None
            if isinstance(doc, Index):
                stack.extend(doc.manifests)
            else:
                stack.append(doc.config)
                stack.extend(doc.layers)


def load_layout_dir(
    store: Store, root: Path, *, normalize: Callable[[str], str] = _identity
) -> list[LoadedImage]:
    """Load every image ``index.json`` names in an OCI layout directory (blobs verified)."""
    where = str(root)
    try:
        index_raw = (root / "index.json").read_bytes()
    except FileNotFoundError:
        raise ArchiveError(f"{where}: not an OCI layout (no index.json)") from None
    if not (root / "oci-layout").is_file():
        raise ArchiveError(f"{where}: not an OCI layout (no oci-layout file)")
    with store.lease():
        for entry in _oci_candidates(store, index_raw, where):
            for d in _layout_blobs(root, entry, where):
                if store.blobs.has(d.digest):
                    continue
                src = root / "blobs" / d.digest.algorithm / d.digest.hex
                try:
                    store.blobs.put_file(src, d.digest)
                except DigestMismatch as e:
                    raise ArchiveError(f"{where}: {src}: {e}") from None
        loaded = _from_oci(store, index_raw, normalize, where)
        _commit(store, loaded)
    return loaded


def export_images(store: Store, refs: Iterable[str]) -> list[ExportImage]:
    """Resolve local refs for :func:`save`, as ``docker save`` does: a ref that is a name is
    saved under that name; an ID or digest is saved without names."""
    out: list[ExportImage] = []
    names = set(store.images.names())
    for ref in dict.fromkeys(refs):  # a ref given twice is saved once
        desc = store.images.resolve(ref)
        out.append(ExportImage(desc, (ref,) if ref in names else ()))
    if not out:
        raise ArchiveError("no images given")
    return out
