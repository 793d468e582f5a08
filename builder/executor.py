"""Runs a BuildPlan: stages in dependency levels (bounded parallel), one StepResult per step.

Each stage carries a state — image config, layers so far, the last step's cache key, the
ARGs in scope — through its instructions. For every step the executor first computes the
step's cache key (builder.cachekey: parent key, expanded instruction, the build args it
can see, input digests) and asks the cache index; a hit restores the recorded config and
layers and costs no work. A miss executes the step:

* metadata instructions change the config only (builder.imageconfig);
* RUN runs in builder.sandbox over an overlay of the stage's layer snapshots with a fresh
  upper directory; the upper directory becomes the layer (and, renamed, the snapshot of
  that layer, so it is never unpacked again);
* COPY/ADD/WORKDIR write through an overlay mount of the stage (builder.rootfs), so the
  upper directory holds exactly the copied files and the directories copied up.

A step whose upper directory is empty adds no layer (history ``empty_layer``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import posixpath
import secrets
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder import imageconfig as ic
from builder.cache import INLINE_KEY, CachedState, CacheIndex, LayerRef
from builder.cachekey import CacheKey, ContentHasher, step_key
from builder.dockerfile import instructions as ins
from builder.errors import (
    BuildError,
    ContextError,
    DockerfileError,
    SandboxUnavailable,
    StepFailed,
    UnknownUserError,
)
from builder.fileops import (
    Ownership,
    Source,
    copy_sources,
    resolve_sources,
    scoped_resolve,
    walk_source,
)
from builder.plan import BuildPlan, StageNode
from builder.progress import Progress, StepEvent
from layerstore.config import ImageConfig
from layerstore.descriptor import Platform
from layerstore.digest import Digest
from layerstore.store import Store

if TYPE_CHECKING:
    from builder.ignore import IgnoreMatcher

METADATA = (
    ins.Env,
    ins.Label,
    ins.Expose,
    ins.Volume,
    ins.User,
    ins.Cmd,
    ins.Entrypoint,
    ins.Healthcheck,
    ins.Shell,
    ins.Stopsignal,
    ins.Onbuild,
    ins.Maintainer,
)


@dataclass
class StageState:
    """What a stage has built so far."""

    config: ImageConfig
    layers: list[LayerRef]
    key: CacheKey | None
    args: dict[str, str] = field(default_factory=dict)  # ARGs in scope that have a value
    cmd_set: bool = False  # a CMD came in this stage (ENTRYPOINT then keeps it)


@dataclass(frozen=True)
class StepResult:
    """One step: where it is, whether it was cached, its key, the layer it added, its time."""

    stage: str
    number: int
    text: str
    cached: bool
    key: CacheKey
    layer: LayerRef | None
    seconds: float


@dataclass
class StageResult:
    index: int
    label: str
    state: StageState
    steps: list[StepResult] = field(default_factory=list)


@dataclass(frozen=True)
class ResolvedImage:
    """A base or ``--from`` image: its config, layers and manifest digest."""

    name: str
    config: ImageConfig
    layers: tuple[LayerRef, ...]
    digest: Digest


@dataclass
class ExecutorOptions:
    build_args: Mapping[str, str] = field(default_factory=dict)
    network: str = "default"
    pull: bool = False
    jobs: int = 2
    source_date_epoch: int | None = None
    debug_cache: bool = False
    compression: str = "gzip"
    insecure_registries: tuple[str, ...] = ()
    platform_args: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, bytes] = field(default_factory=dict)  # --secret id → value


class _Scratch:
    """Per-build temporary directories on the store's file system (renames into snapshots)."""

    def __init__(self, store: Store) -> None:
        base = store.root / "tmp"
        base.mkdir(parents=True, exist_ok=True)
        self._remove_stale(base)
        self.root = Path(tempfile.mkdtemp(prefix=f"build-{os.getpid()}-", dir=base))

    @staticmethod
    def _remove_stale(base: Path) -> None:
        """Delete the scratch space of builds that were killed (their process is gone).

        Nothing is mounted on it: mounts exist only in a step's or a thread's own mount
        namespace and vanish with it.
        """
        for entry in base.glob("build-*-*"):
            pid_text = entry.name.split("-")[1]
            if not pid_text.isdigit() or int(pid_text) == os.getpid():
                continue
            try:
                os.kill(int(pid_text), 0)
            except ProcessLookupError:
                shutil.rmtree(entry, ignore_errors=True)
            except PermissionError:
                continue

    def directory(self, prefix: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.root))
        # An overlay's root directory takes its mode from the upper directory (and an
        # adopted snapshot keeps it): mkdtemp's 0700 would lock every non-root USER out of /.
        os.chmod(path, 0o755)
        return path

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class Executor:
    """Executes one plan against one store; :meth:`run` returns every needed stage's result."""

    def __init__(
        self,
        plan: BuildPlan,
        store: Store,
        *,
        context_root: Path | None,
        ignore: IgnoreMatcher | None,
        cache: CacheIndex,
        progress: Progress,
        options: ExecutorOptions,
    ) -> None:
        self.plan = plan
        self.store = store
        self.context_root = context_root
        self.ignore = ignore
        self.cache = cache
        self.progress = progress
        self.options = options
        self.dockerfile = plan.dockerfile
        self.hasher = ContentHasher(store.db)
        self.hash_lock = threading.Lock()
        self.results: dict[int, StageResult] = {}
        self.images: dict[str, ResolvedImage] = {}
        self.image_lock = threading.Lock()
        self.consumed_args: set[str] = set()
        self.platform = Platform.host()
        self.scratch = _Scratch(store)

    # -- driver ----------------------------------------------------------------------------

    def run(self) -> dict[int, StageResult]:
        """Build every needed stage; a stage starts as soon as the stages it needs are done."""
        try:
            with self.store.lease():
                self._schedule()
            return self.results
        finally:
            self.scratch.cleanup()

    def _schedule(self) -> None:
        waiting = list(self.plan.order)
        jobs = max(1, self.options.jobs)
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="stage") as pool:
            running: dict[Future[StageResult], int] = {}
            while waiting or running:
                for index in list(waiting):
                    node = self.plan.stages[index]
                    if all(dep in self.results for dep in node.depends_on):
                        waiting.remove(index)
                        running[pool.submit(self._run_stage, node)] = index
                if not running:
                    raise BuildError("stage graph has unmet dependencies")  # plan forbids this
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in done:
                    running.pop(future)
                    error = future.exception()
                    if error is not None:
                        for other in running:
                            other.cancel()
                        raise error
                    result = future.result()
                    self.results[result.index] = result

    def unused_build_args(self) -> list[str]:
        """Build args no ARG consumed (Docker warns about them)."""
        meta = {name for arg in self.dockerfile.meta_args for name, _ in arg.pairs}
        return sorted(
            name
            for name in self.options.build_args
            if name not in self.consumed_args and name not in meta and name not in ic.PROXY_ARGS
        )

    # -- stages ----------------------------------------------------------------------------

    def _label(self, node: StageNode) -> str:
        return node.name or f"stage-{node.index}"

    def _run_stage(self, node: StageNode) -> StageResult:
        label = self._label(node)
        instructions = list(node.stage.instructions)
        started = time.monotonic()
        text = f"FROM {node.base}" + (f" AS {node.name}" if node.name else "")
        state, triggers = self._from(node)
        total = 1 + len(triggers) + len(instructions)
        event = StepEvent(label, 1, total, text, started=started)
        self.progress.step_started(event)
        self.progress.step_finished(event, cached=False)
        assert state.key is not None
        result = StageResult(node.index, label, state)
        result.steps.append(
            StepResult(label, 1, text, False, state.key, None, time.monotonic() - started)
        )
        for number, instruction in enumerate([*triggers, *instructions], start=2):
            result.steps.append(self._step(node, label, number, total, instruction, state))
        return result

    def _from(self, node: StageNode) -> tuple[StageState, list[ins.Instruction]]:
        if node.platform:
            self._check_platform(node.platform, node.stage.from_.line)
        triggers: list[ins.Instruction] = []
        if node.base_kind == "scratch":
            config = ic.base_config(
                self.platform.os, self.platform.architecture, self.platform.variant
            )
            key = step_key(None, instruction="FROM scratch", platform=str(self.platform))
            state = StageState(config, [], key)
        elif node.base_kind == "stage":
            assert node.base_stage is not None
            parent = self.results[node.base_stage].state
            key = step_key(
                None,
                instruction="FROM stage",
                inputs={"base": parent.key.hex if parent.key else ""},
            )
            state = StageState(parent.config, list(parent.layers), key)
        else:
            image = self.resolve_image(node.base, line=node.stage.from_.line)
            key = step_key(
                None,
                instruction=f"FROM {image.name}",
                inputs={"base": str(image.digest)},
                platform=str(self.platform),
            )
            config = image.config
            if any(k == INLINE_KEY for k, _ in config.extra):
                # a base built with --cache-to type=inline: its records are not ours to carry
                config = config.evolve(extra=tuple(e for e in config.extra if e[0] != INLINE_KEY))
            state = StageState(config, list(image.layers), key)
            triggers = self._triggers(image.config, node)
        if state.config.config.on_build:
            # A child image does not inherit its base's triggers (they run right now).
            state.config = state.config.with_container_config(on_build=())
        return state, triggers

    def _check_platform(self, platform: str, line: int) -> None:
        try:
            wanted = Platform.parse(platform)
        except ValueError as e:
            raise DockerfileError(str(e), filename=self.dockerfile.filename, line=line) from None
        if (wanted.os, wanted.architecture) != (self.platform.os, self.platform.architecture):
            raise DockerfileError(
                f"platform {platform} is not this machine's ({self.platform}); "
                "pybuild builds for the host platform only",
                filename=self.dockerfile.filename,
                line=line,
            )

    def _triggers(self, config: ImageConfig, node: StageNode) -> list[ins.Instruction]:
        from builder.dockerfile import parse

        out: list[ins.Instruction] = []
        for trigger in config.config.on_build:
            try:
                parsed = parse(f"FROM scratch\n{trigger}\n", f"ONBUILD of {node.base}")
            except DockerfileError as e:
                raise BuildError(f"base image {node.base} has a bad ONBUILD trigger: {e}") from None
            out.extend(parsed.stages[0].instructions)
        return out

    # -- images ----------------------------------------------------------------------------

    def resolve_image(self, name: str, *, line: int | None = None) -> ResolvedImage:
        """A base image from the local store, else (or with ``--pull``) from its registry."""
        with self.image_lock:
            if name in self.images:
                return self.images[name]
            image = self._resolve_image(name, line)
            self.images[name] = image
            return image

    def _resolve_image(self, name: str, line: int | None) -> ResolvedImage:
        from layerstore.errors import StoreError
        from registry.errors import InvalidReference, RegistryError
        from registry.reference import Reference

        candidates = [name]
        ref: Reference | None = None
        try:
            ref = Reference.parse(name)
            candidates.insert(0, str(ref))
        except InvalidReference:
            pass
        if not self.options.pull:
            for candidate in candidates:
                local = self._local_image(candidate)
                if local is not None:
                    return local
        if ref is None:
            raise DockerfileError(
                f"invalid image reference {name!r}", filename=self.dockerfile.filename, line=line
            )
        from registry.client import Client
        from registry.pull import pull
        from registry.transport import TransportOptions

        self.progress.message(f"pulling {ref}")
        try:
            options = TransportOptions.from_env(self.options.insecure_registries)
            with Client.for_reference(ref, options=options) as client:
                pull(ref, self.store, client=client, platform=self.platform)
        except (RegistryError, StoreError) as e:
            raise BuildError(
                f"{self.dockerfile.filename}:{line}: cannot resolve image {name}: {e}"
                if line
                else f"cannot resolve image {name}: {e}"
            ) from None
        local = self._local_image(str(ref))
        if local is None:
            raise BuildError(f"image {name} was pulled but cannot be read from the store")
        return local

    def _local_image(self, name: str) -> ResolvedImage | None:
        from layerstore.errors import StoreError

        try:
            image = self.store.image(name, self.platform)
        except StoreError:
            return None
        if image.manifest is None or image.config is None:
            return None
        diff_ids = image.config.rootfs.diff_ids
        if len(diff_ids) != len(image.manifest.layers):
            raise BuildError(f"image {name}: config and manifest disagree on the layer count")
        layers = tuple(LayerRef(desc, diff) for desc, diff in zip(image.manifest.layers, diff_ids))
        return ResolvedImage(name, image.config, layers, image.manifest.digest)

    # -- snapshots -------------------------------------------------------------------------

    def lowerdirs(self, layers: list[LayerRef] | tuple[LayerRef, ...]) -> list[Path]:
        """Snapshot directories of ``layers``, top-most first (overlayfs lowerdir order)."""
        snaps = self.store.snapshots
        return [Path(snaps.ensure(layer.descriptor, layer.diff_id)) for layer in reversed(layers)]

    def _adopt(self, upper: Path, layer: LayerRef) -> None:
        """Make ``upper`` the snapshot of the layer written from it (no second unpack)."""
        snaps = self.store.snapshots
        adopt = getattr(snaps, "adopt", None)
        if adopt is None:  # an older SnapshotStore: unpacked from the blob when needed
            return
        adopt(upper, layer.descriptor, layer.diff_id)

    def _commit_layer(self, upper: Path) -> LayerRef | None:
        """The layer of an upper directory (None when empty), adopted as its snapshot."""
        if not any(upper.iterdir()):
            return None
        from layerstore.layer import write_layer

        layer = write_layer(
            upper,
            self.store.blobs,
            compression=self.options.compression,
            source_date_epoch=self.options.source_date_epoch,
        )
        ref = LayerRef(layer.descriptor(), layer.diff_id)
        try:
            self._adopt(upper, ref)
        except OSError:
            pass  # the snapshot will be unpacked from the blob when first needed
        return ref

    # -- steps -----------------------------------------------------------------------------

    def _env(self, state: StageState) -> dict[str, str]:
        """Expansion environment: ARGs in scope, then the config's Env (Env wins)."""
        env = dict(state.args)
        env.update(state.config.config.env_dict())
        return env

    def _expander(self, state: StageState) -> ic.Expander:
        return ic.Expander(
            self._env(state), escape=self.dockerfile.escape, filename=self.dockerfile.filename
        )

    def _step(
        self,
        node: StageNode,
        label: str,
        number: int,
        total: int,
        instruction: ins.Instruction,
        state: StageState,
    ) -> StepResult:
        text = instruction.node.original or instruction.keyword
        event = StepEvent(label, number, total, text)
        started = time.monotonic()
        self.progress.step_started(event)
        try:
            cached, layer = self._dispatch(node, instruction, state, event)
        except BuildError as e:
            self.progress.step_finished(event, cached=False, error=str(e).splitlines()[0])
            where = f"{self.dockerfile.filename}:{instruction.line}"
            if isinstance(e, UnknownUserError | ContextError | SandboxUnavailable) and not str(
                e
            ).startswith(where):
                raise type(e)(f"{where}: {instruction.keyword}: {e}") from None
            raise
        self.progress.step_finished(event, cached=cached)
        assert state.key is not None
        return StepResult(label, number, text, cached, state.key, layer, time.monotonic() - started)

    def _lookup(self, key: CacheKey, state: StageState, event: StepEvent) -> bool:
        if self.options.debug_cache:
            self.progress.message(f"[{event.stage}] cache key {key.short}: {dict(key.document)}")
        hit = self.cache.get(key)
        if hit is None:
            return False
        state.config = self.store.read_config(hit.config)
        state.layers = list(hit.layers)
        state.key = key
        return True

    def _record(self, key: CacheKey, state: StageState) -> None:
        descriptor = self.store.put_config(state.config)
        self.cache.put(key, CachedState(descriptor.digest, tuple(state.layers)))
        state.key = key

    def _finish_step(
        self, state: StageState, key: CacheKey, layer: LayerRef | None, history: str
    ) -> tuple[bool, LayerRef | None]:
        """After a filesystem step ran: add its layer (or an empty-layer history entry), record it."""
        if layer is not None:
            state.layers.append(layer)
            state.config = ic.with_step_layer(state.config, layer.diff_id, history, self._created())
        else:
            state.config = ic.add_history(
                state.config, history, layer=False, created=self._created(), stateful=True
            )
        self._record(key, state)
        return False, layer

    def _created(self) -> str:
        return ic.timestamp(self.options.source_date_epoch)

    def _dispatch(
        self, node: StageNode, instruction: ins.Instruction, state: StageState, event: StepEvent
    ) -> tuple[bool, LayerRef | None]:
        if isinstance(instruction, ins.Arg):
            return self._arg(instruction, state, event), None
        if isinstance(instruction, METADATA):
            expand = self._expander(state)
            config, text = ic.apply_metadata(
                state.config, instruction, expand, cmd_set_in_stage=state.cmd_set
            )
            if isinstance(instruction, ins.Cmd):
                state.cmd_set = True
            key = step_key(state.key, instruction=text)
            if self._lookup(key, state, event):
                return True, None
            state.config = ic.add_history(
                config, text, layer=False, created=self._created(), stateful=False
            )
            self._record(key, state)
            return False, None
        if isinstance(instruction, ins.Workdir):
            return self._workdir(instruction, state, event)
        if isinstance(instruction, ins.Run):
            return self._run(node, instruction, state, event)
        if isinstance(instruction, ins.Copy | ins.Add):
            return self._copy(node, instruction, state, event)
        raise DockerfileError(
            f"{instruction.keyword} is not supported here",
            filename=self.dockerfile.filename,
            line=instruction.line,
        )

    # ARG ----------------------------------------------------------------------------------

    def _arg(self, instruction: ins.Arg, state: StageState, event: StepEvent) -> bool:
        expand = self._expander(state)
        parts: list[str] = []
        for name, default in instruction.pairs:
            expanded_default = (
                expand.word(default, instruction.line) if default is not None else None
            )
            parts.append(name if expanded_default is None else f"{name}={expanded_default}")
            if name in self.options.build_args:
                state.args[name] = self.options.build_args[name]
                self.consumed_args.add(name)
            elif expanded_default is not None:
                state.args[name] = expanded_default
            elif name in self.plan.global_args:
                state.args[name] = self.plan.global_args[name]
            elif name in self.options.platform_args:
                state.args[name] = self.options.platform_args[name]
            else:
                state.args.pop(name, None)
        text = "ARG " + " ".join(parts)
        key = step_key(state.key, instruction=text)
        if self._lookup(key, state, event):
            return True
        state.config = ic.add_history(
            state.config, text, layer=False, created=self._created(), stateful=False
        )
        self._record(key, state)
        return False

    # WORKDIR ------------------------------------------------------------------------------

    def _workdir(
        self, instruction: ins.Workdir, state: StageState, event: StepEvent
    ) -> tuple[bool, LayerRef | None]:
        expand = self._expander(state)
        path = ic.workdir_path(
            state.config.config.working_dir, expand.word(instruction.path, instruction.line)
        )
        text = f"WORKDIR {path}"
        key = step_key(state.key, instruction=text)
        if self._lookup(key, state, event):
            return True, None
        user = state.config.config.user

        def make(root: Path, _views: list[Path]) -> None:
            target = scoped_resolve(root, path)
            if target.is_dir():
                return
            owner = self._owner(root, user) if user else Ownership()
            parts = [p for p in path.split("/") if p]
            current = ""
            for part in parts:
                current += "/" + part
                here = scoped_resolve(root, current)
                if here.is_dir():
                    continue
                if here.exists() or here.is_symlink():
                    raise ContextError(f"WORKDIR {path}: {current} exists and is not a directory")
                here.mkdir(mode=0o755)
                os.chmod(here, 0o755)
                os.chown(here, owner.uid, owner.gid)

        layer = self._in_rootfs(state, make)
        state.config = state.config.with_container_config(working_dir=path)
        return self._finish_step(state, key, layer, text)

    def _owner(self, root: Path, spec: str) -> Ownership:
        from builder.sandbox import resolve_user

        uid, gid, _ = resolve_user(root, spec)
        return Ownership(uid, gid)

    def _chown_owner(self, root: Path, spec: str) -> Ownership:
        """``--chown``: names are looked up in the image's passwd and group files.

        A numeric UID without a GID uses the UID as the GID, as the Dockerfile reference
        (COPY --chown) says and Buildah does, even when passwd gives that UID another
        primary group; a user *name* without a group gets its primary group.
        """
        owner = self._owner(root, spec)
        if ":" not in spec and spec.strip().isdigit():
            return Ownership(owner.uid, owner.uid)
        return owner

    def _in_rootfs(
        self,
        state: StageState,
        fn: Callable[[Path, list[Path]], None],
        views: list[list[Path]] | None = None,
    ) -> LayerRef | None:
        from builder.rootfs import with_rootfs

        upper = self.scratch.directory("upper-")
        work = self.scratch.directory("work-")
        try:
            with_rootfs(self.lowerdirs(state.layers), upper, work, fn, views=views or [])
            return self._commit_layer(upper)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if upper.exists():
                shutil.rmtree(upper, ignore_errors=True)

    # RUN ----------------------------------------------------------------------------------

    def _run(
        self, node: StageNode, instruction: ins.Run, state: StageState, event: StepEvent
    ) -> tuple[bool, LayerRef | None]:
        from builder.sandbox import BindMount, SandboxConfig, TmpfsMount, run_in_sandbox

        config = state.config
        if instruction.security == "insecure":
            raise DockerfileError(
                "RUN --security=insecure is not supported: pybuild grants no extra privileges",
                filename=self.dockerfile.filename,
                line=instruction.line,
            )
        script_file: tuple[str, str] | None = None
        if instruction.heredocs and not instruction.json_form:
            argv, script_file = self._heredoc_argv(instruction, config)
        else:
            argv = ic.command_argv(instruction.command, instruction.json_form, config)
        visible = {k: v for k, v in state.args.items() if k not in ic.PROXY_ARGS}
        history = ic.run_history(argv, visible)
        proxies = {k: v for k, v in self.options.build_args.items() if k in ic.PROXY_ARGS}
        network = instruction.network or self.options.network
        inputs: dict[str, str] = {}
        mounts_doc: list[str] = []
        for mount in instruction.mounts:
            mounts_doc.append(mount.raw)
            if mount.type == "bind":
                inputs[f"mount:{mount.target}"] = self._bind_input(node, mount, state)
        if script_file is not None:
            inputs["heredoc"] = hashlib.sha256(script_file[1].encode()).hexdigest()
        key = step_key(
            state.key,
            instruction=history
            + "".join(f" --mount={m}" for m in mounts_doc)
            + (f" --network={network}" if network != "default" else ""),
            visible=visible,
            inputs=inputs,
        )
        if self._lookup(key, state, event):
            return True, None
        from builder.sandbox import check_sandbox_support

        check_sandbox_support()  # once per process: names the missing kernel feature
        binds: list[Any] = []
        tmpfs: list[Any] = []
        secret_env: dict[str, str] = {}
        private = self.scratch.directory("run-")
        for mount in instruction.mounts:
            target = mount.target or ""
            if mount.type == "secret":
                ident = mount.id or posixpath.basename(target)
                if not ident:
                    raise DockerfileError(
                        "RUN --mount=type=secret needs id= (or target=)",
                        filename=self.dockerfile.filename,
                        line=instruction.line,
                    )
                value = self.options.secrets.get(ident)
                if value is None:
                    if mount.required:
                        raise DockerfileError(
                            f"secret {ident!r} is required but was not given (--secret id={ident},src=FILE)",
                            filename=self.dockerfile.filename,
                            line=instruction.line,
                        )
                    continue
                if mount.env:
                    secret_env[mount.env] = value.decode(errors="replace")
                    if not mount.target:
                        continue
                # Secrets are files in the step only: never in a layer, a key or history.
                secret_dir = private / "secrets"
                secret_dir.mkdir(exist_ok=True, mode=0o700)
                secret_file = secret_dir / hashlib.sha256(ident.encode()).hexdigest()[:16]
                secret_file.write_bytes(value)
                os.chmod(secret_file, mount.mode if mount.mode is not None else 0o400)
                os.chown(secret_file, mount.uid or 0, mount.gid or 0)
                binds.append(BindMount(secret_file, target or f"/run/secrets/{ident}"))
                continue
            if mount.type == "ssh":
                raise DockerfileError(
                    "RUN --mount=type=ssh is not supported by pybuild yet",
                    filename=self.dockerfile.filename,
                    line=instruction.line,
                )
            if not target.startswith("/"):
                target = posixpath.join(config.config.working_dir or "/", target)
            if mount.type == "cache":
                binds.append(BindMount(self._cache_dir(mount), target, readonly=False))
            elif mount.type == "tmpfs":
                tmpfs.append(TmpfsMount(target, size=mount.size))
            elif mount.type == "bind":
                source = self._bind_source(node, mount, state, private)
                binds.append(BindMount(source, target, readonly=mount.readonly is not False))
            else:
                raise DockerfileError(
                    f"RUN --mount=type={mount.type} is not supported by pybuild yet",
                    filename=self.dockerfile.filename,
                    line=instruction.line,
                )
        if script_file is not None:
            host = private / "heredoc"
            host.mkdir()
            script = host / "script"
            script.write_text(script_file[1])
            script.chmod(0o755)
            binds.append(BindMount(host, "/dev/pipes", readonly=True))
        env = {**state.args, **proxies, **config.config.env_dict(), **secret_env}
        upper = self.scratch.directory("upper-")
        work = self.scratch.directory("work-")
        try:
            sandbox = SandboxConfig(
                lowerdirs=self.lowerdirs(state.layers),
                upperdir=upper,
                workdir=work,
                network="none" if network == "none" else "host",
                binds=binds,
                tmpfs=tmpfs,
            )
            result = run_in_sandbox(
                sandbox,
                argv,
                env=env,
                cwd=config.config.working_dir or "/",
                user=config.config.user or None,
                on_output=lambda chunk: self.progress.step_output(event, chunk),
            )
            if result.exit_code != 0:
                tail = "\n".join(f"  {line}" for line in result.output_tail[-10:])
                how = (
                    f"killed by signal {result.signal}"
                    if result.signal
                    else f"exit code {result.exit_code}"
                )
                raise StepFailed(
                    f"{self.dockerfile.filename}:{instruction.line}: "
                    f"{instruction.node.original} failed: {how}"
                    + (f"\nlast output:\n{tail}" if tail else ""),
                    exit_code=result.exit_code,
                    last_lines=result.output_tail,
                )
            layer = self._commit_layer(upper)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(upper, ignore_errors=True)
            shutil.rmtree(private, ignore_errors=True)
        return self._finish_step(state, key, layer, history)

    def _heredoc_argv(
        self, instruction: ins.Run, config: ImageConfig
    ) -> tuple[list[str], tuple[str, str] | None]:
        """argv of a heredoc RUN; a ``#!`` body alone runs as a script file (BuildKit)."""
        command = " ".join(instruction.command).strip()
        docs = instruction.heredocs
        shell = list(ic.shell_of(config))
        if (len(docs) == 1 and command in (f"<<{docs[0].name}", f"<<-{docs[0].name}")) or (
            len(docs) == 1 and command.lstrip("<-'\"").rstrip("'\"") == docs[0].name
        ):
            body = _heredoc_body(docs[0])
            if body.startswith("#!"):
                return ["/dev/pipes/script"], ("script", body)
            return [*shell, body], None
        # The shell itself reads heredocs: give it the command line and the bodies.
        script = command
        for doc in docs:
            script += "\n" + doc.content + doc.name
        return [*shell, script], None

    def _cache_dir(self, mount: ins.MountSpec) -> Path:
        ident = mount.id or mount.target or "cache"
        name = hashlib.sha256(ident.encode()).hexdigest()[:24]
        path = self.store.root / "cache-mounts" / name
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, mount.mode if mount.mode is not None else 0o755)
            os.chown(path, mount.uid or 0, mount.gid or 0)
        return path

    def _bind_input(self, node: StageNode, mount: ins.MountSpec, state: StageState) -> str:
        if mount.from_ is not None:
            index = self._stage_index(mount.from_)
            if index is not None:
                key = self.results[index].state.key
                return f"stage:{key.hex if key else ''}:{mount.source or ''}"
            return f"image:{self.resolve_image(mount.from_).digest}:{mount.source or ''}"
        root = self._require_context("RUN --mount=type=bind")
        sources = resolve_sources(root, [mount.source or "."], excluded=self._excluded())
        return self._content_digest(root, sources)

    def _bind_source(
        self, node: StageNode, mount: ins.MountSpec, state: StageState, private: Path
    ) -> Path:
        rel = mount.source or "."
        if mount.from_ is None:
            root = self._require_context("RUN --mount=type=bind")
        else:
            index = self._stage_index(mount.from_)
            layers = (
                self.results[index].state.layers
                if index is not None
                else list(self.resolve_image(mount.from_).layers)
            )
            root = private / "bind-root"
            self._materialize(layers, root)
        source = scoped_resolve(root, rel)
        if not source.exists():
            raise ContextError(f"RUN --mount source {rel!r} not found")
        return source

    def _materialize(self, layers: list[LayerRef], target: Path) -> None:
        from layerstore.layer import apply_layer

        target.mkdir(parents=True, exist_ok=True)
        for layer in layers:
            with self.store.blobs.open(layer.descriptor.digest) as blob:
                apply_layer(blob, target, media_type=layer.descriptor.media_type)

    # COPY / ADD ---------------------------------------------------------------------------

    def _require_context(self, what: str) -> Path:
        if self.context_root is None:
            raise ContextError(
                f"{what} needs a build context, but this build has none "
                "(the Dockerfile came from standard input or a URL)"
            )
        return self.context_root

    def _excluded(self) -> Callable[[str], bool] | None:
        if self.ignore is None or not len(self.ignore):
            return None
        return self.ignore.excludes

    def _content_digest(
        self, root: Path, sources: list[Source], excluded: Callable[[str], bool] | None = None
    ) -> str:
        excluded = excluded or self._excluded()
        paths: list[str] = []
        for source in sources:
            paths.extend(walk_source(source, excluded=excluded))
        with self.hash_lock:
            return self.hasher.digest_paths(root, paths)

    def _stage_index(self, ref: str) -> int | None:
        stage = self.dockerfile.stage(ref)
        if stage is None:
            return None
        return stage.index

    def _copy(
        self,
        node: StageNode,
        instruction: ins.Copy | ins.Add,
        state: StageState,
        event: StepEvent,
    ) -> tuple[bool, LayerRef | None]:
        is_add = isinstance(instruction, ins.Add)
        keyword = "ADD" if is_add else "COPY"
        expand = self._expander(state)
        line = instruction.line
        heredoc_names = {h.name for h in instruction.heredocs}
        sources = [
            s if s.lstrip("<-") in heredoc_names and s.startswith("<<") else expand.word(s, line)
            for s in instruction.sources
        ]
        dest = expand.word(instruction.dest, line)
        chown = expand.word(instruction.chown, line) if instruction.chown else None
        chmod_text = expand.word(instruction.chmod, line) if instruction.chmod else None
        chmod: int | None = None
        if chmod_text is not None:
            try:
                chmod = int(chmod_text, 8)
            except ValueError:
                raise DockerfileError(
                    f"invalid --chmod={chmod_text}: only octal modes are supported",
                    filename=self.dockerfile.filename,
                    line=line,
                ) from None
        from_ref = None
        if isinstance(instruction, ins.Copy) and instruction.from_ is not None:
            from_ref = expand.word(instruction.from_, line)
        flags = []
        if from_ref is not None:
            flags.append(f"--from={from_ref}")
        if chown:
            flags.append(f"--chown={chown}")
        if chmod_text:
            flags.append(f"--chmod={chmod_text}")
        excludes = [expand.word(p, line) for p in instruction.exclude]
        flags.extend(f"--exclude={p}" for p in excludes)
        if isinstance(instruction, ins.Copy) and instruction.parents:
            raise DockerfileError(
                "COPY --parents is not supported by pybuild yet",
                filename=self.dockerfile.filename,
                line=line,
            )
        text = " ".join([keyword, *flags, *sources, dest])
        workdir = state.config.config.working_dir or "/"

        inputs: dict[str, str] = {}
        view_layers: list[LayerRef] | None = None
        context_sources: list[str] = []
        heredoc_files: list[tuple[str, str]] = []
        url_files: list[tuple[str, Path]] = []
        download_dir = self.scratch.directory("add-")
        try:
            for raw in sources:
                if raw.startswith("<<") and raw.lstrip("<-") in heredoc_names:
                    doc = next(h for h in instruction.heredocs if h.name == raw.lstrip("<-"))
                    body = _heredoc_body(doc)
                    if doc.expand:
                        body = _expand_heredoc(body, expand, line)
                    heredoc_files.append((doc.name, body))
                    inputs[f"heredoc:{doc.name}"] = hashlib.sha256(body.encode()).hexdigest()
                elif is_add and raw.startswith(("http://", "https://")):
                    raw_sum = instruction.checksum if isinstance(instruction, ins.Add) else None
                    checksum = expand.word(raw_sum, line) if raw_sum else None
                    path = self._download(raw, download_dir, checksum, line)
                    url_files.append((raw, path))
                    inputs[f"url:{raw}"] = hashlib.sha256(path.read_bytes()).hexdigest()
                elif raw.startswith(("git@",)) or (is_add and raw.endswith(".git")):
                    raise DockerfileError(
                        f"ADD of a git repository ({raw}) is not supported by pybuild yet",
                        filename=self.dockerfile.filename,
                        line=line,
                    )
                else:
                    context_sources.append(raw)
            if from_ref is not None:
                index = self._stage_index(from_ref)
                if index is not None:
                    source_state = self.results[index].state
                    view_layers = source_state.layers
                    inputs["from"] = f"stage:{source_state.key.hex if source_state.key else ''}"
                else:
                    image = self.resolve_image(from_ref, line=line)
                    view_layers = list(image.layers)
                    inputs["from"] = f"image:{image.digest}"
            elif context_sources:
                root = self._require_context(keyword)
                try:
                    resolved = resolve_sources(root, context_sources, excluded=self._excluded())
                except ContextError as e:
                    raise ContextError(
                        f"{self.dockerfile.filename}:{line}: {keyword} failed: {e}"
                    ) from None
                inputs["sources"] = self._content_digest(
                    root, resolved, _with_excludes(self._excluded(), excludes, resolved)
                )
            key = step_key(state.key, instruction=text, inputs=inputs)
            if self._lookup(key, state, event):
                return True, None

            base_excluded = self._excluded() if from_ref is None else None
            heredoc_dir = download_dir / "heredocs"
            for name, body in heredoc_files:
                heredoc_dir.mkdir(exist_ok=True)
                (heredoc_dir / name).write_text(body)
                os.chmod(heredoc_dir / name, 0o644)

            def do_copy(root: Path, views: list[Path]) -> None:
                owner = self._chown_owner(root, chown) if chown else None
                selected: list[Source] = []
                archives: list[Path] = []
                excluded = base_excluded
                if context_sources:
                    source_root = views[0] if views else self._require_context(keyword)
                    try:
                        found = resolve_sources(
                            source_root, context_sources, excluded=base_excluded
                        )
                    except ContextError as e:
                        raise ContextError(
                            f"{self.dockerfile.filename}:{line}: {keyword} failed: {e}"
                        ) from None
                    excluded = _with_excludes(base_excluded, excludes, found)
                    for source in found:
                        if excluded is not None and source.rel and excluded(source.rel):
                            continue
                        if is_add and not source.is_dir and _is_archive(source.path):
                            archives.append(source.path)
                        else:
                            selected.append(source)
                for name, _ in heredoc_files:
                    selected.append(Source(name, heredoc_dir / name))
                for _url, path in url_files:
                    selected.append(Source(path.name, path))
                count = len(selected) + len(archives)
                if count > 1 and not (dest.endswith("/") or dest in (".", "")):
                    existing = scoped_resolve(root, _absolute(dest, workdir))
                    if not existing.is_dir():
                        raise ContextError(
                            f"{self.dockerfile.filename}:{line}: When using {keyword} with more "
                            f"than one source file, the destination must be a directory and end "
                            f"with a / (got {dest!r})"
                        )
                if selected:
                    copy_sources(
                        selected,
                        root,
                        dest if count == 1 or dest.endswith("/") else dest + "/",
                        workdir=workdir,
                        owner=owner,
                        chmod=chmod,
                        excluded=excluded,
                        from_context=from_ref is None,
                    )
                for archive in archives:
                    target_rel = _absolute(dest, workdir)
                    _makedirs(root, target_rel)
                    _extract_archive(archive, scoped_resolve(root, target_rel))

            views = [self.lowerdirs(view_layers)] if view_layers is not None else []
            if view_layers is not None and not view_layers:
                empty = download_dir / "empty-view"
                empty.mkdir()
                views = [[empty]]
            layer = self._in_rootfs(state, do_copy, views)
        finally:
            shutil.rmtree(download_dir, ignore_errors=True)
        return self._finish_step(state, key, layer, text)

    def _download(self, url: str, directory: Path, checksum: str | None, line: int) -> Path:
        import httpx

        name = posixpath.basename(url.split("?", 1)[0].split("#", 1)[0].rstrip("/")) or "download"
        path = directory / secrets.token_hex(4) / name
        path.parent.mkdir()
        hasher = hashlib.sha256()
        try:
            with httpx.stream("GET", url, follow_redirects=True, timeout=60.0) as response:
                if response.status_code >= 400:
                    raise ContextError(
                        f"{self.dockerfile.filename}:{line}: ADD {url}: HTTP {response.status_code}"
                    )
                with open(path, "wb") as f:
                    for chunk in response.iter_bytes(1 << 20):
                        hasher.update(chunk)
                        f.write(chunk)
                modified = response.headers.get("last-modified")
        except httpx.HTTPError as e:
            raise ContextError(f"{self.dockerfile.filename}:{line}: ADD {url}: {e}") from None
        if checksum is not None:
            algorithm, _, expected = checksum.partition(":")
            if algorithm != "sha256" or not expected:
                raise DockerfileError(
                    f"unsupported --checksum {checksum!r} (use sha256:<hex>)",
                    filename=self.dockerfile.filename,
                    line=line,
                )
            if hasher.hexdigest() != expected.lower():
                raise ContextError(
                    f"{self.dockerfile.filename}:{line}: ADD {url}: checksum mismatch "
                    f"(expected sha256:{expected}, got sha256:{hasher.hexdigest()})"
                )
        os.chmod(path, 0o600)
        if modified:
            with contextlib.suppress(TypeError, ValueError):
                when = parsedate_to_datetime(modified).timestamp()
                os.utime(path, (when, when))
        return path


def _with_excludes(
    base: Callable[[str], bool] | None, patterns: list[str], sources: list[Source]
) -> Callable[[str], bool] | None:
    """``base`` plus ``COPY --exclude`` patterns, matched below the root and each source."""
    if not patterns:
        return base
    from builder.ignore import IgnoreMatcher

    matcher = IgnoreMatcher.from_patterns(patterns)
    prefixes = [s.rel for s in sources if s.rel and s.is_dir]

    def excluded(rel: str) -> bool:
        if base is not None and base(rel):
            return True
        if matcher.excludes(rel):
            return True
        return any(
            rel.startswith(prefix + "/") and matcher.excludes(rel[len(prefix) + 1 :])
            for prefix in prefixes
        )

    return excluded


def _absolute(dest: str, workdir: str) -> str:
    path = dest if dest.startswith("/") else posixpath.join(workdir or "/", dest)
    return posixpath.normpath(path)


def _makedirs(root: Path, rel: str) -> None:
    current = ""
    for part in [p for p in rel.split("/") if p]:
        current += "/" + part
        here = scoped_resolve(root, current)
        if not here.is_dir():
            here.mkdir(mode=0o755)


def _heredoc_body(doc: ins.Heredoc) -> str:
    if not doc.chomp:
        return doc.content
    return "".join(line.lstrip("\t") for line in doc.content.splitlines(keepends=True))


def _expand_heredoc(body: str, expand: ic.Expander, line: int) -> str:
    """Expand ``$VAR`` in an unquoted COPY heredoc, keeping its quotes and spacing."""
    from builder.dockerfile.shell import expand_word

    out_lines = []
    for text in body.split("\n"):
        if "$" not in text:
            out_lines.append(text)
            continue
        # Escape quotes and backslashes so only variables are processed.
        protected = text.replace("\\", "\\\\").replace("'", "\\'").replace('"', '\\"')
        try:
            out_lines.append(expand_word(protected, expand.env, escape="\\"))
        except DockerfileError as e:
            raise type(e)(e.message, filename=expand.filename, line=line) from None
    return "\n".join(out_lines)


_MAGICS = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")


def _open_archive(path: Path) -> Any:
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        import zstandard

        raw = open(path, "rb")  # noqa: SIM115 - the stream reader closes it
        return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
    if head.startswith(b"\x1f\x8b"):
        import gzip

        return gzip.open(path, "rb")
    if head.startswith(b"BZh"):
        import bz2

        return bz2.open(path, "rb")
    if head.startswith(b"\xfd7zXZ\x00"):
        import lzma

        return lzma.open(path, "rb")
    return open(path, "rb")


def _is_archive(path: Path) -> bool:
    """A local ADD source that is a tar archive (plain or compressed), by content."""
    try:
        with _open_archive(path) as stream:
            head = stream.read(512)
    except (OSError, EOFError, ValueError):
        return False
    except Exception:  # a decompressor's own error: not an archive we can read
        return False
    return len(head) >= 262 and head[257:262] == b"ustar"


def _extract_archive(path: Path, target: Path) -> None:
    try:
        with _open_archive(path) as stream:
            data = io.BufferedReader(stream) if not hasattr(stream, "peek") else stream
            with tarfile.open(fileobj=data, mode="r|") as tar:
                tar.extractall(target, filter="tar")
                # tarfile leaves symlinks with the extraction time; an archive's symlinks
                # keep their own mtime, as with docker build (every member passed the filter,
                # so its path is inside the target).
                for member in tar.getmembers():
                    if member.issym():
                        link = target / member.name.lstrip("/")
                        os.utime(link, (member.mtime, member.mtime), follow_symlinks=False)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ContextError(f"ADD: cannot extract {path.name}: {e}") from None
