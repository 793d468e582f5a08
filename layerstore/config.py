"""The image configuration document (OCI image config, a subset of Docker's, and Docker's own).

Immutable values. A config read from elsewhere keeps its bytes (``to_bytes()`` returns them
exactly, so its digest never changes); unknown fields at the top level and inside ``config``
are preserved when a derived config is re-encoded. Configs we build encode with
:func:`canonical_json`. The executor derives each step's config with :meth:`ImageConfig.evolve`
and the ``with_*`` helpers, which return new values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from layerstore.canonicaljson import canonical_json
from layerstore.descriptor import Descriptor, MediaType, Platform
from layerstore.digest import Digest
from layerstore.errors import InvalidManifest

# Unknown members are kept as (key, canonical JSON text) pairs: hashable and order-stable.
Extra = tuple[tuple[str, str], ...]


def _extra(obj: dict[str, Any], known: set[str]) -> Extra:
    return tuple(sorted((k, canonical_json(v).decode()) for k, v in obj.items() if k not in known))


def _merge_extra(out: dict[str, Any], extra: Extra) -> dict[str, Any]:
    for key, text in extra:
        out.setdefault(key, json.loads(text))
    return out


def _str(obj: dict[str, Any], key: str, where: str) -> str | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise InvalidManifest(f"image config {where}{key} must be a string, got {v!r}")
    return v


def _str_list(obj: dict[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, str):  # some old tools wrote Cmd/Entrypoint as a bare string
        return (v,)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InvalidManifest(f"image config {where}{key} must be a list of strings, got {v!r}")
    return tuple(v)


def _set_keys(obj: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    v = obj.get(key)
    if v is None:
        return ()
    if not isinstance(v, dict):
        raise InvalidManifest(f"image config {where}{key} must be an object, got {v!r}")
    return tuple(sorted(str(k) for k in v))


@dataclass(frozen=True)
class Healthcheck:
    """``HEALTHCHECK``: the test command and durations in nanoseconds (Docker's encoding)."""

    test: tuple[str, ...] = ()
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0

    _KEYS = (
        ("test", "Test"),
        ("interval", "Interval"),
        ("timeout", "Timeout"),
        ("start_period", "StartPeriod"),
        ("start_interval", "StartInterval"),
        ("retries", "Retries"),
    )

    @classmethod
    def from_json(cls, obj: Any) -> Healthcheck:
        if not isinstance(obj, dict):
            raise InvalidManifest(f"image config Healthcheck must be an object, got {obj!r}")
        test = _str_list(obj, "Test", "Healthcheck.") or ()
        values: dict[str, Any] = {"test": test}
        for attr, key in cls._KEYS[1:]:
            v = obj.get(key, 0) or 0
            if not isinstance(v, int) or isinstance(v, bool):
                raise InvalidManifest(f"image config Healthcheck.{key} must be an integer")
            values[attr] = v
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Test": list(self.test)}
        for attr, key in self._KEYS[1:]:
            v = getattr(self, attr)
            if v:
                out[key] = v
        return out


_CC_KEYS = {
    "user": "User",
    "exposed_ports": "ExposedPorts",
    "env": "Env",
    "entrypoint": "Entrypoint",
    "cmd": "Cmd",
    "volumes": "Volumes",
    "working_dir": "WorkingDir",
    "labels": "Labels",
    "stop_signal": "StopSignal",
    "shell": "Shell",
    "healthcheck": "Healthcheck",
    "on_build": "OnBuild",
    "args_escaped": "ArgsEscaped",
}


@dataclass(frozen=True)
class ContainerConfig:
    """The ``config`` member: how to run a container from the image.

    ``entrypoint``/``cmd``/``shell`` are ``None`` when unset (which differs from an empty
    list for Docker: ``ENTRYPOINT []`` clears the base image's).
    """

    user: str = ""
    exposed_ports: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    volumes: tuple[str, ...] = ()
    working_dir: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    stop_signal: str = ""
    shell: tuple[str, ...] | None = None
    healthcheck: Healthcheck | None = None
    on_build: tuple[str, ...] = ()
    args_escaped: bool = False
    extra: Extra = ()

    @classmethod
    def from_json(cls, obj: Any) -> ContainerConfig:
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise InvalidManifest(f"image config 'config' must be an object, got {obj!r}")
        w = "config."
        labels = obj.get("Labels") or {}
        if not isinstance(labels, dict):
            raise InvalidManifest("image config config.Labels must be an object")
        hc = obj.get("Healthcheck")
        escaped = obj.get("ArgsEscaped", False)
        return cls(
            user=_str(obj, "User", w) or "",
            exposed_ports=_set_keys(obj, "ExposedPorts", w),
            env=_str_list(obj, "Env", w) or (),
            entrypoint=_str_list(obj, "Entrypoint", w),
            cmd=_str_list(obj, "Cmd", w),
            volumes=_set_keys(obj, "Volumes", w),
            working_dir=_str(obj, "WorkingDir", w) or "",
            labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
            stop_signal=_str(obj, "StopSignal", w) or "",
            shell=_str_list(obj, "Shell", w),
            healthcheck=Healthcheck.from_json(hc) if hc else None,
            on_build=_str_list(obj, "OnBuild", w) or (),
            args_escaped=bool(escaped),
            extra=_extra(obj, set(_CC_KEYS.values())),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.user:
            out["User"] = self.user
        if self.exposed_ports:
            out["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.env:
            out["Env"] = list(self.env)
        if self.entrypoint is not None:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            out["Cmd"] = list(self.cmd)
        if self.volumes:
            out["Volumes"] = {v: {} for v in self.volumes}
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.labels:
            out["Labels"] = dict(self.labels)
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        if self.shell is not None:
            out["Shell"] = list(self.shell)
        if self.healthcheck is not None:
            out["Healthcheck"] = self.healthcheck.to_json()
        if self.on_build:
            out["OnBuild"] = list(self.on_build)
        if self.args_escaped:
            out["ArgsEscaped"] = True
        return _merge_extra(out, self.extra)

    def evolve(self, **changes: Any) -> ContainerConfig:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        for key in ("exposed_ports", "volumes"):
            values[key] = tuple(sorted(set(values[key])))
        for key in ("env", "on_build"):
            values[key] = tuple(values[key])
        for key in ("entrypoint", "cmd", "shell"):
            if values[key] is not None:
                values[key] = tuple(values[key])
        if isinstance(values["labels"], dict):
            values["labels"] = tuple(sorted(values["labels"].items()))
        return ContainerConfig(**values)

    def env_dict(self) -> dict[str, str]:
        """``Env`` as a mapping (later entries win; an entry without ``=`` maps to "")."""
        out: dict[str, str] = {}
        for item in self.env:
            name, _, value = item.partition("=")
            out[name] = value
        return out

    def with_env(self, name: str, value: str) -> ContainerConfig:
        """Set one variable, keeping its position if already present (as Docker does)."""
        entry = f"{name}={value}"
        env = list(self.env)
        for i, item in enumerate(env):
            if item.partition("=")[0] == name:
                env[i] = entry
                break
        else:
            env.append(entry)
        return self.evolve(env=tuple(env))

    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)

    def with_labels(self, labels: dict[str, str]) -> ContainerConfig:
        merged = dict(self.labels)
        merged.update(labels)
        return self.evolve(labels=tuple(sorted(merged.items())))


@dataclass(frozen=True)
class History:
    """One ``history`` entry; ``empty_layer`` marks steps that produced no layer."""

    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool = False
    extra: Extra = ()

    @classmethod
    def from_json(cls, obj: Any) -> History:
        if not isinstance(obj, dict):
            raise InvalidManifest(f"image config history entry must be an object, got {obj!r}")
        return cls(
            created=_str(obj, "created", "history."),
            created_by=_str(obj, "created_by", "history."),
            author=_str(obj, "author", "history."),
            comment=_str(obj, "comment", "history."),
            empty_layer=bool(obj.get("empty_layer", False)),
            extra=_extra(obj, {"created", "created_by", "author", "comment", "empty_layer"}),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.created is not None:
            out["created"] = self.created
        if self.created_by is not None:
            out["created_by"] = self.created_by
        if self.author is not None:
            out["author"] = self.author
        if self.comment is not None:
            out["comment"] = self.comment
        if self.empty_layer:
            out["empty_layer"] = True
        return _merge_extra(out, self.extra)


@dataclass(frozen=True)
class RootFS:
    """``rootfs``: the uncompressed digests (diff IDs) of the layers, bottom first."""

    type: str = "layers"
    diff_ids: tuple[Digest, ...] = ()

    @classmethod
    def from_json(cls, obj: Any) -> RootFS:
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise InvalidManifest(f"image config rootfs must be an object, got {obj!r}")
        ids = obj.get("diff_ids") or []
        if not isinstance(ids, list):
            raise InvalidManifest("image config rootfs.diff_ids must be a list")
        try:
            diff_ids = tuple(Digest.parse(d) for d in ids)
        except ValueError as e:
            raise InvalidManifest(f"image config rootfs.diff_ids: {e}") from None
        return cls(type=str(obj.get("type", "layers")), diff_ids=diff_ids)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "diff_ids": [str(d) for d in self.diff_ids]}


_TOP_KEYS = {
    "architecture",
    "os",
    "variant",
    "os.version",
    "os.features",
    "created",
    "author",
    "config",
    "rootfs",
    "history",
}


def format_created(when: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix, as Docker and BuildKit write ``created``."""
    when = when.astimezone(UTC)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if when.microsecond:
        text += f".{when.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_created(text: str | None) -> datetime | None:
    """Parse an RFC 3339 timestamp (nanoseconds allowed); ``None`` when absent or malformed."""
    if not text:
        return None
    t = text.strip()
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    # Python parses at most 6 fractional digits; Go writes up to 9.
    if "." in t:
        head, _, rest = t.partition(".")
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        t = f"{head}.{(digits + '000000')[:6]}{rest}"
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ImageConfig:
    """An image configuration (Docker-compatible superset of the OCI image config).

    Equality includes the encoded bytes, as for manifests: equal configs have equal digests.
    """

    architecture: str = "amd64"
    os: str = "linux"
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()
    created: str | None = None
    author: str | None = None
    config: ContainerConfig = field(default_factory=ContainerConfig)
    rootfs: RootFS = field(default_factory=RootFS)
    history: tuple[History, ...] = ()
    extra: Extra = ()
    raw: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if not self.raw:
            object.__setattr__(self, "raw", canonical_json(self.to_json()))

    @classmethod
    def from_bytes(cls, raw: bytes) -> ImageConfig:
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidManifest(f"image config is not valid JSON: {e}") from None
        if not isinstance(obj, dict):
            raise InvalidManifest("image config must be a JSON object")
        history = obj.get("history")
        if history is None:
            history = []
        if not isinstance(history, list):
            raise InvalidManifest("image config history must be a list")
        features = obj.get("os.features") or ()
        return cls(
            architecture=_str(obj, "architecture", "") or "",
            os=_str(obj, "os", "") or "",
            variant=_str(obj, "variant", "") or None,
            os_version=_str(obj, "os.version", "") or None,
            os_features=tuple(str(f) for f in features),
            created=_str(obj, "created", ""),
            author=_str(obj, "author", ""),
            config=ContainerConfig.from_json(obj.get("config")),
            rootfs=RootFS.from_json(obj.get("rootfs")),
            history=tuple(History.from_json(h) for h in history),
            extra=_extra(obj, _TOP_KEYS),
            raw=bytes(raw),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.created is not None:
            out["created"] = self.created
        if self.author is not None:
            out["author"] = self.author
        out["config"] = self.config.to_json()
        out["rootfs"] = self.rootfs.to_json()
        if self.history:
            out["history"] = [h.to_json() for h in self.history]
        return _merge_extra(out, self.extra)

    def to_bytes(self) -> bytes:
        return self.raw

    @cached_property
    def digest(self) -> Digest:
        """The image ID, as ``docker images`` shows it (shortened)."""
        return Digest.of(self.raw)

    def descriptor(self, media_type: str = MediaType.OCI_CONFIG) -> Descriptor:
        return Descriptor(media_type=media_type, digest=self.digest, size=len(self.raw))

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant, self.os_version, self.os_features)

    @property
    def created_at(self) -> datetime | None:
        return parse_created(self.created)

    def evolve(self, **changes: Any) -> ImageConfig:
        """A copy with ``changes`` applied, re-encoded canonically.

        Unknown fields (``extra``) carry over; Docker's ``container_config`` and
        ``container`` describe the step that made the base, so they are dropped.
        """
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "raw"}
        values["extra"] = tuple(
            (k, v) for k, v in self.extra if k not in ("container_config", "container")
        )
        values.update(changes)
        values["history"] = tuple(values["history"])
        return ImageConfig(**values)

    def with_container_config(self, **changes: Any) -> ImageConfig:
        """Change members of ``config`` (``user=``, ``cmd=``, ``env=``, …)."""
        return self.evolve(config=self.config.evolve(**changes))

    def with_layer(
        self,
        diff_id: Digest,
        *,
        created_by: str | None = None,
        created: str | None = None,
        comment: str | None = None,
        author: str | None = None,
    ) -> ImageConfig:
        """Append a layer (its diff ID) and its history entry."""
        entry = History(created=created, created_by=created_by, author=author, comment=comment)
        return self.evolve(
            rootfs=RootFS(self.rootfs.type, (*self.rootfs.diff_ids, diff_id)),
            history=(*self.history, entry),
            created=created if created is not None else self.created,
        )

    def with_history(
        self,
        *,
        created_by: str | None = None,
        created: str | None = None,
        comment: str | None = None,
        author: str | None = None,
        empty_layer: bool = True,
    ) -> ImageConfig:
        """Append a history entry for a step that produced no layer (ENV, CMD, …)."""
        entry = History(
            created=created,
            created_by=created_by,
            author=author,
            comment=comment,
            empty_layer=empty_layer,
        )
        return self.evolve(
            history=(*self.history, entry),
            created=created if created is not None else self.created,
        )

    def layer_history(self) -> list[History | None]:
        """For each diff ID, the history entry that made it (``None`` where history is short)."""
        entries = [h for h in self.history if not h.empty_layer]
        out: list[History | None] = list(entries[: len(self.rootfs.diff_ids)])
        out.extend([None] * (len(self.rootfs.diff_ids) - len(out)))
        return out
