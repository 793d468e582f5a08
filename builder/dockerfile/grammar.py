"""Loads ``dockerfile_grammar.lark`` once and builds its LALR parsers.

This is the only module that knows where the grammar file lives: inside this package in an
installed wheel (pyproject's force-include puts it there), else at the top of a source
checkout. Parsers are built once per start rule and cached on disk by Lark (keyed by the
grammar's hash), so a CLI run does not pay for LALR table construction.
"""

from __future__ import annotations

import functools
from pathlib import Path

from lark import Lark

GRAMMAR_NAME = "dockerfile_grammar.lark"


def grammar_path() -> Path:
    """The grammar file: packaged copy first, then the source checkout's top level."""
    here = Path(__file__).resolve().parent
    for candidate in (here / GRAMMAR_NAME, here.parent.parent / GRAMMAR_NAME):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{GRAMMAR_NAME} not found beside {here} or at the project root")


@functools.cache
def grammar_text() -> str:
    return grammar_path().read_text(encoding="utf-8")


@functools.cache
def load_parser(start: str) -> Lark:
    """The LALR parser (contextual lexer) for one start rule of the grammar."""
    return Lark(
        grammar_text(),
        start=start,
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=False,
        cache=True,
    )
