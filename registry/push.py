"""Push: local store → registry; blobs in parallel, then manifests, children first.

Each blob is HEADed first and skipped when the repository has it; when the store knows the
blob came from another repository of the same registry, a cross-repository mount is tried
(no bytes move); otherwise it is uploaded (see :meth:`Client.upload_blob`). Only when every
blob is in place are the manifests PUT: an index's children by digest, then the top
document under the tag. A re-run after an interruption HEADs its way past what already
arrived. Non-distributable (foreign) layers are not pushed, per the image spec.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from layerstore.blobs import BlobStore
from layerstore.descriptor import Descriptor, MediaType
from layerstore.digest import Digest
from layerstore.errors import BlobNotFound, InvalidManifest
from layerstore.manifest import Index, Manifest, parse_document
from layerstore.store import Store
from registry.client import Client
from registry.errors import RegistryError
from registry.parallel import TransferPool
from registry.progress import ProgressSink
from registry.pull import DEFAULT_JOBS
from registry.reference import Reference


@dataclass
class PushResult:
    reference: Reference
    digest: Digest
    descriptor: Descriptor
    uploaded: int = 0
    mounted: int = 0
    existing: int = 0
    bytes: int = 0
    sent: list[Digest] = field(default_factory=list)  # every digest now in the repository


def _collect(
    blobs: BlobStore, desc: Descriptor
) -> tuple[list[tuple[Descriptor, bytes]], list[Manifest]]:
    """(documents children-first, image manifests) reachable from ``desc`` in ``blobs``."""
    try:
        doc = parse_document(blobs.read_bytes(desc.digest), desc.media_type or None)
    except InvalidManifest as e:
        raise InvalidManifest(f"document {desc.digest}: {e}") from None
    if isinstance(doc, Manifest):
        return [(doc_descriptor(doc, desc), doc.to_bytes())], [doc]
    documents: list[tuple[Descriptor, bytes]] = []
    manifests: list[Manifest] = []
    for child in doc.manifests:
        if not blobs.has(child.digest):
            raise RegistryError(
                f"cannot push index {desc.digest.short}: its manifest {child.digest.short} "
                f"({child.platform or 'no platform'}) is not in the local store (pull with "
                "--all-platforms first)"
            )
        sub_docs, sub_manifests = _collect(blobs, child)
        documents.extend(sub_docs)
        manifests.extend(sub_manifests)
    documents.append((doc_descriptor(doc, desc), doc.to_bytes()))
    return documents, manifests


def doc_descriptor(doc: Manifest | Index, desc: Descriptor) -> Descriptor:
    return Descriptor(doc.media_type, desc.digest, len(doc.to_bytes()))


def mount_sources(store: Store, digest: Digest, dest: Reference) -> tuple[str, ...]:
    """Repositories of ``dest``'s registry this blob is known to be in (newest first)."""
    return tuple(
        repo
        for registry, repo in store.images.blob_sources(digest)
        if registry == dest.registry and repo != dest.repository
    )


def push(
    source: str,
    dest: Reference,
    store: Store,
    *,
    client: Client | None = None,
    jobs: int = DEFAULT_JOBS,
    progress: ProgressSink | None = None,
) -> PushResult:
    """Push the local image named ``source`` to ``dest``; returns the pushed digest."""
    desc = store.images.resolve(source)

    def sources(digest: Digest) -> tuple[str, ...]:
        return mount_sources(store, digest, dest)

    result = push_blobs(
        store.blobs, desc, dest, client=client, jobs=jobs, progress=progress, sources=sources
    )
    for digest in result.sent:
        store.images.add_blob_source(digest, dest.registry, dest.repository)
    return result


def push_blobs(
    blobs: BlobStore,
    desc: Descriptor,
    dest: Reference,
    *,
    client: Client | None = None,
    jobs: int = DEFAULT_JOBS,
    progress: ProgressSink | None = None,
    sources: Callable[[Digest], tuple[str, ...]] | None = None,
) -> PushResult:
    """Push the image ``desc`` names from any blob directory (a store or an OCI layout)."""
    sink = progress or ProgressSink()
    own = client is None
    cl = client or Client.for_reference(dest)
    try:
        return _push(cl, blobs, desc, dest, jobs, sink, sources or (lambda d: ()))
    finally:
        if own:
            cl.close()


def _push(
    client: Client,
    store_blobs: BlobStore,
    desc: Descriptor,
    dest: Reference,
    jobs: int,
    sink: ProgressSink,
    sources: Callable[[Digest], tuple[str, ...]],
) -> PushResult:
    documents, manifests = _collect(store_blobs, desc)
    top_desc = documents[-1][0]
    result = PushResult(dest, top_desc.digest, top_desc)
    blobs: dict[Digest, Descriptor] = {}
    for manifest in manifests:
        for d in (manifest.config, *manifest.layers):
            if MediaType.is_foreign(d.media_type) and d.urls:
                continue  # non-distributable: stays where its urls point
            blobs.setdefault(d.digest, d)
    for digest in blobs:
        if not store_blobs.has(digest):
            raise BlobNotFound(f"cannot push {desc.digest}: blob {digest} is not stored locally")

    pool = TransferPool(jobs, sink)
    lock = threading.Lock()
    for digest in blobs:
        key = str(digest)
        size = store_blobs.size(digest)
        advance = pool.task(key, digest.short, size)

        def upload(
            digest: Digest = digest,
            size: int = size,
            advance: Callable[[int], None] = advance,
            key: str = key,
        ) -> object:
            how = client.upload_blob(
                dest,
                digest,
                size,
                lambda: store_blobs.open(digest),
                mount_from=sources(digest),
                progress=advance,
            )
            with lock:
                if how == "uploaded":
                    result.uploaded += 1
                    result.bytes += size
                elif how == "mounted":
                    result.mounted += 1
                else:
                    result.existing += 1
            sink.finish(key, how)
            return None

        pool.add(key, upload)
    pool.run()

    for i, (d, raw) in enumerate(documents):
        last = i == len(documents) - 1
        target = dest if last else dest.repo().with_digest(d.digest)
        if last and dest.tag is None and dest.digest is None:
            target = dest.with_tag("latest")
        client.put_manifest(target, raw, d.media_type)
    result.sent = [*blobs, *(d.digest for d, _ in documents)]
    sink.note(f"{dest.familiar()}: pushed {top_desc.digest}")
    return result
