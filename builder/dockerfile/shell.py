"""Dockerfile word expansion: quote removal, ``$var`` / ``${var…}`` substitution, word splitting.

BuildKit does not run a shell to expand ADD/COPY/ENV/FROM/LABEL/... words; it runs its own small
lexer (moby/buildkit ``frontend/dockerfile/shell/lex.go``).  Users' Dockerfiles depend on its
exact quirks, so this module reproduces that lexer's behaviour rather than POSIX ``sh``:

* single quotes are literal; inside double quotes the escape character escapes only ``"``,
  ``$`` and itself (anything else keeps the escape character); outside quotes it escapes any
  character and is dropped, and a trailing escape character is dropped;
* ``$`` not followed by a name, a digit run or a special parameter (``@ * # ? - $ ! 0``) is a
  literal ``$``; positional and special parameters are looked up like any name (so unset);
* ``${v-w} ${v:-w} ${v+w} ${v:+w} ${v?m} ${v:?m}`` with the usual set-versus-empty rules;
  ``${v#p} ${v##p} ${v%p} ${v%%p}`` and ``${v/p/r} ${v//p/r}`` with patterns that know ``*``,
  ``?`` and backslash escapes only (``[`` is literal, as in BuildKit; quotes inside a pattern
  are removed but do not make ``*`` literal); ``${v:#p}``-style and every other modifier is an
  error;
* ``${v//p/r}`` substitutes like Go's ``Regexp.ReplaceAllString`` (so ``$0`` in ``r`` is the
  match and ``$$`` a dollar), ``${v/p/r}`` inserts ``r`` literally;
* word splitting (ProcessWords) splits on unquoted, unescaped whitespace (Go's
  ``unicode.IsSpace``), including whitespace that came out of an unquoted expansion, even when
  it was quoted inside the ``${...}`` (``${a:-"x y"}`` is two words);
* a byte-order mark at the very start of a word or pattern is dropped (Go's text/scanner).

Patterns with two or more ``*`` run on a linear-time matcher instead of Python's backtracking
regex, which would take time polynomial in the value's length of the star count's degree where
Go's RE2 stays linear.

Deliberate departures, all in error cases: ``${name`` cut off right after the name reports
``missing '}'`` (BuildKit says ``unsupported modifier (\\ufffd)``), ``\\`` at the end of a
pattern reports ``invalid escape '\\'``, nesting too deep for Python's stack is an
ExpansionError, and ProcessWords keeps the text before a ``${v:-w}``-style expansion (BuildKit
since its shared-buffer rewrite drops it; its older lexer, like this one, keeps it).

COPY/ADD heredoc bodies go through the same lexer with quotes as plain characters
(:func:`expand_heredoc`, BuildKit's ExpandRaw).

Errors are :class:`builder.errors.ExpansionError` with BuildKit's message, e.g.
``failed to process "${a:?msg}": a: msg``; they carry no location (the caller adds it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from builder.errors import ExpansionError

__all__ = ["Expansion", "expand_heredoc", "expand_with_matches", "expand_word", "expand_words"]

# Go's unicode.IsSpace (Python's str.isspace also accepts U+001C..U+001F, which Go does not).
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_SPACE_SPLIT = re.compile(f"[{_GO_SPACE}]").split
_NON_SPACE_RUNS = re.compile(f"[^{_GO_SPACE}]+").findall
_SPECIAL_PARAMS = frozenset("@*#?-$!0")
_BOM = "\ufeff"
_MISSING_BRACE = "syntax error: missing '}'"


@dataclass(frozen=True, slots=True)
class Expansion:
    """An expanded word and the variable names it looked up (for cache keys and lint)."""

    result: str
    matched: frozenset[str]
    unmatched: frozenset[str]


class _LexError(Exception):
    """An expansion failure before the ``failed to process "..."`` prefix is added."""


def expand_word(word: str, env: Mapping[str, str], *, escape: str = "\\") -> str:
    """Return ``word`` with quotes removed and variables expanded, not split (ProcessWord)."""
    if _is_plain(word, escape):
        return word
    return _Lexer(word, env, escape).run()[0]


def expand_words(text: str, env: Mapping[str, str], *, escape: str = "\\") -> list[str]:
    """Return ``text`` expanded and split on unquoted whitespace (ProcessWords)."""
    if _is_plain(text, escape):
        return _NON_SPACE_RUNS(text)
    return _Lexer(text, env, escape, collect_words=True).run()[1]


def expand_with_matches(word: str, env: Mapping[str, str], *, escape: str = "\\") -> Expansion:
    """Expand ``word`` like :func:`expand_word`; also report which names were set and unset."""
    if _is_plain(word, escape):
        return Expansion(word, frozenset(), frozenset())
    lexer = _Lexer(word, env, escape)
    result = lexer.run()[0]
    return Expansion(result, frozenset(lexer.matched), frozenset(lexer.unmatched))


def expand_heredoc(body: str, env: Mapping[str, str]) -> Expansion:
    """Expand a COPY/ADD heredoc body whose delimiter is unquoted (BuildKit's ExpandRaw).

    ``$`` expansions and backslash escapes work as in a word (``\\$`` is ``$``, a lone
    ``\\`` before a newline disappears), but quotes are ordinary characters.  The escape
    character is always the backslash, whatever the ``# escape=`` directive says, as in
    BuildKit.  RUN heredocs are not expanded here: their shell does that.
    """
    if _is_plain(body, "\\", quotes=False):
        return Expansion(body, frozenset(), frozenset())
    lexer = _Lexer(body, env, "\\", process_quotes=False)
    result = lexer.run()[0]
    return Expansion(result, frozenset(lexer.matched), frozenset(lexer.unmatched))


@lru_cache(maxsize=8)
def _plain_finder(specials: str) -> re.Pattern[str]:
    return re.compile("[" + re.escape(specials) + "]|^" + _BOM)


def _is_plain(word: str, escape: str, *, quotes: bool = True) -> bool:
    """True when the lexer would return ``word`` unchanged (the common case: nothing to do)."""
    if len(escape) != 1:
        raise ValueError(f"escape must be one character, not {escape!r}")
    return _plain_finder(("$'\"" if quotes else "$") + escape).search(word) is None


@lru_cache(maxsize=32)
def _literal_run(stops: str) -> re.Pattern[str]:
    """A run of characters none of which is in ``stops``."""
    return re.compile("[^" + "".join(re.escape(c) for c in stops) + "]*")


class _Words:
    """ProcessWords' accumulator: unquoted whitespace ends a word, empty words are dropped."""

    __slots__ = ("buf", "words")

    def __init__(self) -> None:
        self.words: list[str] = []
        self.buf: list[str] = []

    def add_split(self, text: str) -> None:
        parts = _SPACE_SPLIT(text)
        self.buf.append(parts[0])
        for part in parts[1:]:
            self.flush()
            self.buf.append(part)

    def add_raw(self, text: str) -> None:
        self.buf.append(text)

    def flush(self) -> None:
        word = "".join(self.buf)
        if word:
            self.words.append(word)
        self.buf.clear()

    def result(self) -> list[str]:
        self.flush()
        return self.words


class _Lexer:
    """One expansion of one word; a cursor over the text, like lex.go's shellWord."""

    __slots__ = (
        "collect_words",
        "env",
        "escape",
        "matched",
        "n",
        "pos",
        "quotes",
        "source",
        "unmatched",
    )

    def __init__(
        self,
        source: str,
        env: Mapping[str, str],
        escape: str,
        *,
        collect_words: bool = False,
        process_quotes: bool = True,
    ) -> None:
        self.source = source
        self.n = len(source)
        # Go's text/scanner skips a byte-order mark at the very start of its input.
        self.pos = 1 if source.startswith(_BOM) else 0
        self.env = env
        self.escape = escape
        self.collect_words = collect_words
        # Quote characters that open a quoted string; none for heredoc bodies.
        self.quotes = "'\"" if process_quotes else ""
        self.matched: set[str] = set()
        self.unmatched: set[str] = set()

    def run(self) -> tuple[str, list[str]]:
        try:
            return self.process_until(None, raw_escapes=False, words=self.collect_words)
        except _LexError as e:
            raise ExpansionError(f"failed to process {_go_quote(self.source)}: {e}") from None
        except RecursionError:
            raise ExpansionError(
                f"failed to process {_go_quote(self.source)}: substitutions nested too deeply"
            ) from None

    def lookup(self, name: str) -> tuple[str, bool]:
        try:
            value = self.env[name]
        except KeyError:
            self.unmatched.add(name)
            return "", False
        self.matched.add(name)
        return value, True

    def process_until(
        self, stop: str | None, *, raw_escapes: bool, words: bool
    ) -> tuple[str, list[str]]:
        """lex.go processStopOn: expand up to ``stop`` (consumed) or the end of the text."""
        src, esc = self.source, self.escape
        literal = _literal_run("$" + self.quotes + esc + (stop or "")).match
        out: list[str] = []
        acc = _Words() if words else None
        while self.pos < self.n:
            end = literal(src, self.pos).end()  # type: ignore[union-attr]
            if end > self.pos:
                chunk = src[self.pos : end]
                out.append(chunk)
                if acc is not None:
                    acc.add_split(chunk)
                self.pos = end
                if end >= self.n:
                    break
            ch = src[self.pos]
            if ch == stop:
                self.pos += 1
                return "".join(out), acc.result() if acc is not None else []
            if ch == "$":
                value = self.process_dollar()
                out.append(value)
                if acc is not None:
                    acc.add_split(value)
            elif ch == "'" and self.quotes:
                value = self.process_single_quote()
                out.append(value)
                if acc is not None:
                    acc.add_raw(value)
            elif ch == '"' and self.quotes:
                value = self.process_double_quote(raw_escapes)
                out.append(value)
                if acc is not None:
                    acc.add_raw(value)
            else:  # the escape character
                self.pos += 1
                if raw_escapes:
                    out.append(esc)
                    if acc is not None:
                        acc.add_raw(esc)
                if self.pos >= self.n:
                    break  # a trailing escape character is dropped
                escaped = src[self.pos]
                self.pos += 1
                out.append(escaped)
                if acc is not None:
                    acc.add_raw(escaped)
        if stop is not None:
            raise _LexError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(out), acc.result() if acc is not None else []

    def process_single_quote(self) -> str:
        # Everything up to the next ' is literal; there is no way to escape a '.
        close = self.source.find("'", self.pos + 1)
        if close < 0:
            self.pos = self.n
            raise _LexError("unexpected end of statement while looking for matching single-quote")
        value = self.source[self.pos + 1 : close]
        self.pos = close + 1
        return value

    def process_double_quote(self, raw_escapes: bool) -> str:
        src, esc = self.source, self.escape
        literal = _literal_run('"$' + esc).match
        out: list[str] = []
        self.pos += 1
        while True:
            end = literal(src, self.pos).end()  # type: ignore[union-attr]
            if end > self.pos:
                out.append(src[self.pos : end])
                self.pos = end
            if self.pos >= self.n:
                raise _LexError(
                    "unexpected end of statement while looking for matching double-quote"
                )
            ch = src[self.pos]
            if ch == '"':
                self.pos += 1
                return "".join(out)
            if ch == "$":
                out.append(self.process_dollar())
                continue
            # The escape character: it escapes only " $ and itself, else it stays.
            self.pos += 1
            if raw_escapes:
                out.append(esc)
            if self.pos >= self.n:
                continue  # reported as the unterminated quote above
            nxt = src[self.pos]
            if nxt in ('"', "$", esc):
                out.append(nxt)
                self.pos += 1
            else:
                out.append(esc)

    def process_name(self) -> str:
        """A name, a run of digits, or one special-parameter character; "" if none."""
        src, start = self.source, self.pos
        if start >= self.n:
            return ""
        first = src[start]
        if first.isdecimal():
            end = start + 1
            while end < self.n and src[end].isdecimal():
                end += 1
            self.pos = end
            return src[start:end]
        if first in _SPECIAL_PARAMS:
            self.pos = start + 1
            return first
        end = start
        while end < self.n:
            c = src[end]
            if not (c.isalpha() or c.isdecimal() or c == "_"):
                break
            end += 1
        self.pos = end
        return src[start:end]

    def process_dollar(self) -> str:
        src = self.source
        self.pos += 1
        if self.pos >= self.n or src[self.pos] != "{":
            name = self.process_name()
            if not name:
                return "$"
            return self.lookup(name)[0]

        self.pos += 1
        if self.pos >= self.n:
            raise _LexError(_MISSING_BRACE)
        if src[self.pos] in "{}:":
            raise _LexError("syntax error: bad substitution")
        name = self.process_name()
        if self.pos >= self.n:
            raise _LexError(_MISSING_BRACE)
        op = src[self.pos]
        self.pos += 1
        if op == "}":
            return self.lookup(name)[0]
        if op == "/":
            return self.process_replace(name)
        null_is_unset = False
        modifier = op
        if op == ":":
            # lex.go falls through with whatever follows the colon; only - + ? survive.
            null_is_unset = True
            if self.pos >= self.n:
                raise _LexError(_MISSING_BRACE)
            op = src[self.pos]
            self.pos += 1
            modifier += op
        elif op not in "+-?#%":
            raise _LexError(f"unsupported modifier ({modifier}) in substitution")
        is_pattern = op in "#%"
        if null_is_unset and is_pattern:
            raise _LexError(f"unsupported modifier ({modifier}) in substitution")
        try:
            word = self.process_until("}", raw_escapes=is_pattern, words=False)[0]
        except _LexError:
            if self.pos >= self.n:
                raise _LexError(_MISSING_BRACE) from None
            raise

        value, is_set = self.lookup(name)
        if op == "-":
            return word if not is_set or (null_is_unset and not value) else value
        if op == "+":
            return "" if not is_set or (null_is_unset and not value) else word
        if op == "?":
            if not is_set:
                raise _LexError(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and not value:
                raise _LexError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if op in "#%":
            greedy = word.startswith(op)
            if greedy:
                word = word[1:]
            if op == "%":
                return _trim_suffix(word, value, greedy)
            return _trim_prefix(word, value, greedy)
        raise _LexError(f"unsupported modifier ({modifier}) in substitution")

    def process_replace(self, name: str) -> str:
        """``${name/pattern/replacement}`` and ``${name//pattern/replacement}``."""
        replace_all = self.pos < self.n and self.source[self.pos] == "/"
        if replace_all:
            self.pos += 1
        try:
            pattern = self.process_until("/", raw_escapes=True, words=False)[0]
        except _LexError:
            if self.pos >= self.n:
                raise _LexError("syntax error: missing '/' in ${}") from None
            raise
        try:
            replacement = self.process_until("}", raw_escapes=True, words=False)[0]
        except _LexError:
            if self.pos >= self.n:
                raise _LexError(_MISSING_BRACE) from None
            raise
        value = self.lookup(name)[0]
        finder = _Finder(pattern)
        if replace_all:
            return _go_replace_all(finder, value, replacement)
        found = finder.find(value, 0)
        if found is None:
            return value
        return value[: found[0]] + replacement + value[found[1] :]


# Pattern tokens: a literal is its one-character string; these two ints are the wildcards.
_STAR = 0
_ANY = 1
_Token = str | int


@lru_cache(maxsize=512)
def _pattern_tokens(pattern: str) -> tuple[_Token, ...]:
    """lex.go convertShellPatternToRegex: ``*`` ``?`` and ``\\`` escapes, all else literal."""
    original = pattern
    if pattern.startswith(_BOM):  # text/scanner again
        pattern = pattern[1:]
    out: list[_Token] = []
    i, n = 0, len(pattern)
    while i < n:
        tok = pattern[i]
        i += 1
        if tok == "*":
            out.append(_STAR)
        elif tok == "?":
            out.append(_ANY)
        elif tok == "\\":
            # \} and \/ had to be escaped inside ${...}; the backslash is not part of the pattern.
            if i < n and pattern[i] in "}/":
                continue
            escaped = pattern[i] if i < n else ""
            if escaped not in ("*", "?", "\\"):
                raise _LexError(
                    f"invalid pattern ({original}) in substitution: invalid escape '\\{escaped}'"
                )
            i += 1
            out.append(escaped)
        else:
            out.append(tok)
    return tuple(out)


@lru_cache(maxsize=512)
def _tokens_regex(tokens: tuple[_Token, ...], *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    # Go's and Python's "." both stop at "\n", and both engines are leftmost-first with the
    # same preference for lazy and greedy stars, so the translated regex matches identically.
    star = ".*" if greedy else ".*?"
    parts = ["^"] if anchored else []
    for tok in tokens:
        parts.append(star if tok == _STAR else "." if tok == _ANY else re.escape(str(tok)))
    return re.compile("".join(parts))


class _Glob:
    """A linear-time matcher for patterns with several ``*`` (a bit-parallel NFA).

    Python's backtracking regex takes polynomial time of the star count's degree on such
    patterns (``*a*a*a*b`` against a long run of ``a``), where Go's RE2 stays linear.  For
    ``*``/``?``/literal patterns the leftmost-first lazy match is the shortest match and the
    greedy one the longest, so ends are all this needs to compute (checked against the regex
    by a differential test).  ``*`` and ``?`` do not match a newline, as Go's ``.``.
    """

    __slots__ = ("accept", "any", "literals", "star", "start")

    def __init__(self, tokens: tuple[_Token, ...]) -> None:
        collapsed: list[_Token] = []
        for tok in tokens:
            if not (tok == _STAR and collapsed and collapsed[-1] == _STAR):
                collapsed.append(tok)
        self.star = self.any = 0
        self.literals: dict[str, int] = {}
        for index, tok in enumerate(collapsed):
            bit = 1 << index
            if tok == _STAR:
                self.star |= bit
            elif tok == _ANY:
                self.any |= bit
            else:
                self.literals[str(tok)] = self.literals.get(str(tok), 0) | bit
        self.accept = 1 << len(collapsed)
        self.start = 1 | ((1 & self.star) << 1)

    def step(self, states: int, ch: str) -> int:
        if ch == "\n":
            after = (states & self.literals.get(ch, 0)) << 1
        else:
            after = ((states & (self.literals.get(ch, 0) | self.any)) << 1) | (states & self.star)
        return after | ((after & self.star) << 1)  # a star may also match nothing

    def match_at(self, value: str, pos: int, *, longest: bool) -> int | None:
        """End of the shortest (or longest) match starting at ``pos``, or None."""
        states = self.start
        found = pos if states & self.accept else None
        if found is not None and not longest:
            return found
        for index in range(pos, len(value)):
            states = self.step(states, value[index])
            if not states:
                break
            if states & self.accept:
                found = index + 1
                if not longest:
                    break
        return found


def _match_starts(reverse: _Glob, value: str) -> list[bool]:
    """For each index of ``value``: does a match of the pattern start there?  (One pass of
    the reversed pattern over the reversed value, a fresh start injected at every index.)"""
    states = reverse.start
    starts = [False] * (len(value) + 1)
    starts[-1] = bool(states & reverse.accept)
    for index in range(len(value) - 1, -1, -1):
        states = reverse.step(states, value[index]) | reverse.start
        starts[index] = bool(states & reverse.accept)
    return starts


@lru_cache(maxsize=256)
def _glob(tokens: tuple[_Token, ...]) -> _Glob:
    return _Glob(tokens)


def _many_stars(tokens: tuple[_Token, ...]) -> bool:
    return sum(1 for tok in tokens if tok == _STAR) >= 2


class _Finder:
    """Leftmost match, greedy stars (lex.go's pattern for ``${v/p/r}``), by regex or _Glob."""

    __slots__ = ("glob", "regex", "reverse", "starts", "value")

    def __init__(self, pattern: str) -> None:
        tokens = _pattern_tokens(pattern)
        self.regex: re.Pattern[str] | None = None
        self.glob: _Glob | None = None
        if _many_stars(tokens):
            self.glob = _glob(tokens)
            self.reverse = _glob(tokens[::-1])
        else:
            self.regex = _tokens_regex(tokens, greedy=True, anchored=False)
        self.value: str | None = None
        self.starts: list[bool] = []

    def find(self, value: str, pos: int) -> tuple[int, int] | None:
        if self.regex is not None:
            found = self.regex.search(value, pos)
            return found.span() if found is not None else None
        assert self.glob is not None
        if value is not self.value:
            self.value, self.starts = value, _match_starts(self.reverse, value)
        for start in range(pos, len(value) + 1):
            if self.starts[start]:
                end = self.glob.match_at(value, start, longest=True)
                assert end is not None
                return start, end
        return None


def _prefix_end(pattern: str, value: str, greedy: bool) -> int | None:
    """End of the shortest (greedy: longest) prefix of ``value`` matching ``pattern``."""
    tokens = _pattern_tokens(pattern)
    if _many_stars(tokens):
        return _glob(tokens).match_at(value, 0, longest=greedy)
    found = _tokens_regex(tokens, greedy=greedy, anchored=True).match(value)
    return found.end() if found is not None else None


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    end = _prefix_end(pattern, value, greedy)
    return value[end:] if end is not None else value


def _reverse_pattern(pattern: str) -> str:
    """Reverse a pattern but keep each ``\\x`` escape pair in order (``a\\*c`` -> ``c\\*a``)."""
    out = [""] * len(pattern)
    last = len(pattern) - 1
    i = 0
    while i <= last:
        tok = pattern[i]
        if tok == "\\" and i != last:
            out[last - i - 1] = tok
            out[last - i] = pattern[i + 1]
            i += 2
        else:
            out[last - i] = tok
            i += 1
    return "".join(out)


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # A regex cannot find the shortest rightmost match, so (like lex.go) reverse both the
    # pattern and the value and trim a prefix instead.
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


def _go_replace_all(finder: _Finder, value: str, template: str) -> str:
    """Go's Regexp.ReplaceAllString: no empty match right after a match; ``$`` templates."""
    out: list[str] = []
    last_end = 0
    search = 0
    end = len(value)
    expand = "$" in template
    while search <= end:
        found = finder.find(value, search)
        if found is None:
            break
        start, stop = found
        out.append(value[last_end:start])
        if stop > last_end or start == 0:
            out.append(_go_expand(template, value[start:stop]) if expand else template)
        last_end = stop
        search = search + 1 if search + 1 > stop else stop
    out.append(value[last_end:])
    return "".join(out)


def _go_expand(template: str, match: str) -> str:
    """Go's Regexp.Expand for a regex without groups: ``$0``/``${0}`` is the match, ``$$`` is
    ``$``, any other ``$name``/``${name}`` is empty and a ``$`` without a name stays."""
    out: list[str] = []
    i, n = 0, len(template)
    while True:
        dollar = template.find("$", i)
        if dollar < 0:
            out.append(template[i:])
            return "".join(out)
        out.append(template[i:dollar])
        i = dollar + 1
        if i < n and template[i] == "$":
            out.append("$")
            i += 1
            continue
        brace = i < n and template[i] == "{"
        start = end = i + 1 if brace else i
        while end < n and _is_go_name_char(template[end]):
            end += 1
        if end == start or (brace and (end >= n or template[end] != "}")):
            out.append("$")  # malformed: the $ is literal text
            continue
        if template[start:end] == "0":
            out.append(match)
        i = end + 1 if brace else end


def _is_go_name_char(c: str) -> bool:
    # unicode.IsLetter / unicode.IsDigit / "_", as Go's regexp template names are read.
    return c.isalpha() or c.isdecimal() or c == "_"


def _go_quote(text: str) -> str:
    """Go's %q of a string (strconv.Quote), for BuildKit-identical messages."""
    out = ['"']
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        elif c in _GO_ESCAPES:
            out.append(_GO_ESCAPES[c])
        elif ord(c) < 0x80:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) < 0x10000:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    out.append('"')
    return "".join(out)


_GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}
