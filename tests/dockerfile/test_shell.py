"""builder.dockerfile.shell: the project's own expansion table, BuildKit's shell tables, fuzzing.

The table format is described at the top of fixtures/shell/expand.tsv.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.dockerfile import shell
from builder.dockerfile.shell import (
    Expansion,
    expand_heredoc,
    expand_with_matches,
    expand_word,
    expand_words,
)
from builder.errors import DockerfileError, ExpansionError
from tests.conftest import FIXTURES, NO_CORPUS_REASON, SHARED_CORPUS

TABLE = FIXTURES / "shell" / "expand.tsv"
SHELL_CORPUS = SHARED_CORPUS / "shell"

MODES = {
    "word": "\\",
    "words": "\\",
    "matches": "\\",
    "word-bt": "`",
    "words-bt": "`",
    "heredoc": "\\",
}


@dataclass(frozen=True)
class Row:
    line: int
    mode: str
    text: str
    env: dict[str, str]
    expected: Any  # str, list[str], or ("error", substring)
    matched: frozenset[str] = frozenset()
    unmatched: frozenset[str] = frozenset()


def _field(raw: str) -> Any:
    return json.loads(raw[5:]) if raw.startswith("json:") else raw


def _env(raw: str) -> dict[str, str]:
    if raw == "-":
        return {}
    if raw.startswith("json:"):
        value = json.loads(raw[5:])
        assert isinstance(value, dict)
        return value
    env = {}
    for item in raw.split(";"):
        name, sep, value = item.partition("=")
        assert sep, f"environment item {item!r} has no '='"
        env[name] = value
    return env


def _names(raw: str, label: str) -> frozenset[str]:
    assert raw.startswith(label + "="), f"expected {label}=..., got {raw!r}"
    names = raw[len(label) + 1 :]
    return frozenset(names.split(",")) if names else frozenset()


def _table_rows() -> Iterator[Row]:
    for number, line in enumerate(TABLE.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(" | ")
        mode = fields[0].strip()
        assert mode in MODES, f"{TABLE.name}:{number}: unknown mode {mode!r}"
        want = 6 if mode == "matches" else 4
        assert len(fields) == want, f"{TABLE.name}:{number}: {len(fields)} fields, want {want}"
        text, env, expected = _field(fields[1]), _env(fields[2].strip()), fields[3].strip()
        if expected.startswith("error:"):
            parsed: Any = ("error", expected[6:].strip())
        elif mode.startswith("words"):
            parsed = _field(expected) if expected.startswith("json:") else expected.split(" ")
        else:
            parsed = _field(expected)
        row = Row(number, mode, text, env, parsed)
        if mode == "matches":
            row = Row(
                number,
                mode,
                text,
                env,
                parsed,
                _names(fields[4].strip(), "matched"),
                _names(fields[5].strip(), "unmatched"),
            )
        yield row


ROWS = list(_table_rows())


def _run(mode: str, text: str, env: dict[str, str]) -> Any:
    escape = MODES[mode]
    if mode.startswith("words"):
        return expand_words(text, env, escape=escape)
    if mode == "matches":
        return expand_with_matches(text, env, escape=escape)
    if mode == "heredoc":
        return expand_heredoc(text, env).result
    return expand_word(text, env, escape=escape)


def test_table_is_large_and_covers_every_mode() -> None:
    assert len(ROWS) >= 120
    assert {row.mode for row in ROWS} == set(MODES)


@pytest.mark.parametrize("row", ROWS, ids=[f"L{r.line}:{r.mode}:{r.text}" for r in ROWS])
def test_table(row: Row) -> None:
    if isinstance(row.expected, tuple):
        with pytest.raises(ExpansionError) as caught:
            _run(row.mode, row.text, row.env)
        assert row.expected[1] in caught.value.message
        return
    got = _run(row.mode, row.text, row.env)
    if row.mode == "matches":
        assert got == Expansion(row.expected, row.matched, row.unmatched)
    else:
        assert got == row.expected


def test_error_is_a_dockerfile_error_with_buildkit_message() -> None:
    with pytest.raises(ExpansionError) as caught:
        expand_word("x${a:?must be set}", {})
    assert isinstance(caught.value, DockerfileError)
    assert caught.value.message == 'failed to process "x${a:?must be set}": a: must be set'
    assert caught.value.line is None


def test_bad_escape_argument_is_rejected() -> None:
    with pytest.raises(ValueError):
        expand_word("a", {}, escape="")


# --- BuildKit's own tables (frontend/dockerfile/shell/lex_test.go), read in place ----------

# Cases where pybuild deliberately differs from BuildKit, keyed by (file, input): none today.
UPSTREAM_DEPARTURES: dict[tuple[str, str], str] = {}


def _upstream(name: str) -> list[Any]:
    if not SHELL_CORPUS.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=NO_CORPUS_REASON), id="absent")]
    data = json.loads((SHELL_CORPUS / name).read_text(encoding="utf-8"))
    params: list[Any] = []
    for case in data["cases"]:
        marks = []
        if case.get("platform") == "windows":
            marks.append(pytest.mark.skip(reason="Windows-only case (case-insensitive names)"))
        reason = UPSTREAM_DEPARTURES.get((name, case["input"]))
        if reason:
            marks.append(pytest.mark.skip(reason=f"deliberate departure: {reason}"))
        params.append(
            pytest.param(
                {**case, "envs": case.get("envs", data.get("envs"))},
                marks=marks,
                id=f"{case.get('line', len(params))}:{case['input']}",
            )
        )
    return params


@pytest.mark.parametrize("case", _upstream("envvar_cases.json"))
def test_buildkit_envvar_table(case: dict[str, Any]) -> None:
    if case.get("error"):
        with pytest.raises(ExpansionError):
            expand_word(case["input"], case["envs"])
    else:
        assert expand_word(case["input"], case["envs"]) == case["expected"]


@pytest.mark.parametrize("case", _upstream("words_cases.json"))
def test_buildkit_words_table(case: dict[str, Any]) -> None:
    if case.get("error"):
        with pytest.raises(ExpansionError):
            expand_words(case["input"], case["envs"])
    else:
        assert expand_words(case["input"], case["envs"]) == case["expected"]


@pytest.mark.parametrize("case", _upstream("process_with_matches.json"))
def test_buildkit_matches_table(case: dict[str, Any]) -> None:
    if case.get("error"):
        with pytest.raises(ExpansionError):
            expand_with_matches(case["input"], case["envs"])
    else:
        got = expand_with_matches(case["input"], case["envs"])
        assert got.result == case["expected"]
        assert got.matched == frozenset(case["matched"])
        assert got.unmatched == frozenset(case["unmatched"])


# --- random input: only ExpansionError, and consistent answers ------------------------------

_ALPHABET = st.sampled_from(list("$${}{}:-+?#%/\\`'\"*? \tab_1@.=xé한\n]["))
_TEXT = st.text(_ALPHABET, max_size=40) | st.text(max_size=20)
_NAMES = st.sampled_from(["a", "b", "_", "1", "@", "é"])
_ENV = st.dictionaries(_NAMES, st.text(_ALPHABET, max_size=6), max_size=4)


@settings(max_examples=300, deadline=None)
@given(text=_TEXT, env=_ENV, escape=st.sampled_from(["\\", "`"]))
def test_random_text_raises_only_expansion_error(
    text: str, env: dict[str, str], escape: str
) -> None:
    try:
        body = expand_heredoc(text, env)
        assert body.matched <= env.keys() and not body.unmatched & env.keys()
    except ExpansionError:
        pass
    try:
        word = expand_word(text, env, escape=escape)
    except ExpansionError:
        with pytest.raises(ExpansionError):
            expand_words(text, env, escape=escape)
        return
    words = expand_words(text, env, escape=escape)
    found = expand_with_matches(text, env, escape=escape)
    assert found.result == word
    assert all(words), "ProcessWords never yields an empty word"
    assert found.matched <= env.keys()
    assert not found.unmatched & env.keys()
    # An empty quoted string in front changes nothing, so the no-special-characters fast
    # path and the lexer must agree.
    if not text.startswith("\ufeff"):
        assert expand_word("''" + text, env, escape=escape) == word
        assert expand_words("''" + text, env, escape=escape) == words


# --- the linear matcher for many-star patterns agrees with the regex translation -------------

_PATTERN = st.text(st.sampled_from(list("ab?*\n")), max_size=8).map(
    lambda p: p if p.count("*") >= 2 else "*" + p + "*"
)
_VALUE = st.text(st.sampled_from(list("ab\n")), max_size=12)


@settings(max_examples=300, deadline=None)
@given(pattern=_PATTERN, value=_VALUE)
def test_glob_matcher_agrees_with_go_style_regex(pattern: str, value: str) -> None:
    tokens = shell._pattern_tokens(pattern)
    for greedy in (False, True):
        regex = shell._tokens_regex(tokens, greedy=greedy, anchored=True)
        found = regex.match(value)
        assert shell._prefix_end(pattern, value, greedy) == (found.end() if found else None)
    finder = shell._Finder(pattern)
    assert finder.glob is not None, "patterns with two or more stars use the linear matcher"
    search = shell._tokens_regex(tokens, greedy=True, anchored=False)
    for pos in range(len(value) + 1):
        hit = search.search(value, pos)
        assert finder.find(value, pos) == (hit.span() if hit else None)


def test_many_star_pattern_on_long_value_answers() -> None:
    # A backtracking regex needs ~C(400, 12) steps here; the linear matcher needs 400.
    env = {"a": "a" * 400}
    pattern = "*a" * 12 + "b"
    assert expand_word("${a#" + pattern + "}", env) == env["a"]
    assert expand_word("${a%%" + pattern + "}", env) == env["a"]
    assert expand_word("${a//" + pattern + "/x}", env) == env["a"]
    assert expand_word("${a##" + "*a" * 12 + "}", env) == ""


def test_nesting_beyond_the_stack_is_an_expansion_error() -> None:
    deep = "${a:-" * 5000 + "x" + "}" * 5000
    with pytest.raises(ExpansionError, match="nested too deeply"):
        expand_word(deep, {})
    assert expand_word("${a:-" * 50 + "x" + "}" * 50, {}) == "x"
