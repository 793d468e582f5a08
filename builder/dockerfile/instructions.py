"""Parsed Dockerfile values: raw nodes (what the grammar saw) and typed instructions.

Two layers, as in BuildKit (``parser.Node`` then ``instructions.*``): a :class:`Node` holds an
instruction exactly as the parser read it (flags with quotes processed, arguments unexpanded);
the typed classes add meaning (flags validated and split out, ``--mount`` specs parsed,
``FROM … AS name`` resolved). Everything is frozen and free of I/O; words stay unexpanded
because expansion needs build-time values (``--build-arg``) that only the plan has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from builder.dockerfile.source import Directive, Heredoc, Span, Warning, fast_init

__all__ = [
    "Add",
    "Arg",
    "Cmd",
    "Copy",
    "Directive",
    "Dockerfile",
    "Entrypoint",
    "Env",
    "Expose",
    "From",
    "Healthcheck",
    "Heredoc",
    "Instruction",
    "Label",
    "Maintainer",
    "MountSpec",
    "Node",
    "Onbuild",
    "Run",
    "Shell",
    "Span",
    "Stage",
    "Stopsignal",
    "User",
    "Volume",
    "Warning",
    "Workdir",
]


@fast_init
@dataclass(frozen=True, slots=True)
class Node:
    """One instruction as parsed: keyword, flags, arguments, heredocs, ONBUILD trigger."""

    keyword: str  # upper-case (as written for an unknown instruction, upper-cased)
    span: Span
    flags: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    json_form: bool = False
    heredocs: tuple[Heredoc, ...] = ()
    trigger: Node | None = None
    original: str = ""

    @property
    def line(self) -> int:
        return self.span.line

    def to_json(self) -> dict[str, Any]:
        return {
            "instruction": self.keyword,
            "line": self.span.line,
            "end_line": self.span.end_line,
            "flags": list(self.flags),
            "args": list(self.args),
            "json_form": self.json_form,
            "heredocs": [h.to_json() for h in self.heredocs],
            "trigger": self.trigger.to_json() if self.trigger is not None else None,
        }


@fast_init
@dataclass(frozen=True, slots=True)
class MountSpec:
    """One ``RUN --mount=…``: type bind|cache|tmpfs|secret|ssh and its options."""

    type: str
    target: str | None = None
    source: str | None = None
    from_: str | None = None  # stage name/index or image for bind/cache
    id: str | None = None
    readonly: bool | None = None
    sharing: str | None = None  # cache: shared|private|locked
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None  # tmpfs bytes
    required: bool | None = None
    env: str | None = None  # secret: expose as an environment variable
    raw: str = ""


@fast_init
@dataclass(frozen=True, slots=True)
class Instruction:
    """Base of the typed instructions: the raw node plus per-instruction meaning."""

    node: Node

    @property
    def keyword(self) -> str:
        return self.node.keyword

    @property
    def span(self) -> Span:
        return self.node.span

    @property
    def line(self) -> int:
        return self.node.span.line


@fast_init
@dataclass(frozen=True, slots=True)
class From(Instruction):
    image: str = ""
    name: str | None = None  # lower-cased, as BuildKit compares stage names
    platform: str | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Run(Instruction):
    command: tuple[str, ...] = ()  # exec form: argv; shell form: one string
    json_form: bool = False
    mounts: tuple[MountSpec, ...] = ()
    network: str | None = None
    security: str | None = None
    heredocs: tuple[Heredoc, ...] = ()


@fast_init
@dataclass(frozen=True, slots=True)
class Cmd(Instruction):
    command: tuple[str, ...] = ()
    json_form: bool = False


@fast_init
@dataclass(frozen=True, slots=True)
class Entrypoint(Instruction):
    command: tuple[str, ...] = ()
    json_form: bool = False


@fast_init
@dataclass(frozen=True, slots=True)
class Shell(Instruction):
    command: tuple[str, ...] = ()


@fast_init
@dataclass(frozen=True, slots=True)
class Copy(Instruction):
    sources: tuple[str, ...] = ()
    dest: str = ""
    from_: str | None = None
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    parents: bool = False
    exclude: tuple[str, ...] = ()
    heredocs: tuple[Heredoc, ...] = ()


@fast_init
@dataclass(frozen=True, slots=True)
class Add(Instruction):
    sources: tuple[str, ...] = ()
    dest: str = ""
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    checksum: str | None = None
    keep_git_dir: bool = False
    unpack: bool | None = None
    exclude: tuple[str, ...] = ()
    heredocs: tuple[Heredoc, ...] = ()


@fast_init
@dataclass(frozen=True, slots=True)
class Env(Instruction):
    pairs: tuple[tuple[str, str], ...] = ()


@fast_init
@dataclass(frozen=True, slots=True)
class Label(Instruction):
    pairs: tuple[tuple[str, str], ...] = ()


@fast_init
@dataclass(frozen=True, slots=True)
class Arg(Instruction):
    pairs: tuple[tuple[str, str | None], ...] = ()  # name, unexpanded default (None: none)


@fast_init
@dataclass(frozen=True, slots=True)
class Expose(Instruction):
    ports: tuple[str, ...] = ()


@fast_init
@dataclass(frozen=True, slots=True)
class Volume(Instruction):
    paths: tuple[str, ...] = ()


@fast_init
@dataclass(frozen=True, slots=True)
class User(Instruction):
    user: str = ""


@fast_init
@dataclass(frozen=True, slots=True)
class Workdir(Instruction):
    path: str = ""


@fast_init
@dataclass(frozen=True, slots=True)
class Maintainer(Instruction):
    maintainer: str = ""


@fast_init
@dataclass(frozen=True, slots=True)
class Stopsignal(Instruction):
    signal: str = ""


@fast_init
@dataclass(frozen=True, slots=True)
class Healthcheck(Instruction):
    test: tuple[str, ...] = ()  # ("NONE",) | ("CMD", argv…) | ("CMD-SHELL", command)
    interval: float | None = None  # seconds
    timeout: float | None = None
    start_period: float | None = None
    start_interval: float | None = None
    retries: int | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Onbuild(Instruction):
    trigger: Instruction | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Stage:
    """A build stage: its FROM and the instructions after it."""

    index: int
    from_: From
    instructions: tuple[Instruction, ...] = ()

    @property
    def name(self) -> str | None:
        return self.from_.name

    @property
    def base(self) -> str:
        return self.from_.image

    @property
    def platform(self) -> str | None:
        return self.from_.platform


@fast_init
@dataclass(frozen=True, slots=True)
class Dockerfile:
    """A parsed Dockerfile: directives, every node in source order, global ARGs, stages."""

    filename: str
    escape: str
    directives: tuple[Directive, ...]
    nodes: tuple[Node, ...]
    meta_args: tuple[Arg, ...] = ()
    stages: tuple[Stage, ...] = ()
    warnings: tuple[Warning, ...] = field(default=())
    typed: bool = True  # False for a --syntax-only parse (no meta_args/stages)

    def directive(self, name: str) -> str | None:
        for d in self.directives:
            if d.name == name:
                return d.value
        return None

    def stage(self, ref: str) -> Stage | None:
        """The stage a ``--target``/``--from``/``FROM`` reference names (name or index)."""
        lowered = ref.lower()
        for s in self.stages:
            if s.name == lowered:
                return s
        if ref.isdigit():
            i = int(ref)
            if i < len(self.stages):
                return self.stages[i]
        return None
