"""BuildPlan: stage bases and edges, target pruning, parallel levels, and stage errors."""

from __future__ import annotations

import pytest

from builder.dockerfile import parse
from builder.errors import DockerfileError, UnknownStageError
from builder.plan import automatic_platform_args, build_plan

PLATFORMS = automatic_platform_args("linux/amd64", "linux/arm64")

DIAMOND = """\
FROM alpine AS base
FROM base AS left
RUN echo left
FROM base AS right
RUN echo right
FROM golang AS tools
FROM scratch AS final
COPY --from=left /l /l
COPY --from=right /r /r
FROM final AS unrelated
"""


def plan(text: str, **kwargs: object):  # type: ignore[no-untyped-def]
    return build_plan(parse(text), platform_args=PLATFORMS, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("target", "order", "levels"),
    [
        ("final", (0, 1, 2, 4), ((0,), (1, 2), (4,))),
        ("LEFT", (0, 1), ((0,), (1,))),
        ("tools", (3,), ((3,),)),
        (None, (0, 1, 2, 4, 5), ((0,), (1, 2), (4,), (5,))),
    ],
)
def test_target_pruning_and_levels(target: str | None, order: tuple, levels: tuple) -> None:
    result = plan(DIAMOND, target=target)
    assert result.order == order
    assert result.levels == levels
    # every stage comes after the stages it depends on
    seen: set[int] = set()
    for index in result.order:
        assert set(result.stages[index].depends_on) <= seen
        seen.add(index)


def test_bases_and_edges() -> None:
    result = plan(DIAMOND)
    kinds = [(n.name, n.base, n.base_kind, n.depends_on) for n in result.stages]
    assert kinds == [
        ("base", "alpine", "image", ()),
        ("left", "base", "stage", (0,)),
        ("right", "base", "stage", (0,)),
        ("tools", "golang", "image", ()),
        ("final", "scratch", "scratch", (1, 2)),
        ("unrelated", "final", "stage", (4,)),
    ]


@pytest.mark.parametrize(
    ("text", "deps", "images"),
    [
        ("FROM a AS x\nFROM b\nCOPY --from=0 /a /b\n", (0,), ()),
        ("FROM a AS x\nFROM b\nCOPY --from=X /a /b\n", (0,), ()),
        ("FROM a AS x\nFROM b\nRUN --mount=from=x,target=/m true\n", (0,), ()),
        ("FROM a AS x\nFROM b\nRUN --mount=type=cache,from=x,target=/m true\n", (0,), ()),
        ("FROM a\nFROM b\nCOPY --from=nginx:1.27 /a /b\n", (), ("nginx:1.27",)),
        ("ARG S=x\nFROM a AS x\nFROM b\nCOPY --from=${S} /a /b\n", (0,), ()),
        # ONBUILD triggers run in a later build, not in this one
        ("FROM a AS x\nFROM b\nONBUILD COPY --from=x /a /b\n", (), ()),
    ],
)
def test_stage_references(text: str, deps: tuple, images: tuple) -> None:
    last = plan(text).stages[-1]
    assert last.depends_on == deps
    assert last.images == images


def test_global_args_and_build_args() -> None:
    text = (
        "ARG REGISTRY=docker.io\nARG IMAGE=${REGISTRY}/library/alpine\nARG TAG\n"
        "FROM --platform=$BUILDPLATFORM ${IMAGE}:${TAG:-3.19} AS build\n"
        "FROM --platform=${TARGETPLATFORM} build\n"
    )
    default = plan(text)
    assert default.stages[0].base == "docker.io/library/alpine:3.19"
    assert default.stages[0].platform == "linux/amd64"
    assert default.stages[1].platform == "linux/arm64"
    assert default.stages[1].base_kind == "stage"
    overridden = plan(text, build_args={"REGISTRY": "127.0.0.1:5000", "TAG": "edge", "X": "1"})
    assert overridden.stages[0].base == "127.0.0.1:5000/library/alpine:edge"
    assert overridden.global_args["TAG"] == "edge"
    assert "X" not in overridden.global_args  # not declared: invisible to FROM


def test_stage_args_are_not_global() -> None:
    # ARG inside a stage does not reach a later FROM
    result = plan("FROM alpine\nARG V=1\nFROM busybox:${V:-none}\n")
    assert result.stages[1].base == "busybox:none"


def test_from_names_a_later_stage_is_an_image() -> None:
    result = plan("FROM later AS first\nFROM alpine AS later\n")
    assert result.stages[0].base_kind == "image"


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        (DIAMOND, {"target": "nope"}, "target stage 'nope' could not be found"),
        (
            "FROM a AS x\nCOPY --from=y /a /b\nFROM b AS y\nCOPY --from=x /a /b\n",
            {},
            "circular dependency between stages: 1 (y) -> 0 (x) -> 1 (y)",
        ),
        ("FROM a AS x\nCOPY --from=x /a /b\n", {}, "itself"),
        ("FROM a\nFROM b\nCOPY --from=7 /a /b\n", {}, "no stage with index 7"),
    ],
)
def test_stage_errors(text: str, kwargs: dict, message: str) -> None:
    with pytest.raises(UnknownStageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan(text, **kwargs)


def test_stage_error_carries_location() -> None:
    with pytest.raises(UnknownStageError) as info:
        plan("FROM a\nFROM b\nCOPY --from=7 /a /b\n")
    assert str(info.value).startswith("Dockerfile:3: ")


def test_blank_base_is_an_error() -> None:
    with pytest.raises(DockerfileError, match=r"base name \(\$\{EMPTY\}\) should not be blank"):
        plan("ARG EMPTY=\nFROM ${EMPTY}\n")


def test_expansion_error_in_from_names_the_line() -> None:
    with pytest.raises(DockerfileError) as info:
        plan("FROM alpine\nFROM ${X:?set X first}\n".replace("set X first", "set_X"))
    assert str(info.value) == 'Dockerfile:2: failed to process "${X:?set_X}": X: set_X'
