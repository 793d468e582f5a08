"""``pybuild pull|push|tag|copy|inspect|ls-tags|login|logout``: the registry commands.

Thin click wrappers over :mod:`registry`: parse references, open the local store
(``$PYBUILD_ROOT``), choose the progress display, print results. Errors propagate as
RegistryError/StoreError and become one line with exit status 1 in ``builder.cli.main``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from registry.reference import Reference

if TYPE_CHECKING:  # heavy modules load only when a command runs
    from layerstore.descriptor import Platform
    from layerstore.store import Store
    from registry.client import Client
    from registry.progress import ProgressSink


def _transport_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--insecure-registry",
        "insecure",
        multiple=True,
        metavar="HOST",
        help="Allow plain HTTP and unverified TLS for HOST (repeatable; also "
        "$PYBUILD_INSECURE_REGISTRIES).",
    )(f)
    return f


def _progress_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--progress",
        type=click.Choice(["auto", "tty", "plain", "quiet"]),
        default="auto",
        show_default=True,
        help="Progress display: bars on a terminal, one line per event otherwise.",
    )(f)
    f = click.option("-q", "--quiet", is_flag=True, help="Print only the final digest.")(f)
    f = click.option(
        "-j",
        "--jobs",
        type=click.IntRange(1, 32),
        default=6,
        show_default=True,
        help="Blobs transferred in parallel.",
    )(f)
    return f


def _parse_ref(text: str) -> Reference:
    return Reference.parse(text)


def _client(ref: Reference, insecure: tuple[str, ...]) -> Client:
    from registry.client import Client
    from registry.transport import TransportOptions

    return Client.for_reference(ref, options=TransportOptions.from_env(insecure))


def _sink(progress: str, quiet: bool) -> ProgressSink:
    from registry.progress import make_progress

    if not quiet:
        _show_retries()
    return make_progress("quiet" if quiet else progress)


def _show_retries() -> None:
    """Print the transport's retry notices (already redacted) on stderr, once per process."""
    import logging

    class StderrLines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            sys.stderr.write(f"{self.format(record)}\n")  # the stderr of the moment

    log = logging.getLogger("pybuild.registry")
    if not any(type(h).__name__ == "StderrLines" for h in log.handlers):
        log.addHandler(StderrLines())
        log.setLevel(logging.INFO)


def _platform(text: str | None) -> Platform | None:
    if text is None:
        return None
    from layerstore.descriptor import Platform

    try:
        return Platform.parse(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--platform") from None


def _store() -> Store:
    from layerstore.store import Store

    return Store.open()


@click.command()
@click.argument("reference")
@click.option("--platform", metavar="OS/ARCH[/VARIANT]", help="Platform to pick from an index.")
@click.option("--all-platforms", is_flag=True, help="Pull every platform of an index.")
@click.option("--allow-foreign-layers", is_flag=True, help="Fetch non-distributable layers.")
@_progress_options
@_transport_options
def pull(
    reference: str,
    platform: str | None,
    all_platforms: bool,
    allow_foreign_layers: bool,
    progress: str,
    quiet: bool,
    jobs: int,
    insecure: tuple[str, ...],
) -> None:
    """Pull REFERENCE from its registry into the local store."""
    from registry.pull import pull as do_pull

    ref = _parse_ref(reference)
    plat = _platform(platform)
    sink = _sink(progress, quiet)
    try:
        with _client(ref, insecure) as client:
            result = do_pull(
                ref,
                _store(),
                client=client,
                platform=plat,
                all_platforms=all_platforms,
                jobs=jobs,
                progress=sink,
                allow_foreign=allow_foreign_layers,
            )
    finally:
        sink.close()
    if quiet:
        click.echo(str(result.digest))
    else:
        click.echo(
            f"{ref}: pulled {result.digest} ({result.fetched} blobs fetched, "
            f"{result.present} already present)"
        )


@click.command()
@click.argument("image")
@click.argument("destination", required=False)
@_progress_options
@_transport_options
def push(
    image: str,
    destination: str | None,
    progress: str,
    quiet: bool,
    jobs: int,
    insecure: tuple[str, ...],
) -> None:
    """Push local IMAGE to DESTINATION (default: IMAGE's own name)."""
    from registry.push import push as do_push

    store = _store()
    local = _local_name(store, image)
    dest = _parse_ref(destination or image)
    sink = _sink(progress, quiet)
    try:
        with _client(dest, insecure) as client:
            result = do_push(local, dest, store, client=client, jobs=jobs, progress=sink)
    finally:
        sink.close()
    if quiet:
        click.echo(str(result.digest))
    else:
        click.echo(
            f"{dest}: pushed {result.digest} ({result.uploaded} uploaded, {result.mounted} "
            f"mounted, {result.existing} already there)"
        )


def _local_name(store: Store, text: str) -> str:
    """A local image by normalised name when it parses as one, else as given (an ID)."""
    from registry.errors import InvalidReference

    try:
        name = str(Reference.parse(text))
    except InvalidReference:
        return text
    return name if store.images.get(name) is not None else text


@click.command()
@click.argument("source")
@click.argument("target")
@click.option("--remote", is_flag=True, help="Re-tag in the registry even if SOURCE is local.")
@_transport_options
def tag(source: str, target: str, remote: bool, insecure: tuple[str, ...]) -> None:
    """Give an image another name: locally, or in the registry when SOURCE is remote."""
    dst = _parse_ref(target)
    if not remote:
        store = _store()
        desc = store.images.get(_local_name(store, source))
        if desc is not None:
            store.images.tag(str(dst), desc)
            click.echo(f"{dst}: tagged {desc.digest}")
            return
    src = _parse_ref(source)
    if src.registry != dst.registry:
        raise click.UsageError(
            f"{source} is not a local image, and a remote tag needs both names on one "
            f"registry ({src.registry} ≠ {dst.registry}); use pybuild copy"
        )
    from registry.copy import copy_image

    with _client(src, insecure) as client:
        result = copy_image(src, dst, src_client=client, dst_client=client)
    click.echo(f"{dst}: tagged {result.digest}")


@click.command()
@click.argument("source")
@click.argument("destination")
@click.option("--platform", metavar="OS/ARCH[/VARIANT]", help="Copy only this platform.")
@_progress_options
@_transport_options
def copy(
    source: str,
    destination: str,
    platform: str | None,
    progress: str,
    quiet: bool,
    jobs: int,
    insecure: tuple[str, ...],
) -> None:
    """Copy an image: registries (docker://REF or REF), oci:DIR[:NAME],
    oci-archive:FILE[:NAME], docker-archive:FILE[:NAME]."""
    from registry.locations import copy_between, parse_location
    from registry.transport import TransportOptions

    src, dst = parse_location(source), parse_location(destination)
    sink = _sink(progress, quiet)
    try:
        outcome = copy_between(
            src,
            dst,
            options=TransportOptions.from_env(insecure),
            platform=_platform(platform),
            jobs=jobs,
            progress=sink,
        )
    finally:
        sink.close()
    if quiet:
        click.echo(str(outcome.digest))
    else:
        click.echo(f"{dst}: copied {outcome.digest} ({outcome.detail})")


@click.command()
@click.argument("reference")
@click.option("--raw", is_flag=True, help="Print the manifest bytes exactly as stored/served.")
@click.option("--remote", is_flag=True, help="Ask the registry even if the image is local.")
@click.option("--platform", metavar="OS/ARCH[/VARIANT]", help="Platform to show from an index.")
@_transport_options
def inspect(
    reference: str, raw: bool, remote: bool, platform: str | None, insecure: tuple[str, ...]
) -> None:
    """Show an image's manifest and config: the local image first, else the registry's."""
    plat = _platform(platform)
    if not remote:
        store = _store()
        name = _local_name(store, reference)
        desc = store.images.get(name)
        if desc is not None:
            if raw:
                sys.stdout.buffer.write(store.blobs.read_bytes(desc.digest))
                sys.stdout.flush()
                return
            click.echo(json.dumps(store.inspect_json(name, plat), indent=2))
            return
    from layerstore.manifest import Index, Manifest, parse_document
    from registry.errors import RegistryError

    ref = _parse_ref(reference)
    with _client(ref, insecure) as client:
        top = client.get_manifest(ref)
        if raw:
            sys.stdout.buffer.write(top.raw)
            sys.stdout.flush()
            return
        doc = parse_document(top.raw, top.media_type)
        out: dict[str, Any] = {
            "Name": ref.name,
            "Digest": str(top.digest),
            "MediaType": top.media_type,
            "Manifest": json.loads(top.raw),
        }
        manifest = doc if isinstance(doc, Manifest) else None
        if isinstance(doc, Index):
            out["Platforms"] = [str(p) for p in doc.platforms()]
            from layerstore.descriptor import Platform
            from layerstore.errors import PlatformNotFound

            try:
                entry = doc.select(plat or Platform.host())
            except PlatformNotFound:
                if plat is not None:
                    raise
                entry = None  # no manifest for this machine: show the index only
            if entry is not None:
                child = client.get_manifest(ref, identifier=str(entry.digest))
                sub = parse_document(child.raw, child.media_type)
                if isinstance(sub, Manifest):
                    manifest = sub
                    out["PlatformManifest"] = json.loads(child.raw)
        if manifest is not None:
            config = client.fetch_blob_bytes(ref, manifest.config)
            out["Config"] = json.loads(config)
            out["Layers"] = [str(d.digest) for d in manifest.layers]
        tags = None
        try:
            tags = client.list_tags(ref)
        except RegistryError:  # tag listing is a courtesy here (may be denied)
            tags = None
        if tags is not None:
            out["RepoTags"] = tags
    click.echo(json.dumps(out, indent=2))


@click.command("ls-tags")
@click.argument("repository")
@_transport_options
def ls_tags(repository: str, insecure: tuple[str, ...]) -> None:
    """List REPOSITORY's tags (all pages)."""
    ref = Reference.parse(repository.removeprefix("docker://"), default_tag=None)
    with _client(ref, insecure) as client:
        for t in client.list_tags(ref):
            click.echo(t)


def _registry_arg(text: str) -> str:
    """``pybuild login`` accepts a host[:port], or a URL whose host is the registry."""
    from registry.errors import InvalidReference

    host = text.split("://", 1)[1] if "://" in text else text
    host = host.split("/", 1)[0]
    if host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        return "docker.io"
    try:
        ref = Reference.parse(f"{host}/x")
    except InvalidReference:
        ref = None
    if ref is None or ref.registry != host:
        raise click.BadParameter(f"{text!r} is not a registry host", param_hint="REGISTRY")
    return ref.registry


@click.command()
@click.argument("registry_host", metavar="REGISTRY", default="docker.io")
@click.option("-u", "--username", help="Username (prompted for if missing).")
@click.option("-p", "--password", help="Password (prefer --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@_transport_options
def login(
    registry_host: str,
    username: str | None,
    password: str | None,
    password_stdin: bool,
    insecure: tuple[str, ...],
) -> None:
    """Check credentials against REGISTRY and save them (Docker's config.json)."""
    from registry.auth import Credentials, store_credentials
    from registry.client import Client
    from registry.transport import TransportOptions

    host = _registry_arg(registry_host)
    if password and password_stdin:
        raise click.UsageError("--password and --password-stdin are mutually exclusive")
    if password_stdin:
        if not username:
            raise click.UsageError("--password-stdin needs --username")
        password = sys.stdin.read().rstrip("\r\n")
    if not username:
        username = click.prompt("Username")
    if not password:
        password = click.prompt("Password", hide_input=True)
    creds = Credentials(username=username or "", password=password or "", source="login")
    with Client(host, options=TransportOptions.from_env(insecure), credentials=creds) as client:
        client.auth.login_mode = True
        client.ping()
        saved = creds
        if client.auth.refresh_token:
            saved = Credentials(username=creds.username, identity_token=client.auth.refresh_token)
    where = store_credentials(host, saved)
    click.echo(f"Login succeeded for {host} (credentials saved in {where})")


@click.command()
@click.argument("registry_host", metavar="REGISTRY", default="docker.io")
def logout(registry_host: str) -> None:
    """Remove saved credentials for REGISTRY."""
    from registry.auth import erase_credentials

    host = _registry_arg(registry_host)
    if erase_credentials(host):
        click.echo(f"Removed login credentials for {host}")
    else:
        click.echo(f"Not logged in to {host}")
