"""The grammar file and the LALR driver: pybuild's driver must build exactly the tree Lark's
own parser builds from the same grammar, and the grammar must load for both escapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lark import Token, Tree
from lark.exceptions import UnexpectedInput

from builder.dockerfile.grammar import (
    Branch,
    GrammarError,
    Tok,
    grammar_path,
    load_parser,
    parse_tree,
)
from builder.dockerfile.source import split_source
from builder.errors import DockerfileError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CASES = sorted(
    list((FIXTURES / "dockerfile").glob("*/Dockerfile"))
    + list((FIXTURES / "dockerfile-errors").glob("*/Dockerfile"))
)


def _lark_shape(node: Any) -> Any:
    if isinstance(node, Tree):
        return (str(node.data), [_lark_shape(c) for c in node.children])
    assert isinstance(node, Token)
    return (node.type, str(node), node.line)


def _our_shape(node: Any) -> Any:
    if isinstance(node, Branch):
        return (node.data, [_our_shape(c) for c in node.children])
    assert isinstance(node, Tok)
    return (node.type, node.value, node.line)


def _grammar_input(text: str) -> tuple[str, str] | None:
    try:
        source = split_source(text)
    except DockerfileError:
        return None
    lines = [f"# {d.name}={d.value}" for d in source.directives] + [
        line.text for line in source.lines
    ]
    return "\n".join(lines) + "\n", source.escape


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.parent.name)
def test_driver_matches_lark(path: Path) -> None:
    prepared = _grammar_input(path.read_text(encoding="utf-8"))
    if prepared is None:
        pytest.skip("the pre-pass rejects this file")
    text, escape = prepared
    try:
        expected = _lark_shape(load_parser("dockerfile", escape).parse(text))
    except UnexpectedInput as e:
        with pytest.raises(GrammarError) as info:
            parse_tree(text, escape)
        assert info.value.line == e.line
        return
    assert _our_shape(parse_tree(text, escape)) == expected


def test_grammar_file_has_both_sections() -> None:
    text = grammar_path().read_text(encoding="utf-8")
    assert "// ==== Dockerfile ====" in text and "// ==== end Dockerfile ====" in text
    assert "// ==== .dockerignore patterns ====" in text
    for escape in ("\\", "`"):
        load_parser("dockerfile", escape)
    load_parser("ignore_pattern")


def test_escape_changes_word_boundaries() -> None:
    backslash = parse_tree("FROM a\nARG x=1\\ 2\n", "\\")
    backtick = parse_tree("FROM a\nARG x=1` 2\n", "`")
    for tree in (backslash, backtick):
        stage = tree.children[-1]
        assert isinstance(stage, Branch)
        arg = stage.children[-1]
        assert isinstance(arg, Branch) and arg.data == "arg"
        assert len(arg.children) == 2  # ARG keyword and one word


SHARED = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "dockerfile" / "realworld"


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"upstream corpus not present at {SHARED}")
def test_driver_matches_lark_on_realworld_corpus() -> None:
    checked = 0
    for path in sorted(p for p in SHARED.rglob("*") if p.is_file() and p.suffix != ".json"):
        prepared = _grammar_input(path.read_text(encoding="utf-8", errors="replace"))
        assert prepared is not None, path
        text, escape = prepared
        lark_tree = _lark_shape(load_parser("dockerfile", escape).parse(text))
        assert _our_shape(parse_tree(text, escape)) == lark_tree, path
        checked += 1
    assert checked == 639


def test_driver_tables_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tables are written once, read back equal, and a damaged file is rebuilt."""
    import tempfile

    from builder.dockerfile import grammar

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    grammar.fast_parser.cache_clear()
    try:
        built = grammar.fast_parser("\\")
        files = list(tmp_path.glob(".pybuild-dockerfile-*.pickle"))
        assert len(files) == 1
        grammar.fast_parser.cache_clear()
        loaded = grammar.fast_parser("\\")
        assert loaded.actions == built.actions and loaded.accepts == built.accepts
        files[0].write_bytes(b"not a pickle")
        grammar.fast_parser.cache_clear()
        rebuilt = grammar.fast_parser("\\")
        assert rebuilt.actions == built.actions
        text = "FROM alpine\nRUN echo hi\n"
        assert _our_shape(rebuilt.parse(text)) == _our_shape(built.parse(text))
    finally:
        grammar.fast_parser.cache_clear()
