"""``pybuild run``: run a local image's entrypoint/command in the RUN sandbox.

The container is the sandbox of a RUN step: the image's snapshots as overlay lower
layers, a throw-away upper directory (always removed, so ``--rm`` is the only mode),
``-e`` on top of the image's Env, ``--user``/``--workdir`` overriding its config. The exit
status is the command's (``128 + signal`` when killed), as ``docker run`` returns it.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--rm", is_flag=True, help="Remove the container afterwards (always done).")
@click.option(
    "--network",
    type=click.Choice(["default", "none", "host"]),
    default="default",
    show_default=True,
    help="Network of the container.",
)
@click.option(
    "-e", "--env", "env", multiple=True, metavar="K=V", help="Set an environment variable."
)
@click.option("-u", "--user", metavar="USER[:GROUP]", help="Run as this user (image's passwd).")
@click.option("-w", "--workdir", metavar="DIR", help="Working directory inside the container.")
@click.option("--entrypoint", metavar="CMD", help="Override the image's entrypoint.")
def run(
    image: str,
    command: tuple[str, ...],
    rm: bool,
    network: str,
    env: tuple[str, ...],
    user: str | None,
    workdir: str | None,
    entrypoint: str | None,
) -> None:
    """Run IMAGE's entrypoint and command (or COMMAND) and exit with its status."""
    import os

    from builder.cache import LayerRef
    from builder.sandbox import SandboxConfig, check_sandbox_support, run_in_sandbox
    from layerstore.errors import StoreError
    from layerstore.store import Store
    from registry.errors import InvalidReference
    from registry.reference import Reference

    store = Store.open()
    try:
        found = None
        names = [image]
        try:
            names.insert(0, str(Reference.parse(image)))
        except InvalidReference:
            pass
        for name in names:
            try:
                found = store.image(name)
                break
            except StoreError:
                continue
        if found is None or found.manifest is None or found.config is None:
            raise click.ClickException(f"no local image {image!r} (see pybuild images)")
        config = found.config.config
        layers = [
            LayerRef(desc, diff)
            for desc, diff in zip(found.manifest.layers, found.config.rootfs.diff_ids)
        ]
        entry = list(config.entrypoint or ())
        if entrypoint is not None:
            entry = [entrypoint] if entrypoint else []
        # docker run: COMMAND replaces CMD; --entrypoint also drops the image's CMD.
        if command:
            argv = entry + list(command)
        elif entrypoint is not None:
            argv = entry
        else:
            argv = entry + list(config.cmd or ())
        if not argv:
            raise click.ClickException(f"image {image} has no entrypoint or command: give COMMAND")
        environment = config.env_dict()
        for item in env:
            key, eq, value = item.partition("=")
            if eq:
                environment[key] = value
            elif key in os.environ:
                environment[key] = os.environ[key]
        check_sandbox_support()
        lowerdirs = [
            Path(store.snapshots.ensure(layer.descriptor, layer.diff_id))
            for layer in reversed(layers)
        ]
        (store.root / "tmp").mkdir(exist_ok=True)
        # named like a build's scratch space, so a later build sweeps it up if we are killed
        private = Path(tempfile.mkdtemp(prefix=f"build-{os.getpid()}-run-", dir=store.root / "tmp"))
        try:
            (private / "upper").mkdir()
            (private / "work").mkdir()
            sandbox = SandboxConfig(
                lowerdirs=lowerdirs,
                upperdir=private / "upper",
                workdir=private / "work",
                network="none" if network == "none" else "host",
            )
            out = sys.stdout.buffer

            def write(chunk: bytes) -> None:
                out.write(chunk)
                out.flush()

            result = run_in_sandbox(
                sandbox,
                argv,
                env=environment,
                cwd=workdir or config.working_dir or "/",
                user=user if user is not None else (config.user or None),
                on_output=write,
            )
        finally:
            shutil.rmtree(private, ignore_errors=True)
    finally:
        store.close()
    sys.exit(result.exit_code)
