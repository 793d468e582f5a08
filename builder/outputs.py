"""Build exporters: the local store, a registry, OCI layout/archive, docker-archive, a tree, a tar.

``--output``/``-o`` takes ``docker buildx``'s CSV form (``type=oci,dest=out.tar``); a bare
path means ``type=local,dest=PATH`` and ``-`` a tar of the final tree on standard output,
as buildx reads them. Every exporter works from an image already committed to the local
store (a build's image is always stored, named or dangling), so each is a copy out of the
store with the layerstore/registry code that ``pybuild save`` and ``pybuild push`` use.
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from builder.errors import BuildError
from layerstore.descriptor import Descriptor
from layerstore.manifest import Manifest
from layerstore.store import Store

OUTPUT_TYPES = ("image", "registry", "oci", "docker", "local", "tar")


class OutputError(BuildError):
    """A malformed ``--output`` value or an export that failed."""


@dataclass(frozen=True)
class OutputSpec:
    """One ``--output``: its type and attributes (``dest``, ``tar``, ``name``, ``push``)."""

    type: str
    attrs: tuple[tuple[str, str], ...] = ()

    def get(self, key: str, default: str | None = None) -> str | None:
        return dict(self.attrs).get(key, default)

    @property
    def dest(self) -> str | None:
        return self.get("dest")


def normalize_tag(tag: str) -> str:
    """The stored form of a ``-t`` name (``app:1`` → ``docker.io/library/app:1``)."""
    from registry.errors import InvalidReference
    from registry.reference import Reference

    try:
        return str(Reference.parse(tag))
    except InvalidReference as e:
        raise OutputError(f"invalid tag {tag!r}: {e}") from None


def parse_output(text: str) -> OutputSpec:
    """Parse one ``--output`` value (CSV ``key=value`` pairs, or a bare path / ``-``)."""
    text = text.strip()
    if not text:
        raise OutputError("empty --output value")
    if "=" not in text:
        if text == "-":
            return OutputSpec("tar", (("dest", "-"),))
        return OutputSpec("local", (("dest", text),))
    attrs: dict[str, str] = {}
    for field_ in text.split(","):
        key, eq, value = field_.partition("=")
        if not eq:
            raise OutputError(f"--output {text!r}: {field_!r} is not key=value")
        attrs[key.strip().lower()] = value.strip()
    kind = attrs.pop("type", None)
    if kind is None:
        raise OutputError(f"--output {text!r}: type= is missing ({', '.join(OUTPUT_TYPES)})")
    if kind not in OUTPUT_TYPES:
        raise OutputError(f"--output {text!r}: unknown type {kind!r} ({', '.join(OUTPUT_TYPES)})")
    if kind in ("oci", "docker", "local", "tar") and "dest" not in attrs:
        raise OutputError(f"--output type={kind} needs dest=PATH")
    return OutputSpec(kind, tuple(sorted(attrs.items())))


@dataclass
class ExportContext:
    """What exporters work from: the store, the committed image, its manifest and names."""

    store: Store
    descriptor: Descriptor
    manifest: Manifest
    names: Sequence[str]
    insecure_registries: tuple[str, ...] = ()
    pushed: list[str] = field(default_factory=list)


def export(spec: OutputSpec, ctx: ExportContext) -> None:
    """Run one exporter."""
    if spec.type == "image":
        extra = [n for n in (spec.get("name") or "").split(";") if n]
        if extra:
            for name in extra:
                ctx.store.images.tag(normalize_tag(name), ctx.descriptor)
        if spec.get("push", "false") == "true":
            push_all(ctx, _names_of(spec, ctx))
        return
    if spec.type == "registry":
        push_all(ctx, _names_of(spec, ctx))
        return
    dest = spec.dest
    assert dest is not None
    if spec.type == "oci":
        if spec.get("tar", "true") == "false":
            from layerstore.layout import ExportImage, save_layout_dir

            save_layout_dir(ctx.store, [ExportImage(ctx.descriptor, tuple(ctx.names))], Path(dest))
        else:
            _save_archive(ctx, dest, "oci")
    elif spec.type == "docker":
        _save_archive(ctx, dest, "docker")
    elif spec.type == "local":
        write_tree(ctx.store, ctx.manifest, Path(dest))
    elif spec.type == "tar":
        _write_tree_tar(ctx, dest)


def _names_of(spec: OutputSpec, ctx: ExportContext) -> list[str]:
    names = [n for n in (spec.get("name") or "").split(";") if n] or list(ctx.names)
    if not names:
        raise OutputError("pushing needs an image name: give -t NAME (or name= in --output)")
    return names


def push_all(ctx: ExportContext, names: Sequence[str]) -> None:
    """Push the image under every name (each a full registry reference)."""
    from registry.client import Client
    from registry.push import push
    from registry.reference import Reference
    from registry.transport import TransportOptions

    options = TransportOptions.from_env(ctx.insecure_registries)
    for name in names:
        ref = Reference.parse(name)
        with Client.for_reference(ref, options=options) as client:
            push(str(ctx.descriptor.digest), ref, ctx.store, client=client)
        ctx.pushed.append(str(ref))


def _familiar(name: str) -> str:
    from registry.errors import InvalidReference
    from registry.reference import Reference

    try:
        return Reference.parse(name).familiar()
    except InvalidReference:
        return name


def _save_archive(ctx: ExportContext, dest: str, format_: str) -> None:
    from layerstore.layout import ExportImage, save, save_to_path

    images = [ExportImage(ctx.descriptor, tuple(ctx.names))]
    options = {"format": format_, "familiar": _familiar}
    if dest == "-":
        save(ctx.store, images, sys.stdout.buffer, **options)  # type: ignore[arg-type]
    else:
        save_to_path(ctx.store, images, Path(dest), **options)


def write_tree(store: Store, manifest: Manifest, dest: Path) -> None:
    """Unpack the image's layers in order into ``dest`` (the final file system)."""
    from layerstore.layer import apply_layer

    dest.mkdir(parents=True, exist_ok=True)
    for layer in manifest.layers:
        with store.blobs.open(layer.digest) as blob:
            apply_layer(blob, dest, media_type=layer.media_type)


def _write_tree_tar(ctx: ExportContext, dest: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="pybuild-tar-"))
    try:
        tree = tmp / "tree"
        write_tree(ctx.store, ctx.manifest, tree)
        if dest == "-":
            out = sys.stdout.buffer
            _tar_tree(tree, out)
        else:
            part = Path(dest + ".part")
            with open(part, "wb") as f:
                _tar_tree(tree, f)
            os.replace(part, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tar_tree(tree: Path, out: object) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for name in sorted(os.listdir(tree)):
            tar.add(tree / name, arcname=name, recursive=True)
