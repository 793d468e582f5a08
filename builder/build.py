"""Build orchestration: options → context → Dockerfile → plan → execution → image → outputs.

``build(options)`` is what ``pybuild build`` calls and what other programs may call: it
materialises the context (directory, stdin, git or tarball URL), reads the Dockerfile and
its ignore file, plans the stages the target needs, runs them with the step cache, commits
the final stage as an image in the local store (tagged, or dangling without ``-t``) and
runs the exporters. Nothing here formats errors; the CLI does.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from builder.dockerfile.instructions import Dockerfile
from builder.errors import BuildError, ContextError
from builder.executor import Executor, ExecutorOptions, StageResult, StepResult
from builder.outputs import ExportContext, OutputSpec, export, normalize_tag
from builder.progress import PlainProgress, Progress
from layerstore.descriptor import Descriptor, MediaType, Platform
from layerstore.manifest import Manifest
from layerstore.store import Store

if TYPE_CHECKING:
    from builder.cache import CacheIndex
    from builder.ignore import IgnoreMatcher


@dataclass
class BuildOptions:
    """Everything ``pybuild build`` accepts (names as in ``docker build``)."""

    context: str = "."
    dockerfile: str | None = None  # path, "-" for stdin; default CONTEXT/Dockerfile
    tags: Sequence[str] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    pull: bool = False
    platform: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    network: str = "default"
    outputs: Sequence[OutputSpec] = ()
    push: bool = False
    iidfile: str | None = None
    metadata_file: str | None = None
    jobs: int = 2
    debug_cache: bool = False
    insecure_registries: tuple[str, ...] = ()
    store_root: Path | None = None
    stdin: BinaryIO | None = None
    source_date_epoch: int | None = None
    secrets: Mapping[str, bytes] = field(default_factory=dict)
    cache_from: Sequence[str] = ()  # images whose inline cache seeds this build's cache
    cache_to_inline: bool = False  # embed this build's step records in the image config


def parse_secret(spec: str) -> tuple[str, bytes]:
    """One ``--secret`` (buildx syntax): ``id=ID[,src=FILE|,env=VAR][,type=file|env]``.

    With neither ``src`` nor ``env``, the secret is the environment variable named ID, or
    else the file named ID (as buildx decides).
    """
    fields: dict[str, str] = {}
    for part in spec.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            raise BuildError(f"--secret {spec!r}: {part!r} is not key=value")
        fields[key.strip().lower()] = value
    ident = fields.get("id")
    if not ident:
        raise BuildError(f"--secret {spec!r}: id= is missing")
    kind = fields.get("type")
    src = fields.get("src") or fields.get("source")
    env = fields.get("env")
    if kind == "env" and env is None:
        env = src or ident
        src = None
    if env is not None:
        if env not in os.environ:
            raise BuildError(f"--secret {spec!r}: environment variable {env} is not set")
        return ident, os.environ[env].encode()
    if src is None:
        if ident in os.environ:
            return ident, os.environ[ident].encode()
        src = ident
    try:
        return ident, Path(src).expanduser().read_bytes()
    except OSError as e:
        raise BuildError(f"--secret {spec!r}: cannot read {src}: {e.strerror}") from None


@dataclass
class BuildResult:
    """The built image: manifest descriptor, config digest, names, and every step."""

    descriptor: Descriptor
    config_digest: str
    names: list[str]
    steps: list[StepResult]
    seconds: float
    pushed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return str(self.descriptor.digest)

    def metadata(self) -> dict[str, object]:
        """The ``--metadata-file`` document (buildx's keys)."""
        return {
            "containerimage.digest": self.digest,
            "containerimage.config.digest": self.config_digest,
            "containerimage.descriptor": self.descriptor.to_json(),
            "image.name": ",".join(self.names),
            "tags": self.names,
            "pushed": self.pushed,
        }


def _source_date_epoch(options: BuildOptions) -> int | None:
    if options.source_date_epoch is not None:
        return options.source_date_epoch
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise BuildError(f"SOURCE_DATE_EPOCH={raw!r} is not a number of seconds") from None


def _read_dockerfile(
    options: BuildOptions, context_root: Path | None, text: str | None
) -> tuple[str, str, Path | None]:
    """(text, display name, path for the ignore-file lookup)."""
    if options.dockerfile == "-":
        stream = options.stdin if options.stdin is not None else sys.stdin.buffer
        return stream.read().decode("utf-8", errors="replace"), "Dockerfile", None
    if text is not None and options.dockerfile is None:
        return text, "Dockerfile", None
    if options.dockerfile is not None:
        path = Path(options.dockerfile)
        if not path.is_absolute() and not path.exists() and context_root is not None:
            path = context_root / options.dockerfile
    elif context_root is not None:
        path = context_root / "Dockerfile"
        if not path.exists() and (context_root / "dockerfile").exists():
            path = context_root / "dockerfile"
    else:
        raise ContextError("no Dockerfile: give -f FILE (or -f - to read it from stdin)")
    try:
        return path.read_text(encoding="utf-8", errors="replace"), path.name, path
    except FileNotFoundError:
        raise ContextError(f"cannot read Dockerfile {str(path)!r}: no such file") from None
    except OSError as e:
        raise ContextError(f"cannot read Dockerfile {str(path)!r}: {e.strerror}") from None


def _ignore_matcher(root: Path | None, dockerfile: Path | None) -> IgnoreMatcher | None:
    """The context's ignore rules; None (and builder.ignore never imported) when it has none."""
    if root is None:
        return None
    candidates = [root / ".dockerignore"]
    if dockerfile is not None:
        candidates.append(dockerfile.with_name(dockerfile.name + ".dockerignore"))
    if not any(p.is_file() for p in candidates):
        return None
    from builder.ignore import load_matcher  # picks which of the two applies

    return load_matcher(root, dockerfile)


def _parser_identity() -> str:
    """What a cached parse depends on besides the text: the front end's own files."""
    import builder.dockerfile as front_end

    package = Path(front_end.__file__).parent
    parts = []
    for path in sorted(package.glob("*.py")) + sorted(package.parent.parent.glob("*.lark")):
        st = path.stat()
        parts.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


def parse_cached(store: Store, text: str, filename: str) -> Dockerfile:
    """``builder.dockerfile.parse``, memoised in the store by text and parser version.

    Building the LALR parser and running it is most of a fully cached build's own time
    (~60 ms of ~110 ms), so an unchanged Dockerfile is read back from a pickle instead.
    The pickle lives in the user's own store, which is trusted like the rest of it.
    """
    import hashlib
    import pickle

    key = hashlib.sha256(f"{_parser_identity()}\0{filename}\0{text}".encode()).hexdigest()
    path = store.root / "cache" / "dockerfiles" / key
    try:
        with open(path, "rb") as f:
            cached = pickle.load(f)
        if isinstance(cached, Dockerfile):
            return cached
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        pass
    from builder.dockerfile import parse

    dockerfile = parse(text, filename)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump(dockerfile, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except (OSError, pickle.PicklingError, TypeError):
        pass  # a cache, not a requirement
    return dockerfile


def build(options: BuildOptions, progress: Progress | None = None) -> BuildResult:
    """Run a whole build; raises BuildError (and StoreError/RegistryError) subclasses."""
    from builder.cache import CacheIndex
    from builder.context import materialize
    from builder.plan import automatic_platform_args, build_plan

    started = time.monotonic()
    progress = progress or PlainProgress()
    host = Platform.host()
    if options.platform:
        wanted = []
        for text in options.platform.split(","):
            try:
                wanted.append(Platform.parse(text))
            except ValueError as e:
                raise BuildError(f"--platform: {e}") from None
        for p in wanted:
            if (p.os, p.architecture) != (host.os, host.architecture):
                raise BuildError(
                    f"--platform {options.platform}: pybuild builds for this machine's platform "
                    f"only ({host.os}/{host.architecture})"
                )
    epoch = _source_date_epoch(options)
    stdin = options.stdin
    if options.context == "-" and options.dockerfile == "-":
        raise BuildError("the context and the Dockerfile cannot both come from stdin (-)")
    if stdin is None and options.context == "-":
        stdin = sys.stdin.buffer
    store = Store.open(options.store_root)
    try:
        with materialize(options.context, stdin=stdin) as ctx:
            text, name, df_path = _read_dockerfile(options, ctx.root, ctx.dockerfile_text)
            dockerfile = parse_cached(store, text, name)
            for warning in dockerfile.warnings:
                progress.message(f"warning: {warning}")
            matcher = _ignore_matcher(ctx.root, df_path)
            platform_args = automatic_platform_args()
            plan = build_plan(
                dockerfile,
                target=options.target,
                build_args=options.build_args,
                platform_args=platform_args,
            )
            cache = CacheIndex(store, enabled=not options.no_cache)
            executor = Executor(
                plan,
                store,
                context_root=ctx.root,
                ignore=matcher,
                cache=cache,
                progress=progress,
                options=ExecutorOptions(
                    build_args=dict(options.build_args),
                    network=options.network,
                    pull=options.pull,
                    jobs=options.jobs,
                    source_date_epoch=epoch,
                    debug_cache=options.debug_cache,
                    insecure_registries=options.insecure_registries,
                    platform_args=platform_args,
                    secrets=dict(options.secrets),
                ),
            )
            for ref in options.cache_from:
                imported = _import_cache(store, cache, ref, options, progress)
                progress.message(f"cache: {imported} step records imported from {ref}")
            results = executor.run()
            warnings = []
            unused = executor.unused_build_args()
            if unused:
                warnings.append(f"one or more build args were not consumed: {', '.join(unused)}")
                progress.message(f"warning: {warnings[-1]}")
            final = results[plan.target]
            inline = None
            if options.cache_to_inline:
                from builder.cache import inline_document

                inline = inline_document(
                    cache, [step.key for step in final.steps], tuple(final.state.layers)
                )
            result = _commit(store, final, options, epoch, results, inline)
            result.warnings = warnings
            outputs = list(options.outputs)
            if options.push and not any(o.type == "registry" for o in outputs):
                outputs.append(OutputSpec("registry"))
            export_ctx = ExportContext(
                store,
                result.descriptor,
                Manifest.from_bytes(store.blobs.read_bytes(result.descriptor.digest)),
                result.names,
                insecure_registries=options.insecure_registries,
            )
            for spec in outputs:
                export(spec, export_ctx)
            result.pushed = export_ctx.pushed
            result.seconds = time.monotonic() - started
    finally:
        store.close()
    if options.iidfile:
        Path(options.iidfile).write_text(result.config_digest)
    if options.metadata_file:
        Path(options.metadata_file).write_text(json.dumps(result.metadata(), indent=2) + "\n")
    return result


def _import_cache(
    store: Store, cache: CacheIndex, ref_text: str, options: BuildOptions, progress: Progress
) -> int:
    """Pull ``ref_text`` (blobs only, no local name) and import its inline cache records.

    A missing or unreachable cache image is a warning, as in BuildKit: the build goes on.
    """
    from builder.cache import LayerRef, import_inline
    from layerstore.errors import StoreError
    from layerstore.manifest import Index
    from registry.client import Client
    from registry.errors import RegistryError
    from registry.pull import pull
    from registry.reference import Reference
    from registry.transport import TransportOptions

    text = ref_text
    if "=" in text:  # type=registry,ref=NAME
        fields = dict(part.partition("=")[::2] for part in text.split(","))
        text = fields.get("ref", "")
    try:
        ref = Reference.parse(text)
        local = store.images.get(str(ref)) or store.images.get(text)
        if local is not None:  # an image in the local store needs no registry
            descriptor = local
        else:
            transport = TransportOptions.from_env(options.insecure_registries)
            with Client.for_reference(ref, options=transport) as client:
                descriptor = pull(ref, store, client=client, tag=False).descriptor
        document = store.read_document(descriptor.digest, descriptor.media_type)
        if isinstance(document, Index):
            child = document.select(Platform.host())
            document = store.read_document(child.digest, child.media_type)
        assert isinstance(document, Manifest)
        config = store.read_config(document.config.digest)
    except (RegistryError, StoreError, BuildError, ValueError) as e:
        progress.message(f"warning: --cache-from {ref_text}: {e}")
        return 0
    layers = tuple(
        LayerRef(desc, diff) for desc, diff in zip(document.layers, config.rootfs.diff_ids)
    )
    return import_inline(cache, dict(config.extra), layers)


def _commit(
    store: Store,
    final: StageResult,
    options: BuildOptions,
    epoch: int | None,
    results: Mapping[int, StageResult],
    inline_cache: str | None = None,
) -> BuildResult:
    from builder.cache import INLINE_KEY
    from builder.imageconfig import timestamp

    state = final.state
    config = state.config
    if options.labels:
        config = config.with_container_config(
            labels={**config.config.label_dict(), **options.labels}
        )
    created = timestamp(epoch)
    if state.config.history:
        # A fully cached build reproduces the image: take the last step's time.
        created = state.config.history[-1].created or created
    extra = tuple((k, v) for k, v in config.extra if k != INLINE_KEY)
    if inline_cache is not None:
        extra = tuple(sorted((*extra, (INLINE_KEY, inline_cache))))
    config = config.evolve(created=created, extra=extra)
    config_desc = store.put_config(config)
    manifest = Manifest.build(
        config=config_desc,
        layers=[layer.descriptor for layer in state.layers],
        media_type=MediaType.OCI_MANIFEST,
    )
    names = [normalize_tag(t) for t in options.tags]
    descriptor = store.commit_image(manifest, names)
    steps = [step for index in sorted(results) for step in results[index].steps]
    return BuildResult(descriptor, str(config.digest), names, steps, 0.0)
