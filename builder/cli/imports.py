"""``pybuild import``: make a one-layer image from a root file system directory or tarball.

Like ``docker import``: the tree becomes the image's only layer; ``--change`` applies
Dockerfile metadata instructions (``CMD``, ``ENTRYPOINT``, ``ENV``, ``WORKDIR``, ``USER``,
``LABEL``, ``EXPOSE``, ``VOLUME``, ``STOPSIGNAL``) to its config. Tests and the demo use it
to turn Debian's busybox-static into a base image without any registry.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click


@click.command("import")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("name")
@click.option(
    "-c",
    "--change",
    "changes",
    multiple=True,
    metavar="INSTRUCTION",
    help="Apply a Dockerfile instruction to the config (repeatable), e.g. 'CMD [\"sh\"]'.",
)
@click.option("-m", "--message", default="", help="Comment for the history entry.")
def import_(source: Path, name: str, changes: tuple[str, ...], message: str) -> None:
    """Create image NAME from SOURCE, a root file system directory or a tar archive."""
    from builder.dockerfile import instructions as ins
    from builder.dockerfile import parse
    from builder.errors import BuildError
    from builder.imageconfig import Expander, apply_metadata, base_config, timestamp
    from builder.outputs import normalize_tag
    from layerstore.descriptor import MediaType, Platform
    from layerstore.layer import write_layer
    from layerstore.manifest import Manifest
    from layerstore.store import Store

    store = Store.open()
    tmp: Path | None = None
    try:
        tree = source
        if not source.is_dir():
            from builder.context import extract_tar

            tmp = Path(tempfile.mkdtemp(prefix="pybuild-import-"))
            tree = tmp / "rootfs"
            tree.mkdir()
            with open(source, "rb") as f:
                extract_tar(f, tree)
        host = Platform.host()
        with store.lease():
            layer = write_layer(tree, store.blobs, overlay=False)
            config = base_config(host.os, host.architecture, host.variant)
            created = timestamp(None)
            config = config.with_layer(
                layer.diff_id,
                created_by=f"pybuild import {source.name}",
                created=created,
                comment=message or None,
            )
            for change in changes:
                dockerfile = parse(f"FROM scratch\n{change}\n", "--change")
                for instruction in dockerfile.stages[0].instructions:
                    if isinstance(instruction, ins.Workdir):
                        config = config.with_container_config(working_dir=instruction.path)
                        continue
                    try:
                        config, _ = apply_metadata(
                            config, instruction, Expander({}, escape="\\", filename="--change")
                        )
                    except TypeError:
                        raise BuildError(
                            f"--change {change!r}: {instruction.keyword} cannot be applied by import"
                        ) from None
            config_desc = store.put_config(config)
            manifest = Manifest.build(
                config=config_desc, layers=[layer.descriptor()], media_type=MediaType.OCI_MANIFEST
            )
            store.commit_image(manifest, [normalize_tag(name)])
        click.echo(str(config.digest))
    finally:
        store.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
