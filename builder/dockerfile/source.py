"""The pre-pass: raw Dockerfile text to parser directives and one logical line per instruction.

What a context-free grammar cannot say lives here, mirroring BuildKit's line scanner
(``frontend/dockerfile/parser/parser.go``): the UTF-8 BOM, CRLF, the parser-directive block
(whose ``escape`` picks the continuation character), escape-aware line joining (comment and
blank lines inside a continued instruction are dropped; blank ones earn a warning), and
heredoc bodies, which run to their delimiter line. Everything else is the grammar's job.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
from dataclasses import dataclass, field
from typing import TypeVar

from builder.errors import DockerfileSyntaxError

BOM = "\ufeff"
DIRECTIVE_NAMES = ("syntax", "escape", "check")
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_SHEBANG = re.compile(r"^#!")
_HEREDOC_INSTRUCTIONS = frozenset({"RUN", "COPY", "ADD"})
_HEREDOC_WORD = re.compile(r"^(\d*)<<(-?)([^<]*)$")
_BARE_OPERATOR = re.compile(r"^(\d*)<<(-?)$")
_RAW_WORD = re.compile(r"""(?:[^\s"'\\]|\\.|\\$|"(?:[^"\\]|\\.|\\$)*"?|'[^']*'?)+""", re.S)
_LEADING_FLAGS = re.compile(r"""(?:--(?:[^\s"'\\]|\\.|"(?:[^"\\]|\\.)*"?|'[^']*'?)*\s*)*""")
_FIRST_WORD = re.compile(r"(\S+)\s*")

_Record = TypeVar("_Record", bound=type)


def fast_init(cls: _Record) -> _Record:
    """Give a frozen, slotted dataclass a faster ``__init__`` with the same signature.

    A frozen dataclass's own ``__init__`` sets each field through ``object.__setattr__``
    (looked up and called per field); this one calls each slot's descriptor directly, which
    halves the cost of building a node, and a parse builds several values per instruction.
    Everything else (freezing, equality, hashing, ``replace``) stays the dataclass's.
    Apply it above ``@dataclass(frozen=True, slots=True)``.
    """
    names: list[str] = []
    params: list[str] = []
    scope: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        slot = getattr(cls, f.name, None)
        if (
            not f.init
            or f.default_factory is not dataclasses.MISSING
            or not isinstance(slot, types.MemberDescriptorType)
        ):
            return cls  # not a shape this shortcut covers: keep the dataclass's __init__
        scope[f"_set_{f.name}"] = slot.__set__
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            scope[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        names.append(f.name)
    body = "".join(f"    _set_{n}(self, {n})\n" for n in names) or "    pass\n"
    exec(f"def __init__(self, {', '.join(params)}):\n{body}", scope)
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"  # type: ignore[attr-defined]
    cls.__init__ = init  # type: ignore[misc]
    return cls


@fast_init
@dataclass(frozen=True, slots=True)
class Span:
    """Where something is: file name, first and last line (1-based), column where known."""

    filename: str
    line: int
    end_line: int
    column: int | None = None

    def __str__(self) -> str:
        where = f"{self.filename}:{self.line}"
        return where if self.column is None else f"{where}:{self.column}"


@fast_init
@dataclass(frozen=True, slots=True)
class Heredoc:
    """One heredoc body: delimiter name, content as written, and its delimiter options."""

    name: str
    content: str
    expand: bool = True  # False when any part of the delimiter was quoted
    chomp: bool = False  # <<-EOF: leading tabs are stripped when the body is used
    fd: int = 0  # 3<<EOF

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "content": self.content,
            "expand": self.expand,
            "chomp": self.chomp,
        }


@fast_init
@dataclass(frozen=True, slots=True)
class Directive:
    """A parser directive (``# syntax=…``, ``# escape=…``, ``# check=…``) and its line."""

    name: str
    value: str
    line: int


@fast_init
@dataclass(frozen=True, slots=True)
class Warning:
    """A non-fatal finding (deprecated or suspicious syntax) with its location."""

    message: str
    span: Span
    rule: str = ""

    def __str__(self) -> str:
        return f"{self.span}: warning: {self.message}"


@fast_init
@dataclass(frozen=True, slots=True)
class LogicalLine:
    """One instruction after line joining: its text and where it came from."""

    text: str
    span: Span
    indent: int  # characters of leading whitespace stripped from the first physical line
    heredocs: tuple[Heredoc, ...] = ()


@fast_init
@dataclass(frozen=True, slots=True)
class Source:
    """The pre-pass result: directives, the escape character, logical lines, warnings."""

    filename: str
    escape: str
    directives: tuple[Directive, ...]
    lines: tuple[LogicalLine, ...]
    warnings: tuple[Warning, ...] = field(default=())


def raw_words(line: str) -> list[str]:
    """Shell-like words with quotes and backslashes kept (BuildKit's raw heredoc scan)."""
    return _RAW_WORD.findall(line)


def unquote(word: str) -> str:
    """Quote removal for a heredoc delimiter: '…' literal, "…" and bare text take ``\\`` escapes."""
    out: list[str] = []
    i, n = 0, len(word)
    quote = ""
    while i < n:
        c = word[i]
        if quote == "'":
            if c == "'":
                quote = ""
            else:
                out.append(c)
        elif c == "\\" and i + 1 < n:
            nxt = word[i + 1]
            if quote == '"' and nxt not in '"\\$`':
                out.append(c)
            out.append(nxt)
            i += 1
        elif c == "\\":
            pass
        elif quote == '"' and c == '"':
            quote = ""
        elif not quote and c in "'\"":
            quote = c
        else:
            out.append(c)
        i += 1
    return "".join(out)


def parse_heredoc_word(word: str) -> Heredoc | None:
    """The heredoc a raw word introduces (``<<EOF``, ``<<-"EOF"``, ``3<<EOF``), or None."""
    match = _HEREDOC_WORD.match(word)
    if not match:
        return None
    return _heredoc(*match.groups())


def _heredoc(fd: str, dash: str, rest: str) -> Heredoc | None:
    if not rest:
        return None
    if _open_quote(rest):
        delimiter = f"<<{dash}{rest}"
        raise ValueError(f"unterminated quote in heredoc delimiter {delimiter!r}")
    words = raw_words(rest)
    if len(words) != 1:
        return None
    rest = words[0]
    name = unquote(rest)
    if not name:
        return None
    # A delimiter with any quoted part disables expansion (BuildKit compares quote counts of
    # the word with and without quote removal).
    quoted = (name.count("'") + name.count('"')) != (rest.count("'") + rest.count('"'))
    return Heredoc(name=name, content="", expand=not quoted, chomp=dash == "-", fd=int(fd or 0))


def _open_quote(word: str) -> bool:
    """Whether a raw word ends inside a quote (BuildKit's lexer rejects such a delimiter)."""
    quote = ""
    escaped = False
    for c in word:
        if escaped:
            escaped = False
        elif quote == "'":
            quote = "" if c == "'" else quote
        elif c == "\\":
            escaped = True
        elif quote == '"':
            quote = "" if c == '"' else quote
        elif c in "'\"":
            quote = c
    return bool(quote)


def _is_json_array(rest: str) -> bool:
    rest = rest.lstrip()
    if not rest.startswith("["):
        return False
    try:
        value, _ = json.JSONDecoder().raw_decode(rest)
    except ValueError:
        return False
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _heredoc_markers(line: str) -> list[Heredoc]:
    """Heredocs a logical line opens: only RUN/COPY/ADD (also as ONBUILD triggers), not JSON."""
    match = _FIRST_WORD.match(line)
    if not match:
        return []
    keyword = match.group(1).upper()
    rest = line[match.end() :]
    if keyword == "ONBUILD":
        rest = rest[_LEADING_FLAGS.match(rest).end() :]  # type: ignore[union-attr]
        match = _FIRST_WORD.match(rest)
        if not match:
            return []
        keyword = match.group(1).upper()
        rest = rest[match.end() :]
    if keyword not in _HEREDOC_INSTRUCTIONS:
        return []
    if _is_json_array(rest[_LEADING_FLAGS.match(rest).end() :]):  # type: ignore[union-attr]
        return []
    words = raw_words(line)
    found: list[Heredoc] = []
    i = 0
    while i < len(words):
        word = words[i]
        # BuildKit also takes `<<  EOF` (blanks between the operator and the delimiter)
        operator = _BARE_OPERATOR.match(word)
        if operator and i + 1 < len(words):
            i += 1
            heredoc = _heredoc(operator.group(1), operator.group(2), words[i])
        else:
            heredoc = parse_heredoc_word(word)
        if heredoc is not None:
            found.append(heredoc)
        i += 1
    return found


class _DirectiveBlock:
    """BuildKit's DirectiveParser: directives only at the top, each name once, known names."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.done = False
        self.found: list[Directive] = []

    def feed(self, line: str, lineno: int) -> bool:
        if self.done:
            return False
        if lineno == 1 and _SHEBANG.match(line):
            return False
        match = _DIRECTIVE.match(line)
        if not match:
            self.done = True
            return False
        name = match.group(1).lower()
        if name not in DIRECTIVE_NAMES:
            self.done = True
            return False
        if any(d.name == name for d in self.found):
            raise DockerfileSyntaxError(
                f"only one {name} parser directive can be used",
                filename=self.filename,
                line=lineno,
            )
        value = match.group(2)
        if name == "escape" and value not in ("\\", "`"):
            raise DockerfileSyntaxError(
                f"invalid escape token '{value}' does not match ` or \\",
                filename=self.filename,
                line=lineno,
            )
        self.found.append(Directive(name, value, lineno))
        return True

    @property
    def escape(self) -> str:
        for d in self.found:
            if d.name == "escape":
                return d.value
        return "\\"


class SplitLines:
    """The pre-pass result as parallel lists (the n-th text, span, indent and heredocs are one
    logical line): what ``parse()`` consumes, without a LogicalLine object per instruction.
    :func:`split_source` wraps it as a :class:`Source`."""

    __slots__ = (
        "directives",
        "escape",
        "filename",
        "heredocs",
        "indents",
        "spans",
        "texts",
        "warnings",
    )

    def __init__(
        self,
        filename: str,
        escape: str,
        directives: tuple[Directive, ...],
        texts: list[str],
        spans: list[Span],
        indents: list[int],
        heredocs: list[tuple[Heredoc, ...]],
        warnings: tuple[Warning, ...],
    ) -> None:
        self.filename = filename
        self.escape = escape
        self.directives = directives
        self.texts = texts
        self.spans = spans
        self.indents = indents
        self.heredocs = heredocs
        self.warnings = warnings


def split_source(text: str, filename: str = "Dockerfile") -> Source:
    """Split a Dockerfile into directives and logical lines (see the module docstring)."""
    split = split_lines(text, filename)
    lines = tuple(map(LogicalLine, split.texts, split.spans, split.indents, split.heredocs))
    return Source(split.filename, split.escape, split.directives, lines, split.warnings)


def split_lines(text: str, filename: str = "Dockerfile") -> SplitLines:
    """:func:`split_source` as parallel lists (see :class:`SplitLines`)."""
    if text.startswith(BOM):
        text = text[1:]
    physical = text.split("\n")
    if physical and physical[-1] == "":
        physical.pop()
    # Go's bufio scanner plus trimNewline: a line's trailing "\r" characters are not content.
    lines = [p.rstrip("\r") for p in physical] if "\r" in text else physical
    block = _DirectiveBlock(filename)
    escape = "\\"
    texts: list[str] = []
    spans: list[Span] = []
    indents: list[int] = []
    all_heredocs: list[tuple[Heredoc, ...]] = []
    no_heredocs: tuple[Heredoc, ...] = ()
    warnings: list[Warning] = []
    n = len(lines)
    i = 0
    while i < n:
        first = lines[i]
        i += 1
        token = first.lstrip()
        if not token:
            block.done = True
            continue
        if not block.done and block.feed(token, i):
            if block.escape != escape:
                escape = block.escape
            continue
        if token[0] == "#":
            continue
        start = i
        double = escape + escape
        indent = len(first) - len(token)
        # Does the line continue? BuildKit's rule (its regex ``([^E])E[ \t]*$|^E[ \t]*$`` for
        # escape E): the escape character, not itself escaped, followed only by blanks; or
        # a line of just the escape. Written out inline: this runs once per physical line.
        body = None
        last = token[-1]
        if last == escape or last == " " or last == "\t":
            stripped = token.rstrip(" \t")
            if stripped[-1] == escape and stripped[-2:] != double:
                body = stripped[:-1]
        if body is None:
            joined = token
        else:
            parts = [body]
            empty_continuation = False
            while i < n:
                line = lines[i]
                i += 1
                # The common line first: one ending in the escape cannot be blank, and without
                # a "#" it cannot be a comment, so no stripped copy is needed to know.
                if line and line[-1] == escape and "#" not in line:
                    if line[-2:] == double:
                        parts.append(line)
                        break
                    parts.append(line[:-1])
                    continue
                content = line.lstrip()
                if not content:
                    empty_continuation = True
                    continue
                if content[0] == "#":
                    continue
                if line[-1] == escape:  # no trailing blanks: the common case, no copy
                    if line[-2:] == double:
                        parts.append(line)
                        break
                    parts.append(line[:-1])
                    continue
                stripped = line.rstrip(" \t")
                if stripped[-1] != escape or stripped[-2:] == double:
                    parts.append(line)  # the instruction's last line
                    break
                parts.append(stripped[:-1])
            joined = "".join(parts)
            if empty_continuation:
                warnings.append(
                    Warning(
                        f"empty continuation line found in: {joined.strip()} (empty "
                        "continuation lines will become errors in a future release)",
                        Span(filename, start, i),
                        "NoEmptyContinuation",
                    )
                )
        heredocs = no_heredocs
        if "<<" in joined:
            try:
                markers = _heredoc_markers(joined)
            except ValueError as e:
                raise DockerfileSyntaxError(str(e), filename=filename, line=start) from None
            bodies: list[Heredoc] = []
            for marker in markers:
                content_lines: list[str] = []
                terminated = False
                while i < n:
                    line = lines[i]
                    i += 1
                    candidate = line.lstrip("\t") if marker.chomp else line
                    if candidate == marker.name:
                        terminated = True
                        break
                    content_lines.append(physical[i - 1] + "\n")
                if not terminated:
                    raise DockerfileSyntaxError(
                        f"unterminated heredoc {marker.name!r} (no line {marker.name!r} "
                        "before the end of the file)",
                        filename=filename,
                        line=start,
                    )
                bodies.append(
                    Heredoc(
                        marker.name, "".join(content_lines), marker.expand, marker.chomp, marker.fd
                    )
                )
            heredocs = tuple(bodies)
        texts.append(joined.rstrip())
        spans.append(Span(filename, start, i))
        indents.append(indent)
        all_heredocs.append(heredocs)
    if not texts:
        raise DockerfileSyntaxError("file with no instructions", filename=filename, line=max(n, 1))
    return SplitLines(
        filename, escape, tuple(block.found), texts, spans, indents, all_heredocs, tuple(warnings)
    )
