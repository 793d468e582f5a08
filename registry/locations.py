"""Where ``pybuild copy`` reads and writes images: registries, OCI layouts and archives.

The names follow skopeo's transports so a command line carries over:
``docker://REF`` (or a bare REF), ``oci:DIR[:NAME]``, ``oci-archive:FILE[:NAME]`` and
``docker-archive:FILE[:NAME]``. Registry to registry goes through :mod:`registry.copy`
(mounts, no local copy). An OCI layout directory *is* a blob directory, so pushing from one
reads its blobs in place; everything else passes through a private temporary store next to
the target, built and read with :mod:`layerstore.layout`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerstore.blobs import BlobStore
from layerstore.canonicaljson import canonical_json
from layerstore.descriptor import Descriptor, MediaType, Platform
from layerstore.digest import Digest
from layerstore.manifest import Index, Manifest, parse_document
from layerstore.store import Store
from registry.client import Client
from registry.copy import copy_image
from registry.errors import RegistryError
from registry.progress import ProgressSink
from registry.pull import DEFAULT_JOBS, pull
from registry.push import push_blobs
from registry.reference import Reference
from registry.transport import TransportOptions

KINDS = ("docker", "oci", "oci-archive", "docker-archive")
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Location:
    """A parsed copy source or destination."""

    kind: str
    ref: Reference | None = None
    path: Path | None = None
    name: str | None = None  # the image name inside a layout or archive

    def __str__(self) -> str:
        if self.kind == "docker":
            return f"docker://{self.ref}"
        return f"{self.kind}:{self.path}" + (f":{self.name}" if self.name else "")


def parse_location(text: str) -> Location:
    """``docker://REF``, ``REF``, ``oci:DIR[:NAME]``, ``oci-archive:F[:NAME]``, ``docker-archive:F[:NAME]``."""
    for kind in ("oci-archive", "docker-archive", "oci"):
        prefix = f"{kind}:"
        if text.startswith(prefix):
            path, _, name = text[len(prefix) :].partition(":")
            if not path:
                raise RegistryError(f"{text!r}: {kind}: needs a path")
            return Location(kind, path=Path(path), name=name or None)
    return Location("docker", ref=Reference.parse(text.removeprefix("docker://")))


@contextlib.contextmanager
def _temp_store(near: Path | None) -> Iterator[Store]:
    base = near.parent if near is not None and near.parent.is_dir() else None
    tmp = tempfile.mkdtemp(prefix=".pybuild-copy-", dir=base)
    try:
        store = Store.open(Path(tmp))
        try:
            yield store
        finally:
            store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _layout_entry(root: Path, name: str | None) -> Descriptor:
    """The index.json entry of an OCI layout named ``name`` (or its only entry)."""
    try:
        index = json.loads((root / "index.json").read_bytes())
    except FileNotFoundError:
        raise RegistryError(f"{root}: not an OCI layout (no index.json)") from None
    except ValueError as e:
        raise RegistryError(f"{root}/index.json is not valid JSON: {e}") from None
    entries = [Descriptor.from_json(m) for m in index.get("manifests") or []]
    if name is None:
        if len(entries) != 1:
            raise RegistryError(f"{root} holds {len(entries)} images: name one as oci:{root}:NAME")
        return entries[0]
    for entry in entries:
        if entry.annotation(REF_NAME) == name:
            return entry
    names = sorted(filter(None, (e.annotation(REF_NAME) for e in entries)))
    raise RegistryError(
        f"{root} has no image named {name!r} (it has: {', '.join(names) or 'none'})"
    )


def _reachable(blobs: BlobStore, desc: Descriptor) -> Iterator[Descriptor]:
    yield desc
    if not (MediaType.is_manifest(desc.media_type) or MediaType.is_index(desc.media_type)):
        return
    doc = parse_document(blobs.read_bytes(desc.digest), desc.media_type)
    if isinstance(doc, Index):
        for child in doc.manifests:
            if blobs.has(child.digest):
                yield from _reachable(blobs, child)
    elif isinstance(doc, Manifest):
        yield doc.config
        yield from (d for d in doc.layers if blobs.has(d.digest))


def write_layout(blobs: BlobStore, desc: Descriptor, root: Path, name: str | None) -> None:
    """Add the image ``desc`` to the OCI layout at ``root`` (created if needed)."""
    root.mkdir(parents=True, exist_ok=True)
    target = BlobStore(root)
    for d in _reachable(blobs, desc):
        if target.has(d.digest):
            continue
        dst = target.path(d.digest)
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(blobs.path(d.digest), dst)  # same filesystem: no copy
        except OSError:
            with blobs.open(d.digest) as f:
                target.put_stream(f, d.digest)
    layout = root / "oci-layout"
    if not layout.exists():
        layout.write_bytes(b'{"imageLayoutVersion":"1.0.0"}')
    index_path = root / "index.json"
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX}
    if index_path.exists():
        index = json.loads(index_path.read_bytes())
    entries = [
        m
        for m in index.get("manifests") or []
        if name is None or (m.get("annotations") or {}).get(REF_NAME) != name
    ]
    entry = Descriptor(
        desc.media_type,
        desc.digest,
        desc.size,
        annotations=((REF_NAME, name),) if name else (),
    ).to_json()
    entries.append(entry)
    index["manifests"] = entries
    tmp = index_path.with_suffix(".json.tmp")
    tmp.write_bytes(canonical_json(index))
    os.replace(tmp, index_path)


@dataclass
class CopyOutcome:
    digest: Digest
    detail: str


def copy_between(
    src: Location,
    dst: Location,
    *,
    options: TransportOptions | None = None,
    platform: Platform | None = None,
    jobs: int = DEFAULT_JOBS,
    progress: ProgressSink | None = None,
) -> CopyOutcome:
    """Copy one image from ``src`` to ``dst`` (see the module docstring for the kinds)."""
    sink = progress or ProgressSink()
    if src.kind == "docker" and dst.kind == "docker":
        assert src.ref is not None and dst.ref is not None
        with Client.for_reference(src.ref, options=options) as sc:
            if dst.ref.registry == src.ref.registry:
                r = copy_image(
                    src.ref, dst.ref, src_client=sc, dst_client=sc, platform=platform,
                    jobs=jobs, progress=sink,
                )  # fmt: skip
            else:
                with Client.for_reference(dst.ref, options=options) as dc:
                    r = copy_image(
                        src.ref, dst.ref, src_client=sc, dst_client=dc, platform=platform,
                        jobs=jobs, progress=sink,
                    )  # fmt: skip
        return CopyOutcome(
            r.digest, f"{r.copied} copied, {r.mounted} mounted, {r.existing} already there"
        )
    if src.kind != "docker" and dst.kind != "docker":
        raise RegistryError(f"copy from {src} to {dst}: one side must be a registry")
    if dst.kind == "docker":
        return _to_registry(src, dst, options, jobs, sink)
    return _from_registry(src, dst, options, platform, jobs, sink)


def _to_registry(
    src: Location,
    dst: Location,
    options: TransportOptions | None,
    jobs: int,
    sink: ProgressSink,
) -> CopyOutcome:
    from layerstore import layout

    assert dst.ref is not None and src.path is not None
    with Client.for_reference(dst.ref, options=options) as client:
        if src.kind == "oci":
            entry = _layout_entry(src.path, src.name)
            r = push_blobs(
                BlobStore(src.path), entry, dst.ref, client=client, jobs=jobs, progress=sink
            )
            return CopyOutcome(r.digest, f"{r.uploaded} uploaded, {r.existing} already there")
        with _temp_store(None) as tmp:
            loaded = layout.load_path(tmp, src.path, normalize=_normalise)
            chosen = [i for i in loaded if src.name is None or i.name == _normalise(src.name)]
            if len(chosen) != 1:
                names = ", ".join(str(i.name) for i in loaded)
                raise RegistryError(
                    f"{src}: {'no' if not chosen else 'more than one'} matching image "
                    f"(it has: {names or 'none'})"
                )
            r = push_blobs(
                tmp.blobs, chosen[0].descriptor, dst.ref, client=client, jobs=jobs, progress=sink
            )
            return CopyOutcome(r.digest, f"{r.uploaded} uploaded, {r.existing} already there")


def _normalise(name: str) -> str:
    try:
        return str(Reference.parse(name))
    except RegistryError:
        return name


def _from_registry(
    src: Location,
    dst: Location,
    options: TransportOptions | None,
    platform: Platform | None,
    jobs: int,
    sink: ProgressSink,
) -> CopyOutcome:
    from layerstore import layout

    assert src.ref is not None and dst.path is not None
    with Client.for_reference(src.ref, options=options) as client, _temp_store(dst.path) as tmp:
        single = platform is not None or dst.kind == "docker-archive"
        result = pull(
            src.ref,
            tmp,
            client=client,
            platform=platform,
            all_platforms=not single,
            jobs=jobs,
            progress=sink,
        )
        desc = result.descriptor
        if dst.kind == "oci":
            write_layout(tmp.blobs, desc, dst.path, dst.name)
        else:
            name = _normalise(dst.name) if dst.name else str(src.ref)
            tmp.images.tag(name, desc)
            layout.save_to_path(
                tmp,
                [layout.ExportImage(desc, (name,))],
                dst.path,
                format="oci" if dst.kind == "oci-archive" else "docker",
                platform=platform,
                familiar=lambda n: Reference.parse(n).familiar(),
            )
        return CopyOutcome(desc.digest, f"{result.fetched} blobs fetched")
