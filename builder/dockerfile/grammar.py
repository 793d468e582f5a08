"""Loads ``dockerfile_grammar.lark`` once, builds its LALR parsers, and translates Lark's errors.

This is the only module that knows where the grammar file lives: inside this package in an
installed wheel (pyproject's force-include puts it there), else at the top of a source
checkout. Parsers are built once per (start rule, escape character) and cached on disk by
Lark (keyed by the grammar's hash, in the temp directory, so the working directory does not
matter), so a CLI run does not pay for LALR table construction.

The escape character chosen by a ``# escape=`` directive changes how ARG/ENV/LABEL words end,
which a fixed grammar cannot say; the grammar writes it as ``%ESC%`` and each escape character
gets its own parser with the placeholder filled in.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from lark import Lark, Tree
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedInput, UnexpectedToken

GRAMMAR_NAME = "dockerfile_grammar.lark"
ESCAPE_PLACEHOLDER = "%ESC%"
_REGEX_ESCAPE = {"\\": "\\\\", "`": "`"}


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
def load_parser(start: str, escape: str = "\\") -> Lark:
    """The LALR parser (contextual lexer) for one start rule of the grammar.

    ``escape`` (backslash or backtick) fills the grammar's ``%ESC%`` placeholder.
    """
    text = grammar_text().replace(ESCAPE_PLACEHOLDER, _REGEX_ESCAPE[escape])
    return Lark(
        text,
        start=start,
        parser="lalr",
        lexer="contextual",
        propagate_positions=False,
        maybe_placeholders=False,
        cache=True,
    )


class GrammarError(Exception):
    """A Lark parse failure reduced to where it happened (Lark line, column) and what was seen.

    ``transform`` turns it into a located DockerfileSyntaxError; keeping Lark's exception types
    inside this module means no Lark traceback can reach a user.
    """

    def __init__(self, line: int, column: int, seen: str, expected: frozenset[str]) -> None:
        super().__init__(f"line {line}:{column}: unexpected {seen!r}")
        self.line = line
        self.column = column
        self.seen = seen
        self.expected = expected


_WORD_AT = re.compile(r"[^\S\n]*(\S*)")


def parse_tree(text: str, escape: str) -> Tree:
    """Parse pre-processed Dockerfile text (see source.py); raise GrammarError on failure."""
    try:
        return load_parser("dockerfile", escape).parse(text)
    except UnexpectedInput as e:
        line = int(getattr(e, "line", 0) or 0)
        column = int(getattr(e, "column", 0) or 0)
        if isinstance(e, UnexpectedCharacters):
            match = _WORD_AT.match(text, e.pos_in_stream or 0)
            seen = match.group(1) if match else ""
            expected = frozenset(e.allowed or ())
        elif isinstance(e, UnexpectedToken):
            token = e.token
            seen = "end of line" if token.type in ("_NL", "$END") else str(token).strip()
            # tokens carry their leading blanks: point at the word itself
            column += len(str(token)) - len(str(token).lstrip())
            if token.type == "$END" or line <= 0:
                line = max(text.count("\n"), 1)
            expected = frozenset(e.expected or ())
        else:
            seen, expected = "end of input", frozenset()
        raise GrammarError(line, column, seen, expected) from None
    except LarkError as e:  # pragma: no cover - defensive: Lark raising something else
        raise GrammarError(0, 0, str(e), frozenset()) from None
