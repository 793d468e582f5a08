"""Pull: registry → local store, blobs in parallel, streamed and verified on the fly.

The reference is resolved to a manifest or index; from an index one platform is chosen
(this machine's unless told otherwise) or, with ``all_platforms``, every entry is fetched.
Config and layer blobs missing from the store are downloaded by a bounded pool of threads
straight into :class:`~layerstore.blobs.BlobWriter` (digest checked while writing, so a bad
byte leaves nothing behind). Documents are stored last, after everything they point to,
and only then is the name tagged, so a failed pull never leaves a name on a partial image.
Foreign (non-distributable) layers are not fetched unless allowed (then from their ``urls``
in order, without registry credentials, and last from the registry); their descriptors stay
in the manifest as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from layerstore.descriptor import Descriptor, MediaType, Platform
from layerstore.digest import Digest
from layerstore.errors import DigestMismatch, UnsupportedManifest
from layerstore.manifest import Index, Manifest, parse_document
from layerstore.store import Store
from registry.client import Client, RemoteManifest
from registry.errors import RegistryError, ResponseError, TransportError, UnsupportedManifestKind
from registry.parallel import TransferPool
from registry.progress import ProgressSink
from registry.reference import Reference

DEFAULT_JOBS = 6


@dataclass
class PullResult:
    """What a pull did: the tagged descriptor and counts of blobs moved."""

    reference: Reference
    digest: Digest  # of the document the reference named (index or manifest)
    descriptor: Descriptor  # what the local name points at
    platforms: list[Platform] = field(default_factory=list)
    fetched: int = 0
    present: int = 0
    foreign: int = 0
    bytes: int = 0


def parse_remote(remote: RemoteManifest, what: str) -> Manifest | Index:
    """Parse a served document; schema 1 becomes :class:`UnsupportedManifestKind`."""
    try:
        return parse_document(remote.raw, remote.media_type or None)
    except UnsupportedManifest as e:
        raise UnsupportedManifestKind(f"{what}: {e}") from None


def pull(
    ref: Reference,
    store: Store,
    *,
    client: Client | None = None,
    platform: Platform | None = None,
    all_platforms: bool = False,
    jobs: int = DEFAULT_JOBS,
    progress: ProgressSink | None = None,
    allow_foreign: bool = False,
    tag: bool = True,
) -> PullResult:
    """Pull ``ref`` into ``store`` and (by default) tag it as ``str(ref)``."""
    sink = progress or ProgressSink()
    own = client is None
    cl = client or Client.for_reference(ref)
    try:
        return _pull(cl, ref, store, platform, all_platforms, jobs, sink, allow_foreign, tag)
    finally:
        if own:
            cl.close()


def _pull(
    client: Client,
    ref: Reference,
    store: Store,
    platform: Platform | None,
    all_platforms: bool,
    jobs: int,
    sink: ProgressSink,
    allow_foreign: bool,
    tag: bool,
) -> PullResult:
    top = client.get_manifest(ref)
    doc = parse_remote(top, str(ref))
    sink.note(f"{ref.familiar()}: resolved {top.digest}")
    # (descriptor, raw) of every document to store, children before parents.
    documents: list[tuple[Descriptor, bytes]] = []
    manifests: list[Manifest] = []
    chosen: Descriptor = top.descriptor
    platforms: list[Platform] = []
    if isinstance(doc, Index):
        if all_platforms:
            entries = list(doc.manifests)
        else:
            want = platform or Platform.host()
            entry = doc.select(want)
            entries = [entry]
            chosen = entry
        for entry in entries:
            child_remote = client.get_manifest(ref, identifier=str(entry.digest))
            child = parse_remote(child_remote, f"{ref.name}@{entry.digest}")
            if isinstance(child, Index):
                raise RegistryError(f"{ref}: nested index {entry.digest} is not supported by pull")
            manifests.append(child)
            if entry.platform is not None:
                platforms.append(entry.platform)
            documents.append((child_remote.descriptor, child_remote.raw))
        if all_platforms:
            documents.append((top.descriptor, top.raw))
        else:
            chosen = documents[0][0]
    else:
        manifests.append(doc)
        documents.append((top.descriptor, top.raw))
    result = PullResult(ref, top.digest, chosen, platforms)

    blobs: dict[Digest, Descriptor] = {}
    for manifest in manifests:
        for desc in (manifest.config, *manifest.layers):
            blobs.setdefault(desc.digest, desc)
    pool = TransferPool(jobs, sink)
    with store.lease():
        for digest, desc in blobs.items():
            if store.blobs.has(digest):
                result.present += 1
                continue
            if MediaType.is_foreign(desc.media_type) and desc.urls and not allow_foreign:
                result.foreign += 1
                sink.note(f"{digest.short}: foreign layer not fetched (urls: {desc.urls[0]})")
                continue
            key = str(digest)
            advance = pool.task(key, digest.short, desc.size)
            # A foreign layer comes from its urls in order, then from the registry itself.
            sources: tuple[str | None, ...] = (None,)
            if MediaType.is_foreign(desc.media_type) and desc.urls:
                sources = (*desc.urls, None)

            def fetch(
                desc: Descriptor = desc,
                advance: Callable[[int], None] = advance,
                sources: tuple[str | None, ...] = sources,
                key: str = key,
            ) -> object:
                for i, url in enumerate(sources):
                    try:
                        client.fetch_blob(ref, desc, store.blobs, progress=advance, url=url)
                        break
                    except (TransportError, ResponseError, DigestMismatch):
                        if i == len(sources) - 1:
                            raise
                sink.finish(key, "downloaded")
                return None

            pool.add(key, fetch)
            result.fetched += 1
            result.bytes += desc.size
        pool.run()
        for desc, raw in documents:
            store.blobs.put_bytes(raw, desc.digest)
        for digest in (*blobs, *(d.digest for d, _ in documents)):
            if store.blobs.has(digest):
                store.images.add_blob_source(digest, ref.registry, ref.repository)
        if tag:
            store.images.tag(str(ref), chosen)
        else:
            store.images.add(chosen)
    return result
