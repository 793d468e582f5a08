"""BuildPlan: the stage graph of a Dockerfile, pruned to what ``--target`` needs, in levels.

Each stage's base (an image, an earlier stage or ``scratch``) is found after expanding the
global ARGs (with ``--build-arg`` overrides and the automatic platform ARGs) in its FROM
line, as BuildKit does. Edges come from ``FROM <stage>``, ``COPY --from=<stage>`` (name or
index) and ``RUN --mount=…,from=<stage>``. The target (default: the last stage) selects the
stages to build; they are listed in dependency order and grouped into levels whose members
do not depend on each other, so an executor may run each level's stages in parallel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from builder.dockerfile.instructions import Add, Copy, Dockerfile, Onbuild, Run, Stage
from builder.dockerfile.shell import expand_word
from builder.errors import DockerfileError, UnknownStageError

SCRATCH = "scratch"


@dataclass(frozen=True, slots=True)
class StageNode:
    """One stage in the graph: its resolved base and the stages it depends on."""

    index: int
    name: str | None
    base: str  # expanded image reference, stage name, or "scratch"
    base_kind: str  # "image" | "stage" | "scratch"
    platform: str | None  # expanded --platform, if any
    depends_on: tuple[int, ...]  # indices of stages this one needs (FROM, --from, mount from=)
    stage: Stage
    base_stage: int | None = None  # index of the stage FROM names, for base_kind "stage"
    images: tuple[str, ...] = ()  # external images named by --from / mount from=

    def to_json(self, instruction_indices: list[int]) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "base": self.base,
            "base_kind": self.base_kind,
            "platform": self.platform,
            "depends_on": list(self.depends_on),
            "instructions": instruction_indices,
        }


@dataclass(frozen=True, slots=True)
class BuildPlan:
    """The stages a build needs: all stage nodes, the target, an order and parallel levels."""

    dockerfile: Dockerfile
    stages: tuple[StageNode, ...]
    target: int
    order: tuple[int, ...]  # needed stages, every stage after the ones it depends on
    levels: tuple[tuple[int, ...], ...]  # each level depends only on earlier levels
    global_args: Mapping[str, str] = field(default_factory=dict)

    def needed(self) -> list[StageNode]:
        return [self.stages[i] for i in self.order]


# Go's GOARCH names for platform.machine() values (kept here rather than importing the
# layerstore package, whose import cost `pybuild parse` should not pay).
_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64/v8",
    "arm64": "arm64/v8",
    "armv7l": "arm/v7",
    "armv6l": "arm/v6",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def host_platform() -> str:
    """This machine as ``linux/<goarch>[/<variant>]``."""
    import platform

    machine = platform.machine().lower()
    return f"linux/{_GOARCH.get(machine, machine)}"


def automatic_platform_args(
    build_platform: str | None = None, target_platform: str | None = None
) -> dict[str, str]:
    """BUILDPLATFORM/TARGETPLATFORM and their OS/ARCH/VARIANT parts (global scope in BuildKit)."""
    if build_platform is None or target_platform is None:
        host_text = host_platform()
        build_platform = build_platform or host_text
        target_platform = target_platform or host_text
    out: dict[str, str] = {}
    for prefix, value in (("BUILD", build_platform), ("TARGET", target_platform)):
        parts = value.split("/")
        out[f"{prefix}PLATFORM"] = value
        out[f"{prefix}OS"] = parts[0]
        out[f"{prefix}ARCH"] = parts[1] if len(parts) > 1 else ""
        out[f"{prefix}VARIANT"] = parts[2] if len(parts) > 2 else ""
    return out


def global_args(
    dockerfile: Dockerfile,
    build_args: Mapping[str, str] | None = None,
    *,
    platform_args: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The global ARG values FROM lines see: defaults expanded in order, build args win."""
    build_args = dict(build_args or {})
    env: dict[str, str] = dict(platform_args or {})
    for arg in dockerfile.meta_args:
        for name, default in arg.pairs:
            if name in build_args:
                env[name] = build_args[name]
            elif default is not None:
                env[name] = _expand(default, env, dockerfile, arg.span.line)
            elif name not in (platform_args or {}):
                env.pop(name, None)
    return env


def _expand(word: str, env: Mapping[str, str], dockerfile: Dockerfile, line: int) -> str:
    try:
        return expand_word(word, env, escape=dockerfile.escape)
    except DockerfileError as e:
        raise type(e)(e.message, filename=dockerfile.filename, line=line) from None


def _stage_ref(ref: str, current: int, names: Mapping[str, int], count: int) -> int | None:
    """The stage a --from / from= value names, or None when it is an image reference."""
    lowered = ref.lower()
    if lowered in names:
        return names[lowered]
    if ref.isdigit():
        index = int(ref)
        return index if index < count else -1
    return None


def build_plan(
    dockerfile: Dockerfile,
    *,
    target: str | None = None,
    build_args: Mapping[str, str] | None = None,
    platform_args: Mapping[str, str] | None = None,
) -> BuildPlan:
    """Resolve bases and edges, pick the target, and order the stages it needs."""
    if not dockerfile.stages:
        raise UnknownStageError("no stages to build", filename=dockerfile.filename)
    if platform_args is None:
        platform_args = automatic_platform_args()
    env = global_args(dockerfile, build_args, platform_args=platform_args)
    names = {s.name: s.index for s in dockerfile.stages if s.name is not None}
    count = len(dockerfile.stages)
    nodes: list[StageNode] = []
    for stage in dockerfile.stages:
        line = stage.from_.line
        base = _expand(stage.base, env, dockerfile, line)
        if not base:
            raise DockerfileError(
                f"base name ({stage.base}) should not be blank",
                filename=dockerfile.filename,
                line=line,
            )
        platform = stage.platform
        if platform is not None:
            platform = _expand(platform, env, dockerfile, line)
        deps: set[int] = set()
        images: list[str] = []
        base_stage = None
        lowered = base.lower()
        if lowered in names and names[lowered] < stage.index:
            base_kind, base_stage = "stage", names[lowered]
            deps.add(base_stage)
            base = lowered
        elif lowered == SCRATCH:
            base_kind = "scratch"
        else:
            base_kind = "image"
        for ref, where in _references(stage):
            expanded = _expand(ref, env, dockerfile, where)
            index = _stage_ref(expanded, stage.index, names, count)
            if index is None:
                images.append(expanded)
                continue
            if index < 0 or index == stage.index:
                what = "itself" if index == stage.index else f"no stage with index {expanded}"
                raise UnknownStageError(
                    f"stage reference {ref!r} is invalid: {what}",
                    filename=dockerfile.filename,
                    line=where,
                )
            deps.add(index)
        nodes.append(
            StageNode(
                index=stage.index,
                name=stage.name,
                base=base,
                base_kind=base_kind,
                platform=platform,
                depends_on=tuple(sorted(deps)),
                stage=stage,
                base_stage=base_stage,
                images=tuple(images),
            )
        )
    target_index = _target_index(dockerfile, target, names)
    order, levels = _order(nodes, target_index, dockerfile.filename)
    return BuildPlan(dockerfile, tuple(nodes), target_index, order, levels, env)


def _references(stage: Stage) -> list[tuple[str, int]]:
    """Every ``--from`` / ``from=`` value in a stage (not ONBUILD triggers: they run later)."""
    out: list[tuple[str, int]] = []
    for instruction in stage.instructions:
        if isinstance(instruction, Onbuild):
            continue
        if isinstance(instruction, Copy) and instruction.from_ is not None:
            out.append((instruction.from_, instruction.line))
        elif isinstance(instruction, Run):
            for mount in instruction.mounts:
                if mount.from_ is not None:
                    out.append((mount.from_, instruction.line))
        elif isinstance(instruction, Add):
            continue
    return out


def _target_index(dockerfile: Dockerfile, target: str | None, names: Mapping[str, int]) -> int:
    if target is None or target == "":
        return len(dockerfile.stages) - 1
    lowered = target.lower()
    if lowered in names:
        return names[lowered]
    known = ", ".join(sorted(names)) or "none: no stage has a name (FROM … AS name)"
    raise UnknownStageError(
        f"target stage {target!r} could not be found (stages: {known})",
        filename=dockerfile.filename,
    )


def _order(
    nodes: list[StageNode], target: int, filename: str
) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """Stages the target needs, dependency-ordered, and their levels; cycles are errors."""
    level: dict[int, int] = {}
    visiting: list[int] = []

    def visit(i: int) -> int:
        if i in level:
            return level[i]
        if i in visiting:
            cycle = [*visiting[visiting.index(i) :], i]
            names = " -> ".join(_label(nodes[j]) for j in cycle)
            raise UnknownStageError(
                f"circular dependency between stages: {names}",
                filename=filename,
                line=nodes[i].stage.from_.line,
            )
        visiting.append(i)
        depth = 0
        for dep in nodes[i].depends_on:
            depth = max(depth, visit(dep) + 1)
        visiting.pop()
        level[i] = depth
        return depth

    visit(target)
    groups: dict[int, list[int]] = {}
    for index, depth in level.items():
        groups.setdefault(depth, []).append(index)
    levels = tuple(tuple(sorted(groups[d])) for d in sorted(groups))
    order = tuple(i for group in levels for i in group)
    return order, levels


def _label(node: StageNode) -> str:
    return f"{node.index} ({node.name})" if node.name else str(node.index)
