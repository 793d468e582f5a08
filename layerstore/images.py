"""The local image index: names → manifest/index digests, kept in sqlite and in ``index.json``.

Names are opaque, fully normalised strings chosen by callers (``docker.io/library/app:1.2``,
``127.0.0.1:5000/app@sha256:…``); this module never parses references (that is
``registry.reference``'s job, and layerstore imports no registry code). Every image the
store holds as a root (tagged, or dangling after a build without ``-t``) has a row in
``images``; ``tags`` maps names onto them; ``blob_sources`` records where blobs came from so a
push can mount them across repositories.

``index.json`` (the OCI layout's root) is regenerated from the database under an ``flock``
after every change and written atomically, so skopeo and umoci see exactly the tagged
images. Each tag becomes an entry whose ``org.opencontainers.image.ref.name`` is the full
name (see :func:`ref_name_for`); dangling images are entries without a name, which keeps
them alive through ``umoci gc`` too.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from layerstore.blobs import BlobStore, fsync_dir
from layerstore.canonicaljson import canonical_json
from layerstore.config import ImageConfig
from layerstore.db import Database
from layerstore.descriptor import Descriptor, MediaType
from layerstore.digest import Digest
from layerstore.errors import ImageNotFound, InvalidManifest, StoreError
from layerstore.manifest import Index, Manifest, parse_document

REF_NAME = "org.opencontainers.image.ref.name"
# containerd and Docker ≥ 25 put the full name here (ref.name then holds only the tag).
CONTAINERD_NAME = "io.containerd.image.name"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS images (
        digest     TEXT PRIMARY KEY,
        media_type TEXT NOT NULL,
        doc_size   INTEGER NOT NULL,
        image_id   TEXT NOT NULL,
        size       INTEGER NOT NULL,
        created    TEXT,
        added      REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS tags (
        name   TEXT PRIMARY KEY,
        digest TEXT NOT NULL REFERENCES images(digest) ON DELETE CASCADE,
        tagged REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS tags_by_digest ON tags(digest)",
    # The digest of the index.json this store last wrote: a different file on disk means
    # another tool (skopeo copy into the store, umoci tag) changed it, and its new entries
    # are adopted.
    """CREATE TABLE IF NOT EXISTS layout_state (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS blob_sources (
        digest     TEXT NOT NULL,
        registry   TEXT NOT NULL,
        repository TEXT NOT NULL,
        added      REAL NOT NULL,
        PRIMARY KEY (digest, registry, repository)
    )""",
)

# The OCI ref.name grammar (image-layout spec): components of alphanumerics joined by
# [-._:@+] or "--", separated by "/". Full references fit it, so they are stored verbatim.
_REF_NAME_RE = re.compile(
    r"^[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*(?:/[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*)*$"
)


def ref_name_for(name: str) -> str:
    """The ``org.opencontainers.image.ref.name`` a stored name is published under.

    The full normalised name, verbatim (``docker.io/library/app:1.2``,
    ``127.0.0.1:5000/team/app:latest``, ``docker.io/library/app@sha256:…``). The OCI grammar
    allows ``/``, ``:`` and ``@``, and the tools accept it as is (checked with skopeo 1.9.3 and
    umoci 0.4.7): skopeo's ``oci:STORE:docker.io/library/app:1.2`` ends the path at the
    *first* colon, umoci's ``--image STORE:docker.io/library/app:1.2`` also splits there,
    and podman 4.3 writes this same full-name form in the OCI archives it saves. The
    alternative Docker ≥ 25 uses in its archives (ref.name = tag only, full name in
    ``io.containerd.image.name``) cannot tell ``app:1`` from ``other:1`` in one layout, so
    it is used only in the docker-archive format (see ``layerstore.layout``). A name
    outside the grammar (an IPv6 registry host in brackets) is refused by
    :meth:`ImageStore.tag`.
    """
    return name


@dataclass(frozen=True)
class ImageRecord:
    """One row of ``pybuild images``: a name (``None`` for dangling) and its image."""

    name: str | None
    descriptor: Descriptor
    image_id: Digest
    size: int
    created: str | None
    added: float


@dataclass(frozen=True)
class RemoveResult:
    untagged: list[str]
    deleted: list[Digest]


class ImageStore:
    """Names and root images of one local store."""

    def __init__(self, root: Path, db: Database, blobs: BlobStore) -> None:
        self.root = Path(root)
        self.db = db
        self.blobs = blobs
        db.ensure_schema("layerstore.images", _SCHEMA)

    # -- documents -------------------------------------------------------------------------

    def read_document(self, digest: Digest, media_type: str | None = None) -> Manifest | Index:
        try:
            return parse_document(self.blobs.read_bytes(digest), media_type)
        except InvalidManifest as e:
            raise InvalidManifest(f"stored document {digest}: {e}") from None

    def read_config(self, digest: Digest) -> ImageConfig:
        try:
            return ImageConfig.from_bytes(self.blobs.read_bytes(digest))
        except InvalidManifest as e:
            raise InvalidManifest(f"stored config {digest}: {e}") from None

    def _summarise(self, descriptor: Descriptor) -> tuple[str, Digest, int, str | None]:
        """(media type, image ID, size, created) of a stored manifest or index."""
        doc = self.read_document(descriptor.digest, descriptor.media_type or None)
        if isinstance(doc, Manifest):
            created = None
            with contextlib.suppress(StoreError):
                created = self.read_config(doc.config.digest).created
            return doc.media_type, doc.config.digest, doc.size, created
        size = 0
        created = None
        seen: set[Digest] = set()
        for child in doc.manifests:
            if not self.blobs.has(child.digest):
                continue
            try:
                _, _, _, child_created = self._summarise(child)
                sub = self.read_document(child.digest, child.media_type)
            except StoreError:
                continue
            if isinstance(sub, Manifest):
                for d in (sub.config, *sub.layers):
                    if d.digest not in seen:
                        seen.add(d.digest)
                        size += d.size
            created = created or child_created
        return doc.media_type, doc.digest, size, created

    # -- images and names ------------------------------------------------------------------

    def add(self, descriptor: Descriptor) -> ImageRecord:
        """Record a stored manifest or index as a root image (no name); idempotent."""
        if not self.blobs.has(descriptor.digest):
            raise ImageNotFound(f"cannot add image {descriptor.digest}: its document is not stored")
        media_type, image_id, size, created = self._summarise(descriptor)
        doc_size = self.blobs.size(descriptor.digest)
        now = time.time()
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO images(digest, media_type, doc_size, image_id, size,"
                " created, added) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (str(descriptor.digest), media_type, doc_size, str(image_id), size, created, now),
            )
        self.sync_index()
        return ImageRecord(
            None,
            Descriptor(media_type, descriptor.digest, doc_size),
            image_id,
            size,
            created,
            now,
        )

    def tag(self, name: str, descriptor: Descriptor) -> None:
        """Point ``name`` at a stored manifest or index (replacing what it named before)."""
        if not _REF_NAME_RE.match(name):
            raise StoreError(
                f"invalid image name {name!r}: names are references like "
                "docker.io/library/app:1.2 (letters, digits, and . _ - : @ + /)"
            )
        if not self.blobs.has(descriptor.digest):
            raise ImageNotFound(f"cannot tag {name}: document {descriptor.digest} is not stored")
        media_type, image_id, size, created = self._summarise(descriptor)
        doc_size = self.blobs.size(descriptor.digest)
        now = time.time()
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO images(digest, media_type, doc_size, image_id, size,"
                " created, added) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (str(descriptor.digest), media_type, doc_size, str(image_id), size, created, now),
            )
            conn.execute(
                "INSERT INTO tags(name, digest, tagged) VALUES (?, ?, ?) ON CONFLICT(name) DO "
                "UPDATE SET digest = excluded.digest, tagged = excluded.tagged",
                (name, str(descriptor.digest), now),
            )
        self.sync_index()

    def untag(self, name: str) -> Descriptor:
        """Remove a name; the image stays (dangling if that was its last name)."""
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT i.digest, i.media_type, i.doc_size FROM tags t JOIN images i"
                " ON i.digest = t.digest WHERE t.name = ?",
                (name,),
            ).fetchone()
            if row is None:
                raise ImageNotFound(f"no local image named {name}")
            conn.execute("DELETE FROM tags WHERE name = ?", (name,))
        self.sync_index()
        return Descriptor(row[1], Digest.parse(row[0]), row[2])

    def delete_image(self, digest: Digest) -> None:
        """Forget a root image and all its names (its blobs go at the next :meth:`Store.gc`)."""
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM tags WHERE digest = ?", (str(digest),))
            conn.execute("DELETE FROM images WHERE digest = ?", (str(digest),))
        self.sync_index()

    def remove(self, ref: str, *, force: bool = False) -> RemoveResult:
        """``rmi`` semantics, as Docker's.

        By name: untag it; the image is deleted when that was its last name. By ID or digest:
        delete the image, which must have at most one name unless ``force`` (then every name
        goes).
        """
        names = self._names_table()
        if ref in names:
            desc = self.untag(ref)
            deleted: list[Digest] = []
            if not self.names_for(desc.digest):
                self.delete_image(desc.digest)
                deleted.append(desc.digest)
            return RemoveResult([ref], deleted)
        desc = self.resolve(ref)
        tagged = self.names_for(desc.digest)
        if len(tagged) > 1 and not force:
            raise StoreError(
                f"image {ref} is referenced by {len(tagged)} names ({', '.join(tagged)}): "
                "remove them by name, or use --force to remove all"
            )
        self.delete_image(desc.digest)
        return RemoveResult(tagged, [desc.digest])

    def _names_table(self) -> dict[str, str]:
        rows = self.db.connection().execute("SELECT name, digest FROM tags").fetchall()
        return {r[0]: r[1] for r in rows}

    def resolve(self, ref: str) -> Descriptor:
        """A name, ``name@digest``, a full digest, or a unique ID/digest prefix → descriptor.

        IDs match either the document digest or the image ID (config digest). Raises
        :class:`ImageNotFound`.
        """
        conn = self.db.connection()
        row = conn.execute(
            "SELECT i.digest, i.media_type, i.doc_size FROM tags t JOIN images i"
            " ON i.digest = t.digest WHERE t.name = ?",
            (ref,),
        ).fetchone()
        if row is not None:
            return Descriptor(row[1], Digest.parse(row[0]), row[2])
        text = ref.rpartition("@")[2] if "@" in ref else ref
        prefix = text.removeprefix("sha256:").lower()
        if re.fullmatch(r"[0-9a-f]{3,64}", prefix):
            rows = conn.execute(
                "SELECT digest, media_type, doc_size FROM images"
                " WHERE substr(digest, 8, ?) = ? OR substr(image_id, 8, ?) = ?",
                (len(prefix), prefix, len(prefix), prefix),
            ).fetchall()
            unique = {r[0]: r for r in rows}
            if len(unique) == 1:
                r = next(iter(unique.values()))
                return Descriptor(r[1], Digest.parse(r[0]), r[2])
            if len(unique) > 1:
                raise ImageNotFound(
                    f"image ID {ref!r} is ambiguous: it matches {len(unique)} images"
                )
            if "@" in ref and self.blobs.has(Digest.parse(f"sha256:{prefix}")):
                digest = Digest.parse(f"sha256:{prefix}")
                doc = self.read_document(digest)
                return Descriptor(doc.media_type, digest, len(doc.raw))
        raise ImageNotFound(f"no local image {ref!r}")

    def get(self, name: str) -> Descriptor | None:
        try:
            return self.resolve(name)
        except ImageNotFound:
            return None

    def list(self) -> list[ImageRecord]:
        """Every name, then every dangling image; newest first."""
        conn = self.db.connection()
        rows = conn.execute(
            "SELECT t.name, i.digest, i.media_type, i.doc_size, i.image_id, i.size, i.created,"
            " t.tagged FROM images i LEFT JOIN tags t ON t.digest = i.digest"
            " ORDER BY coalesce(t.tagged, i.added) DESC, t.name"
        ).fetchall()
        return [
            ImageRecord(
                r[0],
                Descriptor(r[2], Digest.parse(r[1]), r[3]),
                Digest.parse(r[4]),
                r[5],
                r[6],
                r[7] if r[7] is not None else 0.0,
            )
            for r in rows
        ]

    def names(self) -> builtins.list[str]:
        return sorted(self._names_table())

    def names_for(self, digest: Digest) -> builtins.list[str]:
        rows = (
            self.db.connection()
            .execute("SELECT name FROM tags WHERE digest = ? ORDER BY name", (str(digest),))
            .fetchall()
        )
        return [r[0] for r in rows]

    def roots(self) -> builtins.list[Descriptor]:
        """Every root image (tagged or dangling): where garbage collection starts."""
        rows = (
            self.db.connection()
            .execute("SELECT digest, media_type, doc_size FROM images ORDER BY digest")
            .fetchall()
        )
        return [Descriptor(r[1], Digest.parse(r[0]), r[2]) for r in rows]

    def prune_dangling(self) -> builtins.list[Digest]:
        """Forget root images that have no name; returns their digests."""
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT digest FROM images WHERE digest NOT IN (SELECT digest FROM tags)"
            ).fetchall()
            conn.execute("DELETE FROM images WHERE digest NOT IN (SELECT digest FROM tags)")
        if rows:
            self.sync_index()
        return [Digest.parse(r[0]) for r in rows]

    # -- provenance ------------------------------------------------------------------------

    def add_blob_source(self, digest: Digest, registry: str, repository: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO blob_sources(digest, registry, repository, added)"
                " VALUES (?, ?, ?, ?)",
                (str(digest), registry, repository, time.time()),
            )

    def blob_sources(self, digest: Digest) -> builtins.list[tuple[str, str]]:
        rows = (
            self.db.connection()
            .execute(
                "SELECT registry, repository FROM blob_sources WHERE digest = ?"
                " ORDER BY added DESC, registry, repository",
                (str(digest),),
            )
            .fetchall()
        )
        return [(r[0], r[1]) for r in rows]

    def forget_blob_sources(self, digests: builtins.list[Digest]) -> None:
        with self.db.transaction() as conn:
            conn.executemany(
                "DELETE FROM blob_sources WHERE digest = ?", [(str(d),) for d in digests]
            )

    # -- index.json ------------------------------------------------------------------------

    @contextlib.contextmanager
    def index_lock(self) -> Iterator[None]:
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_dir / "index.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def index_document(self) -> bytes:
        """``index.json`` as the database says it should be now."""
        conn = self.db.connection()
        entries = []
        for name, digest, media_type, doc_size in conn.execute(
            "SELECT t.name, i.digest, i.media_type, i.doc_size FROM tags t"
            " JOIN images i ON i.digest = t.digest ORDER BY t.name"
        ).fetchall():
            entries.append(
                Descriptor(
                    media_type,
                    Digest.parse(digest),
                    doc_size,
                    annotations=((REF_NAME, ref_name_for(name)),),
                ).to_json()
            )
        for digest, media_type, doc_size in conn.execute(
            "SELECT digest, media_type, doc_size FROM images"
            " WHERE digest NOT IN (SELECT digest FROM tags) ORDER BY digest"
        ).fetchall():
            entries.append(Descriptor(media_type, Digest.parse(digest), doc_size).to_json())
        return canonical_json(
            {"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": entries}
        )

    def _record_written(self, data: bytes) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO layout_state(key, value) VALUES ('index_digest', ?)",
                (str(Digest.of(data)),),
            )

    def reconcile(self) -> builtins.list[str]:
        """Bring ``index.json`` and the database together when a store is opened.

        Adopts what another tool added (:meth:`adopt_external`), and rewrites a file left
        stale by a process killed between its database change and its ``index.json``
        rewrite. Returns the adopted names.
        """
        adopted = self.adopt_external()
        try:
            on_disk = (self.root / "index.json").read_bytes()
        except FileNotFoundError:
            on_disk = b""
        if on_disk != self.index_document():
            self.sync_index()
        return adopted

    def _foreign_index(self) -> bytes | None:
        """``index.json``'s bytes if someone else wrote it since this store last did, else None."""
        try:
            on_disk = (self.root / "index.json").read_bytes()
        except FileNotFoundError:
            return None
        row = (
            self.db.connection()
            .execute("SELECT value FROM layout_state WHERE key = 'index_digest'")
            .fetchone()
        )
        if row is not None and row[0] == str(Digest.of(on_disk)):
            return None
        return on_disk

    def adopt_external(self) -> builtins.list[str]:
        """Take in images another tool added to ``index.json``; returns the adopted names.

        The database stays the source of truth: names another tool *removed* come back at
        the next rewrite. Entries whose documents are not stored are ignored.
        """
        if self._foreign_index() is None:
            return []
        adopted: builtins.list[str] = []
        with self.index_lock():
            # Checked again under the lock: a file this store wrote is never adopted from,
            # or a name another pybuild process just removed would come back.
            on_disk = self._foreign_index()
            if on_disk is None:
                return []
            try:
                entries = json.loads(on_disk).get("manifests") or []
            except (ValueError, AttributeError):
                entries = []
            known = self._names_table()
            for obj in entries if isinstance(entries, list) else []:
                try:
                    desc = Descriptor.from_json(obj)
                except (InvalidManifest, ValueError):
                    continue
                if not self.blobs.has(desc.digest):
                    continue
                name = desc.annotation(REF_NAME)
                try:
                    media_type, image_id, size, created = self._summarise(desc)
                except StoreError:
                    continue
                doc_size = self.blobs.size(desc.digest)
                now = time.time()
                with self.db.transaction() as conn:
                    conn.execute(
                        "INSERT OR IGNORE INTO images(digest, media_type, doc_size, image_id,"
                        " size, created, added) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (str(desc.digest), media_type, doc_size, str(image_id), size, created, now),
                    )
                    if name and _REF_NAME_RE.match(name) and known.get(name) != str(desc.digest):
                        conn.execute(
                            "INSERT OR REPLACE INTO tags(name, digest, tagged) VALUES (?, ?, ?)",
                            (name, str(desc.digest), now),
                        )
                        adopted.append(name)
            self._write_index_locked()
        return adopted

    def sync_index(self) -> None:
        """Rewrite ``index.json`` from the database, atomically, under the index lock.

        The document is read from the database after the lock is taken, so concurrent
        writers serialise and the last one to write has seen every earlier change.
        """
        with self.index_lock():
            self._write_index_locked()

    def _write_index_locked(self) -> None:
        # Only the lock holder writes temp files, so any found now are a killed writer's.
        for debris in self.root.glob(".index.json.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                debris.unlink()
        data = self.index_document()
        path = self.root / "index.json"
        try:
            unchanged = path.read_bytes() == data
        except FileNotFoundError:
            unchanged = False
        if not unchanged:
            tmp = self.root / f".index.json.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(self.root)
        self._record_written(data)
