"""``pybuild build``: the command line of a Dockerfile build (``docker build``'s options).

Parses options into :class:`builder.build.BuildOptions`, picks the progress display, runs
the build and prints the final line (image digest, tags, total time). Errors propagate to
``builder.cli.main`` (one line, exit status 1); bad option values are usage errors (2).
"""

from __future__ import annotations

import os
import sys

import click


def _pairs(values: tuple[str, ...], option: str, *, from_env: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        key, eq, rest = value.partition("=")
        if not key:
            raise click.BadParameter(f"{value!r} has no name", param_hint=option)
        if eq:
            out[key] = rest
        elif from_env:
            if key in os.environ:
                out[key] = os.environ[key]
        else:
            out[key] = ""
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("context", metavar="CONTEXT")
@click.option(
    "-t",
    "--tag",
    "tags",
    multiple=True,
    metavar="NAME[:TAG]",
    help="Name the image in the local store (repeatable).",
)
@click.option(
    "-f",
    "--file",
    "dockerfile",
    metavar="PATH",
    help="The Dockerfile (default CONTEXT/Dockerfile; '-' reads it from stdin).",
)
@click.option(
    "--build-arg",
    "build_args",
    multiple=True,
    metavar="K=V",
    help="Set a build-time variable; 'K' alone takes it from the environment.",
)
@click.option("--target", metavar="STAGE", help="Build this stage (and what it needs) only.")
@click.option(
    "--no-cache", is_flag=True, help="Do not use the build cache (records are still written)."
)
@click.option("--pull", is_flag=True, help="Resolve base images from their registry again.")
@click.option(
    "--platform",
    metavar="OS/ARCH",
    help="Target platform; only this machine's platform is supported.",
)
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Add an image label.")
@click.option(
    "--network",
    type=click.Choice(["default", "none", "host"]),
    default="default",
    show_default=True,
    help="Network for RUN steps.",
)
@click.option("--push", is_flag=True, help="Push every tag to its registry after the build.")
@click.option(
    "-o",
    "--output",
    "outputs",
    multiple=True,
    metavar="SPEC",
    help="Export: type=image|registry|oci|docker|local|tar[,dest=PATH][,tar=false]; "
    "a bare PATH means type=local,dest=PATH.",
)
@click.option("--iidfile", metavar="FILE", help="Write the image ID (config digest) to FILE.")
@click.option(
    "--metadata-file",
    metavar="FILE",
    help="Write build results as JSON (digests, descriptor, tags) to FILE.",
)
@click.option(
    "--progress",
    type=click.Choice(["auto", "tty", "plain", "quiet"]),
    default="auto",
    show_default=True,
    help="Progress display: live view on a terminal, plain lines otherwise.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print only the image ID.")
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Stages built in parallel.",
)
@click.option("--debug-cache", is_flag=True, help="Print each step's cache key inputs.")
@click.option(
    "--cache-from",
    "cache_from",
    multiple=True,
    metavar="IMAGE",
    help="Reuse the steps recorded in IMAGE (built with --cache-to type=inline); repeatable.",
)
@click.option(
    "--cache-to",
    "cache_to",
    metavar="type=inline",
    help="type=inline: embed this build's step records in the image for --cache-from.",
)
@click.option(
    "--secret",
    "secrets",
    multiple=True,
    metavar="id=ID[,src=FILE|env=VAR]",
    help="Expose a secret to RUN --mount=type=secret (never stored in the image or cache).",
)
@click.option(
    "--insecure-registry",
    "insecure",
    multiple=True,
    metavar="HOST",
    help="Allow plain HTTP and unverified TLS for HOST (repeatable).",
)
def build(
    context: str,
    tags: tuple[str, ...],
    dockerfile: str | None,
    build_args: tuple[str, ...],
    target: str | None,
    no_cache: bool,
    pull: bool,
    platform: str | None,
    labels: tuple[str, ...],
    network: str,
    push: bool,
    outputs: tuple[str, ...],
    iidfile: str | None,
    metadata_file: str | None,
    progress: str,
    quiet: bool,
    jobs: int,
    debug_cache: bool,
    cache_from: tuple[str, ...],
    cache_to: str | None,
    secrets: tuple[str, ...],
    insecure: tuple[str, ...],
) -> None:
    """Build an image from a Dockerfile.

    CONTEXT is a directory, '-' (stdin holds a Dockerfile, or a tar/tar.gz of the
    context), a git URL (https://host/repo.git#ref:subdir) or an http(s) URL of a tarball.

    \b
    pybuild -t app:1 .
    pybuild build -t registry.example/app:1 --push .
    pybuild -f - . < Dockerfile
    pybuild -o type=oci,dest=app.tar .
    """
    from builder.build import BuildOptions, parse_secret
    from builder.build import build as run_build
    from builder.errors import BuildError
    from builder.outputs import OutputError, parse_output
    from builder.progress import make_progress

    try:
        specs = [parse_output(o) for o in outputs]
    except OutputError as e:
        raise click.BadParameter(str(e), param_hint="--output") from None
    if context == "-" and dockerfile == "-":
        raise click.UsageError("CONTEXT and --file cannot both be '-' (standard input)")
    try:
        secret_values = dict(parse_secret(spec) for spec in secrets)
    except BuildError as e:
        raise click.BadParameter(str(e), param_hint="--secret") from None
    if cache_to is not None and cache_to.strip() not in ("type=inline", "inline"):
        raise click.BadParameter(
            f"{cache_to!r}: only type=inline is supported", param_hint="--cache-to"
        )
    options = BuildOptions(
        cache_from=cache_from,
        cache_to_inline=cache_to is not None,
        secrets=secret_values,
        context=context,
        dockerfile=dockerfile,
        tags=tags,
        build_args=_pairs(build_args, "--build-arg", from_env=True),
        target=target,
        no_cache=no_cache,
        pull=pull,
        platform=platform,
        labels=_pairs(labels, "--label", from_env=False),
        network=network,
        outputs=specs,
        push=push,
        iidfile=iidfile,
        metadata_file=metadata_file,
        jobs=jobs,
        debug_cache=debug_cache,
        insecure_registries=insecure,
    )
    display = make_progress(progress, quiet=quiet)
    try:
        result = run_build(options, display)
    finally:
        display.close()
    # With an export to stdout (-o -), stdout carries the archive: report on stderr.
    to_stderr = any(spec.dest == "-" for spec in specs)
    if quiet:
        click.echo(result.config_digest, err=to_stderr)
        return
    names = ", ".join(_familiar(n) for n in result.names) or "(no tag)"
    display_line = (
        f"built {result.digest} (image ID {result.config_digest[:19]}) as {names} "
        f"in {result.seconds:.2f}s"
    )
    if result.pushed:
        display_line += f"; pushed {', '.join(result.pushed)}"
    click.echo(display_line, err=to_stderr)
    sys.stdout.flush()


def _familiar(name: str) -> str:
    from registry.errors import InvalidReference
    from registry.reference import Reference

    try:
        return Reference.parse(name).familiar()
    except InvalidReference:
        return name
