"""Copy between registries, and remote re-tagging, without a detour through the local store.

Documents keep their exact bytes, so digests survive the copy. Blobs the destination
already has are skipped; within one registry they are mounted from the source repository
(no bytes move, which is also how a remote ``tag`` works); across registries each blob is
streamed from the source's GET straight into one PUT to the destination, its digest checked
on the way, blob by blob, in parallel.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

from layerstore.descriptor import Descriptor, MediaType, Platform
from layerstore.digest import Digest
from layerstore.manifest import Index, Manifest
from registry.client import Client, RemoteManifest
from registry.errors import RegistryError
from registry.parallel import TransferPool
from registry.progress import ProgressSink
from registry.pull import DEFAULT_JOBS, parse_remote
from registry.reference import Reference


@dataclass
class CopyResult:
    source: Reference
    dest: Reference
    digest: Digest
    copied: int = 0
    mounted: int = 0
    existing: int = 0
    bytes: int = 0


def _resolve(
    client: Client, ref: Reference, platform: Platform | None
) -> tuple[list[RemoteManifest], list[Manifest]]:
    """(documents children-first, image manifests) of ``ref`` on its registry."""
    top = client.get_manifest(ref)
    doc = parse_remote(top, str(ref))
    if isinstance(doc, Manifest):
        return [top], [doc]
    entries = [doc.select(platform)] if platform is not None else list(doc.manifests)
    documents: list[RemoteManifest] = []
    manifests: list[Manifest] = []
    for entry in entries:
        child = client.get_manifest(ref, identifier=str(entry.digest))
        parsed = parse_remote(child, f"{ref.name}@{entry.digest}")
        if isinstance(parsed, Index):
            raise RegistryError(f"{ref}: nested index {entry.digest} is not supported")
        documents.append(child)
        manifests.append(parsed)
    if platform is None:
        documents.append(top)
    return documents, manifests


def copy_image(
    src: Reference,
    dst: Reference,
    *,
    src_client: Client,
    dst_client: Client,
    platform: Platform | None = None,
    jobs: int = DEFAULT_JOBS,
    progress: ProgressSink | None = None,
) -> CopyResult:
    """Copy ``src`` (all platforms unless ``platform``) to ``dst``; returns the top digest."""
    sink = progress or ProgressSink()
    documents, manifests = _resolve(src_client, src, platform)
    top = documents[-1]
    result = CopyResult(src, dst, top.digest)
    same_registry = src.registry == dst.registry
    same_repo = same_registry and src.repository == dst.repository
    blobs: dict[Digest, Descriptor] = {}
    for manifest in manifests:
        for d in (manifest.config, *manifest.layers):
            if MediaType.is_foreign(d.media_type) and d.urls:
                continue
            blobs.setdefault(d.digest, d)
    lock = threading.Lock()
    pool = TransferPool(jobs, sink)
    if not same_repo:
        for digest, d in blobs.items():
            key = str(digest)
            advance = pool.task(key, digest.short, d.size)

            def one(
                d: Descriptor = d, advance: Callable[[int], None] = advance, key: str = key
            ) -> object:
                how = _copy_blob(src, dst, d, src_client, dst_client, same_registry, advance)
                with lock:
                    if how == "uploaded":
                        result.copied += 1
                        result.bytes += d.size
                    elif how == "mounted":
                        result.mounted += 1
                    else:
                        result.existing += 1
                sink.finish(key, "copied" if how == "uploaded" else how)
                return None

            pool.add(key, one)
        pool.run()
    for i, doc in enumerate(documents):
        last = i == len(documents) - 1
        target = dst if last else dst.repo().with_digest(doc.digest)
        if last and dst.tag is None and dst.digest is None:
            target = dst.with_tag("latest")
        dst_client.put_manifest(target, doc.raw, doc.media_type)
    sink.note(f"{dst.familiar()}: copied {top.digest}")
    return result


def _copy_blob(
    src: Reference,
    dst: Reference,
    d: Descriptor,
    src_client: Client,
    dst_client: Client,
    same_registry: bool,
    advance: Callable[[int], None],
) -> str:
    if dst_client.blob_size(dst, d.digest, push=True) is not None:
        advance(d.size)
        return "exists"
    if same_registry:
        return _mount_or_stream(src, dst, d, src_client, dst_client, advance)
    return _stream(src, dst, d, src_client, dst_client, advance)


def _mount_or_stream(
    src: Reference,
    dst: Reference,
    d: Descriptor,
    src_client: Client,
    dst_client: Client,
    advance: Callable[[int], None],
) -> str:
    location = None
    with contextlib.suppress(RegistryError):
        location = dst_client.mount_blob(dst, d.digest, src.repository)
        if location is None:
            advance(d.size)
            return "mounted"
        # The 202 opened an upload session; it is not reused across clients, so close it.
        dst_client.cancel_upload(dst, location)
    return _stream(src, dst, d, src_client, dst_client, advance)


def _stream(
    src: Reference,
    dst: Reference,
    d: Descriptor,
    src_client: Client,
    dst_client: Client,
    advance: Callable[[int], None],
) -> str:
    """GET from the source straight into one PUT to the destination (no temp file)."""
    return dst_client.upload_blob(
        dst,
        d.digest,
        d.size,
        lambda: src_client.open_blob(src, d),  # type: ignore[arg-type,return-value]
        progress=advance,
        check_exists=False,
        whole=True,
    )
