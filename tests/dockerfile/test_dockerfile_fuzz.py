"""Random and mutated Dockerfiles: the only outcomes are a result or a clean DockerfileError.

Anything else (a Lark exception, IndexError, a traceback) would reach users as a crash.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from builder.dockerfile import parse
from builder.errors import BuildError
from builder.plan import automatic_platform_args, build_plan

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SEEDS = sorted(
    p.read_text(encoding="utf-8")
    for p in list((FIXTURES / "dockerfile").glob("*/Dockerfile"))
    + list((FIXTURES / "dockerfile-errors").glob("*/Dockerfile"))
)
PLATFORMS = automatic_platform_args("linux/amd64", "linux/amd64")
FRAGMENTS = [
    "FROM ",
    "RUN ",
    "CMD ",
    "COPY ",
    "ADD ",
    "ENV ",
    "ARG ",
    "LABEL ",
    "ONBUILD ",
    "HEALTHCHECK ",
    "SHELL ",
    "EXPOSE ",
    "VOLUME ",
    "USER ",
    "WORKDIR ",
    "STOPSIGNAL ",
    "MAINTAINER ",
    "AS ",
    "as ",
    "--mount=",
    "--from=",
    "--platform=",
    "type=cache,",
    "target=/x",
    "--",
    "-",
    "<<",
    "<<-",
    "EOF",
    "'",
    '"',
    "\\",
    "`",
    "[",
    "]",
    ",",
    "=",
    "$",
    "${",
    "}",
    "#",
    "# escape=`",
    "# syntax=x",
    "\n",
    "\r\n",
    " ",
    "\t",
    "\ufeff",
    "NONE",
    "scratch",
    "alpine",
    "a",
    "1",
    "é",
    "\x00",
    "{",
    ":",
]


def _check(text: str) -> None:
    try:
        dockerfile = parse(text)
        build_plan(dockerfile, platform_args=PLATFORMS)
        parse(text, syntax_only=True)
    except BuildError as e:
        assert str(e)  # printable, with a location prefix
        assert ":" in str(e)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join))
def test_random_fragments(text: str) -> None:
    _check(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text(text: str) -> None:
    _check(text)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(SEEDS),
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=10_000),
            st.integers(0, 3),
            st.sampled_from(FRAGMENTS),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_fixtures(seed: str, edits: list[tuple[int, int, str]]) -> None:
    text = seed
    for position, delete, insert in edits:
        at = position % (len(text) + 1)
        text = text[:at] + insert + text[at + delete :]
    _check(text)
