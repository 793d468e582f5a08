"""``pybuild images``, ``rmi``, ``prune``, ``save`` and ``load``: the local store's commands.

Output follows ``docker images`` / ``docker rmi`` / ``docker save`` / ``docker load`` so
scripts written for Docker keep working: the same columns, relative times, SI sizes and
``Untagged:`` / ``Deleted:`` / ``Loaded image:`` lines. Names typed by the user are
normalised with :class:`registry.reference.Reference` (``app`` is
``docker.io/library/app:latest``) and shown in their familiar form.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from registry.errors import InvalidReference
from registry.reference import Reference


def _store() -> Any:
    from layerstore.store import Store

    return Store.open()


def _store_for_gc() -> Any:
    """The store with the build cache's blobs registered as GC roots (so ``rmi`` and
    ``prune`` keep them) and its ``clear`` as a cache pruner (for ``prune --all``)."""
    from builder.cache import CacheIndex

    store = _store()
    cache = CacheIndex(store)

    def clear_cache() -> int:
        cache.clear()
        return 0  # the blobs it held are freed (and counted) by the gc that follows

    store.cache_pruners.append(clear_cache)
    return store


def _normalize(text: str) -> str:
    return str(Reference.parse(text))


def _familiar(name: str) -> str:
    try:
        return Reference.parse(name).familiar()
    except InvalidReference:
        return name


def _local_ref(store: Any, text: str) -> str:
    """The stored name ``text`` means, when it parses as a name and is stored; else ``text``
    itself (an image ID or digest for :meth:`ImageStore.resolve`)."""
    try:
        name = _normalize(text)
    except InvalidReference:
        return text
    return name if name in store.images.names() else text


def human_size(size: int) -> str:
    """Docker's ``HumanSizeWithPrecision(size, 3)``: SI units, 3 significant digits."""
    units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"]
    value = float(size)
    i = 0
    while value >= 1000 and i < len(units) - 1:
        value /= 1000
        i += 1
    return f"{value:.3g}{units[i]}"


def human_duration(seconds: float) -> str:
    """Docker's ``HumanDuration``: "About a minute", "3 hours", "2 weeks"…"""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(hours / 24 / 365)} years"


def _created(text: str | None, now: float) -> str:
    from layerstore.config import parse_created

    when = parse_created(text)
    if when is None:
        return "N/A"
    return human_duration(max(0.0, now - when.timestamp())) + " ago"


def _table(rows: list[list[str]]) -> str:
    """Columns padded like Docker's tabwriter (min width 10, padding 3)."""
    widths = [max(10, max(len(r[i]) for r in rows) + 3) for i in range(len(rows[0]))]
    return "\n".join(
        "".join(cell.ljust(w) for cell, w in zip(r[:-1], widths)) + r[-1] for r in rows
    )


def _split_display(name: str | None) -> tuple[str, str, str]:
    """(REPOSITORY, TAG, DIGEST) as docker images shows them."""
    if name is None:
        return "<none>", "<none>", "<none>"
    from layerstore.layout import split_name

    repo, tag, digest = split_name(_familiar(name))
    return repo, tag or "<none>", digest or "<none>"


@click.command()
@click.argument("repository", required=False)
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs.")
@click.option("--no-trunc", is_flag=True, help="Show full image IDs.")
@click.option("--digests", is_flag=True, help="Show the manifest digest of each image.")
@click.option(
    "--format",
    "format_",
    type=click.Choice(["table", "json"]),
    default="table",
    help="json: one object per line, with Docker's field names.",
)
def images(
    repository: str | None, quiet: bool, no_trunc: bool, digests: bool, format_: str
) -> None:
    """List local images (REPOSITORY[:TAG] filters)."""
    store = _store()
    records = store.images.list()
    if repository:
        want = Reference.parse(repository, default_tag=None)
        records = [
            r
            for r in records
            if r.name is not None
            and split_ref(r.name)[0] == want.name
            and (want.tag is None or split_ref(r.name)[1] == want.tag)
        ]
    now = time.time()
    if quiet:
        seen: list[str] = []
        for r in records:
            shown = str(r.image_id) if no_trunc else r.image_id.short
            if shown not in seen:
                seen.append(shown)
        for s in seen:
            click.echo(s)
        return
    if format_ == "json":
        import json

        for r in records:
            repo, tag, _ = _split_display(r.name)
            doc = {
                "ID": str(r.image_id) if no_trunc else r.image_id.short,
                "Repository": repo,
                "Tag": tag,
                "Digest": str(r.descriptor.digest),
                "CreatedAt": r.created or "",
                "CreatedSince": _created(r.created, now),
                "Size": human_size(r.size),
                "SizeBytes": r.size,
            }
            click.echo(json.dumps(doc, sort_keys=True))
        return
    header = ["REPOSITORY", "TAG"] + (["DIGEST"] if digests else [])
    header += ["IMAGE ID", "CREATED", "SIZE"]
    rows = [header]
    for r in records:
        repo, tag, _ = _split_display(r.name)
        row = [repo, tag]
        if digests:
            row.append(str(r.descriptor.digest))
        row += [
            str(r.image_id) if no_trunc else r.image_id.short,
            _created(r.created, now),
            human_size(r.size),
        ]
        rows.append(row)
    click.echo(_table(rows))


def split_ref(name: str) -> tuple[str, str | None]:
    from layerstore.layout import split_name

    repo, tag, _ = split_name(name)
    return repo, tag


@click.command()
@click.argument("names", nargs=-1, required=True, metavar="IMAGE...")
@click.option("-f", "--force", is_flag=True, help="Remove every name of an image given by ID.")
def rmi(names: tuple[str, ...], force: bool) -> None:
    """Remove local image names; an image is deleted when its last name goes."""
    from layerstore.errors import StoreError

    store = _store_for_gc()
    failed = False
    deleted_any = False
    for text in names:
        try:
            result = store.images.remove(_local_ref(store, text), force=force)
        except StoreError as e:
            click.echo(f"error: {e}", err=True)
            failed = True
            continue
        for name in result.untagged:
            click.echo(f"Untagged: {_familiar(name)}")
        for digest in result.deleted:
            click.echo(f"Deleted: {digest}")
            deleted_any = True
    if deleted_any:
        store.gc()
    if failed:
        sys.exit(1)


@click.command()
@click.option(
    "-a", "--all", "all_", is_flag=True, help="Also drop unpacked layers no image uses, and cache."
)
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation (never asks).")
def prune(all_: bool, force: bool) -> None:
    """Delete images without a name and every blob no image needs."""
    store = _store_for_gc()
    result = store.gc(prune_dangling=True, drop_caches=all_)
    if result.dangling_images:
        click.echo("Deleted Images:")
        for digest in result.dangling_images:
            click.echo(f"deleted: {digest}")
        click.echo()
    click.echo(f"Deleted blobs: {len(result.deleted)}")
    if all_:
        click.echo(f"Deleted snapshots: {result.snapshots_removed}")
    click.echo(f"Total reclaimed space: {human_size(result.freed + result.cache_freed)}")


@click.command()
@click.argument("refs", nargs=-1, required=True, metavar="IMAGE...")
@click.option("-o", "--output", metavar="FILE", help="Write to FILE (default: stdout, or '-').")
@click.option(
    "--format",
    "format_",
    type=click.Choice(["docker", "oci", "oci-dir"]),
    default="docker",
    show_default=True,
    help="docker-archive (also an OCI layout, as Docker ≥ 25), OCI archive, or an OCI layout "
    "directory (-o DIR; merged into an existing layout).",
)
@click.option("--platform", metavar="OS/ARCH[/VARIANT]", help="Platform to save from an index.")
def save(refs: tuple[str, ...], output: str | None, format_: str, platform: str | None) -> None:
    """Write images to a docker-archive or OCI archive."""
    from layerstore.descriptor import Platform
    from layerstore.layout import export_images, save_to_path
    from layerstore.layout import save as save_archive

    plat = None
    if platform:
        try:
            plat = Platform.parse(platform)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--platform") from None
    store = _store()
    chosen = export_images(store, [_local_ref(store, r) for r in refs])
    if format_ == "oci-dir":
        if not output or output == "-":
            raise click.UsageError("--format oci-dir needs -o DIRECTORY")
        from layerstore.layout import save_layout_dir

        save_layout_dir(store, chosen, Path(output))
        return
    options: dict[str, Any] = {"format": format_, "platform": plat, "familiar": _familiar}
    if output and output != "-":
        save_to_path(store, chosen, Path(output), **options)
        return
    if sys.stdout.isatty():
        raise click.UsageError("refusing to write an archive to a terminal: use -o FILE")
    save_archive(store, chosen, sys.stdout.buffer, **options)
    sys.stdout.buffer.flush()


@click.command()
@click.option("-i", "--input", "input_", metavar="FILE|DIR", help="Archive or OCI layout dir.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing.")
def load(input_: str | None, quiet: bool) -> None:
    """Read images from a docker-archive, an OCI archive or an OCI layout directory."""
    from layerstore.layout import load_archive, load_path

    store = _store()
    if input_ and input_ != "-":
        loaded = load_path(store, Path(input_), normalize=_normalize)
    else:
        if sys.stdin.isatty():
            raise click.UsageError("no archive on stdin: use -i FILE")
        loaded = load_archive(store, sys.stdin.buffer, normalize=_normalize, where="stdin")
    if quiet:
        return
    for img in loaded:
        if img.name is not None:
            click.echo(f"Loaded image: {_familiar(img.name)}")
        else:
            extra = f" ({img.note})" if img.note else ""
            click.echo(f"Loaded image ID: {img.image_id}{extra}")
