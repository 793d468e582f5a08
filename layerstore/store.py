"""The local store: one directory that is an OCI image layout plus pybuild's database.

Layout of ``<root>`` (``default_root()``)::

    oci-layout, index.json, blobs/sha256/…   an OCI image layout (skopeo ``oci:``, umoci)
    ingest/                                  temp files of blobs being written
    pybuild.db                               sqlite (WAL): tags, provenance, cache, snapshots
    locks/                                   flock files (index.json rewrite, gc vs. leases)
    snapshots/                               unpacked layers (layerstore.snapshots)

Garbage collection deletes blobs unreachable from root images. Work that writes blobs before
naming them (a build, a pull) holds a :meth:`Store.lease` (a shared lock) so a concurrent
``gc`` (exclusive) waits for it instead of deleting its blobs mid-flight.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerstore.blobs import BlobStore, fsync_dir
from layerstore.config import ImageConfig
from layerstore.db import DB_NAME, Database
from layerstore.descriptor import Descriptor, MediaType, Platform
from layerstore.digest import Digest
from layerstore.errors import BlobNotFound, InvalidManifest, StoreError
from layerstore.images import ImageStore
from layerstore.manifest import Index, Manifest

if TYPE_CHECKING:
    from layerstore.snapshots import SnapshotStore

OCI_LAYOUT_VERSION = b'{"imageLayoutVersion":"1.0.0"}'


def default_root() -> Path:
    """``$PYBUILD_ROOT``, else ``$XDG_DATA_HOME/pybuild``, else ``~/.local/share/pybuild``."""
    explicit = os.environ.get("PYBUILD_ROOT")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg).expanduser() / "pybuild"
    return Path.home() / ".local" / "share" / "pybuild"


@dataclass(frozen=True)
class LocalImage:
    """A resolved local image: its document, and for a single-platform image its config."""

    descriptor: Descriptor
    document: Manifest | Index
    manifest: Manifest | None
    config: ImageConfig | None


@dataclass
class GCResult:
    deleted: list[Digest] = field(default_factory=list)
    freed: int = 0
    kept: int = 0
    dangling_images: list[Digest] = field(default_factory=list)
    temp_files: int = 0
    snapshots_removed: int = 0
    cache_freed: int = 0


class Store:
    """A local store; open with :meth:`Store.open`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._init_layout()
        self.blobs = BlobStore(self.root)
        self.db = Database(self.root / DB_NAME)
        self.images = ImageStore(self.root, self.db, self.blobs)
        # Extra GC roots: callables returning digests something else still needs (build cache).
        self.gc_root_providers: list[Callable[[], Iterable[Digest]]] = []
        # Run by ``gc(drop_caches=True)`` under the gc lock: each drops a cache (build cache
        # records, …) and returns the bytes it freed.
        self.cache_pruners: list[Callable[[], int]] = []
        self._leases = threading.local()  # leases this thread holds (gc here would deadlock)
        # Temp files of writers killed earlier; live writers hold their locks and are skipped.
        self.blobs.clean_ingest()
        # Images another tool wrote into the layout (skopeo copy … oci:<store>:<name>), and
        # an index.json a killed process left behind its database.
        self.images.reconcile()

    @classmethod
    def open(cls, root: Path | None = None) -> Store:
        return cls(Path(root) if root is not None else default_root())

    def _init_layout(self) -> None:
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        layout = self.root / "oci-layout"
        if not layout.exists():
            tmp = self.root / f".oci-layout.{os.getpid()}.tmp"
            tmp.write_bytes(OCI_LAYOUT_VERSION)
            os.replace(tmp, layout)
        index = self.root / "index.json"
        if not index.exists():
            tmp = self.root / f".index.json.{os.getpid()}.init"
            tmp.write_bytes(
                b'{"manifests":[],"mediaType":"' + MediaType.OCI_INDEX.encode() + b'",'
                b'"schemaVersion":2}'
            )
            try:
                os.link(tmp, index)  # never clobber one another process wrote meanwhile
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
            fsync_dir(self.root)

    @cached_property
    def snapshots(self) -> SnapshotStore:
        """The unpacked-layer store, made on first use (most commands never unpack)."""
        from layerstore.snapshots import SnapshotStore

        return SnapshotStore(self.root / "snapshots", self.db, self.blobs)

    def close(self) -> None:
        self.db.close()

    # -- documents -------------------------------------------------------------------------

    def put_manifest(self, document: Manifest | Index) -> Descriptor:
        """Store a manifest or index blob (its referenced blobs should be stored first)."""
        self.blobs.put_bytes(document.to_bytes(), document.digest)
        return document.descriptor()

    def put_config(self, config: ImageConfig, media_type: str = MediaType.OCI_CONFIG) -> Descriptor:
        self.blobs.put_bytes(config.to_bytes(), config.digest)
        return config.descriptor(media_type)

    def read_document(self, digest: Digest, media_type: str | None = None) -> Manifest | Index:
        return self.images.read_document(digest, media_type)

    def read_config(self, digest: Digest) -> ImageConfig:
        return self.images.read_config(digest)

    def image(self, ref: str, platform: Platform | None = None) -> LocalImage:
        """Resolve a name/ID to its document; an index is narrowed to ``platform`` (default
        the host's) when that manifest is stored locally."""
        desc = self.images.resolve(ref)
        doc = self.read_document(desc.digest, desc.media_type)
        if isinstance(doc, Manifest):
            return LocalImage(desc, doc, doc, self.read_config(doc.config.digest))
        chosen = doc.select(platform or Platform.host())
        if not self.blobs.has(chosen.digest):
            raise BlobNotFound(
                f"image {ref} has a manifest for {chosen.platform} ({chosen.digest}) "
                "but it is not stored locally"
            )
        sub = self.read_document(chosen.digest, chosen.media_type)
        if not isinstance(sub, Manifest):
            raise InvalidManifest(f"index entry {chosen.digest} of {ref} is not a manifest")
        return LocalImage(desc, doc, sub, self.read_config(sub.config.digest))

    def inspect_json(self, ref: str, platform: Platform | None = None) -> dict[str, Any]:
        """What ``pybuild inspect`` prints for a local image: names, digests, documents."""
        img = self.image(ref, platform)
        out: dict[str, Any] = {
            "Id": str(img.config.digest) if img.config else str(img.descriptor.digest),
            "Digest": str(img.descriptor.digest),
            "RepoTags": self.images.names_for(img.descriptor.digest),
            "MediaType": img.descriptor.media_type,
            "Manifest": json.loads(img.document.to_bytes()),
        }
        if img.manifest is not None and img.manifest is not img.document:
            out["PlatformManifest"] = json.loads(img.manifest.to_bytes())
        if img.config is not None:
            out["Config"] = json.loads(img.config.to_bytes())
        return out

    def commit_image(self, document: Manifest | Index, names: Iterable[str] = ()) -> Descriptor:
        """Store a document and make it a root image under ``names`` (none → dangling)."""
        desc = self.put_manifest(document)
        names = list(names)
        if not names:
            self.images.add(desc)
        for name in names:
            self.images.tag(name, desc)
        return desc

    # -- reachability and gc ---------------------------------------------------------------

    def referenced_by(self, desc: Descriptor) -> Iterator[Descriptor]:
        """Blobs a stored document points at, recursively (absent children are skipped)."""
        stack = [desc]
        seen: set[Digest] = set()
        while stack:
            d = stack.pop()
            if d.digest in seen:
                continue
            seen.add(d.digest)
            yield d
            if not (MediaType.is_manifest(d.media_type) or MediaType.is_index(d.media_type)):
                continue
            if not self.blobs.has(d.digest):
                continue
            try:
                doc = self.read_document(d.digest, d.media_type)
            except StoreError:
                continue
            if isinstance(doc, Index):
                stack.extend(doc.manifests)
            else:
                stack.append(doc.config)
                stack.extend(doc.layers)
            if doc.subject is not None:
                stack.append(doc.subject)

    def reachable(self, extra_roots: Iterable[Digest] = ()) -> set[Digest]:
        live: set[Digest] = set(extra_roots)
        for root in self.images.roots():
            live.update(d.digest for d in self.referenced_by(root))
        for provider in self.gc_root_providers:
            live.update(provider())
        return live

    @contextlib.contextmanager
    def _gc_lock(self, exclusive: bool) -> Iterator[None]:
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_dir / "gc.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """Hold while writing blobs that are not yet reachable from a name (build, pull):
        garbage collection waits until every lease is released."""
        with self._gc_lock(exclusive=False):
            self._leases.depth = getattr(self._leases, "depth", 0) + 1
            try:
                yield
            finally:
                self._leases.depth -= 1

    def gc(
        self,
        *,
        prune_dangling: bool = False,
        grace_seconds: float = 0.0,
        extra_roots: Iterable[Digest] = (),
        dry_run: bool = False,
        drop_caches: bool = False,
    ) -> GCResult:
        """Delete blobs unreachable from root images (and extra roots).

        ``prune_dangling`` first forgets images without a name (``pybuild prune``).
        ``drop_caches`` (``prune --all``) also runs :attr:`cache_pruners` and deletes
        snapshots of layers no remaining image uses; a build holds a :meth:`lease`, so none
        of its mounted snapshots goes while it runs. Blobs modified less than
        ``grace_seconds`` ago are kept, for writers that hold no lease. Temp files of
        killed writers are removed too.
        """
        if getattr(self._leases, "depth", 0):
            # flock locks of one process still conflict: this gc would wait for itself.
            raise StoreError("garbage collection cannot run while this store holds a lease")
        result = GCResult()
        with self._gc_lock(exclusive=True):
            if prune_dangling and not dry_run:
                result.dangling_images = self.images.prune_dangling()
            if drop_caches and not dry_run:
                for pruner in self.cache_pruners:
                    result.cache_freed += pruner()
            result.temp_files = len(self.blobs.clean_ingest()) if not dry_run else 0
            live = self.reachable(extra_roots)
            cutoff = time.time() - grace_seconds
            for digest in list(self.blobs):
                if digest in live:
                    result.kept += 1
                    continue
                try:
                    st = self.blobs.path(digest).stat()
                except FileNotFoundError:
                    continue
                if grace_seconds and st.st_mtime > cutoff:
                    result.kept += 1
                    continue
                if not dry_run:
                    self.blobs.delete(digest)
                result.deleted.append(digest)
                result.freed += st.st_size
            if result.deleted and not dry_run:
                self.images.forget_blob_sources(result.deleted)
                fsync_dir(self.root / "blobs" / "sha256")
            if drop_caches and not dry_run and (self.root / "snapshots").is_dir():
                used = self.live_diff_ids()
                for snap in self.snapshots.list():
                    if snap.diff_id not in used and self.snapshots.remove(snap.diff_id):
                        result.snapshots_removed += 1
                        result.cache_freed += snap.size
        return result

    def live_diff_ids(self) -> set[Digest]:
        """Diff IDs of every layer of every root image (stored configs only)."""
        out: set[Digest] = set()
        for root in self.images.roots():
            for d in self.referenced_by(root):
                if d.media_type in MediaType.CONFIGS and self.blobs.has(d.digest):
                    with contextlib.suppress(StoreError):
                        out.update(self.read_config(d.digest).rootfs.diff_ids)
        return out

    def check(self) -> list[str]:
        """Problems found: blobs not matching their names, missing referenced blobs,
        ``index.json`` out of step with the database. Empty means consistent."""
        problems = []
        for digest in self.blobs:
            if not self.blobs.verify(digest):
                problems.append(f"blob {digest} does not hash to its name")
        for root in self.images.roots():
            for d in self.referenced_by(root):
                if MediaType.is_index(d.media_type) and d is not root:
                    continue
                is_child_manifest = MediaType.is_manifest(d.media_type) and d is not root
                if not self.blobs.has(d.digest) and not is_child_manifest:
                    if MediaType.is_foreign(d.media_type):
                        continue
                    problems.append(f"image {root.digest} references missing blob {d.digest}")
        try:
            on_disk = json.loads((self.root / "index.json").read_bytes())
        except (OSError, ValueError) as e:
            problems.append(f"index.json unreadable: {e}")
        else:
            if on_disk != json.loads(self.images.index_document()):
                problems.append("index.json differs from the database")
        return problems
