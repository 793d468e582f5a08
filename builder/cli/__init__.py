"""The ``pybuild`` command line: a click group whose subcommands load on first use.

Each subcommand lives in its own module under ``builder/cli/`` and is imported only when it
runs, so ``pybuild --version`` and ``pybuild parse`` never pay for httpx or rich. A first
argument that is not a subcommand means ``build`` (``pybuild -t app:1 .`` is
``pybuild build -t app:1 .``), as with ``docker build``'s muscle memory.

Errors from the three packages become one line on stderr and exit status 1; click's usage
errors exit with 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

import click

from builder import __version__

# name → (module, attribute, one-line help shown by `pybuild --help` without importing it)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "build": ("builder.cli.build", "build", "Build an image from a Dockerfile (the default)."),
    "parse": ("builder.cli.parse", "parse", "Parse a Dockerfile and print its instructions."),
    "run": ("builder.cli.run", "run", "Run a command in a local image's sandbox."),
    "import": ("builder.cli.imports", "import_", "Create an image from a root file system."),
    "images": ("builder.cli.images", "images", "List local images."),
    "rmi": ("builder.cli.images", "rmi", "Remove local image names."),
    "prune": ("builder.cli.images", "prune", "Delete unreferenced blobs and build cache."),
    "save": ("builder.cli.images", "save", "Write images to a docker-archive or OCI archive."),
    "load": ("builder.cli.images", "load", "Read images from an archive or OCI layout."),
    "pull": ("builder.cli.registry", "pull", "Pull an image from a registry."),
    "push": ("builder.cli.registry", "push", "Push a local image to a registry."),
    "tag": ("builder.cli.registry", "tag", "Give an image another name (locally or remotely)."),
    "copy": ("builder.cli.registry", "copy", "Copy an image between registries and archives."),
    "inspect": ("builder.cli.registry", "inspect", "Show an image's manifest and config."),
    "ls-tags": ("builder.cli.registry", "ls_tags", "List a repository's tags."),
    "login": ("builder.cli.registry", "login", "Save credentials for a registry."),
    "logout": ("builder.cli.registry", "logout", "Remove saved credentials for a registry."),
}

DEFAULT_COMMAND = "build"


def _available(name: str) -> bool:
    module = COMMANDS[name][0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if _available(name)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS or not _available(cmd_name):
            return None
        module, attr, _ = COMMANDS[cmd_name]
        cmd = getattr(importlib.import_module(module), attr)
        assert isinstance(cmd, click.Command)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # `pybuild -t x .` / `pybuild .` → `pybuild build -t x .`; group options stay first.
        group_options = ("--help", "-h", "--version")
        if (
            args
            and args[0] not in COMMANDS
            and args[0] not in group_options
            and _available(DEFAULT_COMMAND)
        ):
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "--version", prog_name="pybuild", message="%(prog)s %(version)s")
def cli() -> None:
    """pybuild: build container images from Dockerfiles without a daemon, and move them
    between registries.

    \b
    pybuild -t app:1.2 .              build ./Dockerfile, tag app:1.2 in the local store
    pybuild parse --json Dockerfile   show how a Dockerfile parses
    """


def _fail(message: str, status: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(status)


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``pybuild`` console script."""
    try:
        return cli.main(args=argv, prog_name="pybuild", standalone_mode=True)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as e:
        # imported only on failure: `layerstore` and `registry` packages are slow to import,
        # and `pybuild parse` / `--version` must start fast
        from builder.errors import BuildError
        from layerstore.errors import StoreError
        from registry.errors import RegistryError

        if isinstance(e, (BuildError, StoreError, RegistryError)):
            _fail(str(e))
        raise
