""".dockerignore reading, Docker-exact pattern matching, and the pruning build-context walker.

Docker's behaviour is the specification here, not gitignore's: the file is read like
moby/patternmatcher's ``ignorefile.ReadAll`` (``#`` comments only in column 1, Go
``strings.TrimSpace``, ``!`` exceptions, Go ``filepath.Clean``, a leading ``/`` dropped), each
pattern is matched like ``patternmatcher.Pattern.match`` (including its exact / prefix / suffix
shortcuts, which are observable: ``**file`` matches ``xfile``), the last matching pattern wins and
a pattern that matches a parent directory matches everything inside it
(``MatchesOrParentMatches``). The glob syntax of one pattern is the ``ignore_pattern`` start rule of
``dockerfile_grammar.lark``; this module turns its parse tree into a matcher once per pattern.

The walker yields what BuildKit's context sender (tonistiigi/fsutil ``filterFS.Walk``) would
send: depth-first, each directory's entries sorted by name bytes, excluded entries left out,
an excluded directory yielded only when something inside it is re-included (just before that
entry, as fsutil does), symlinks yielded and never followed. An excluded directory is not
opened unless an exception pattern listed after the pattern that excluded it could match
something below it. That check is per pattern and per directory, finer than fsutil's
all-or-nothing ``onlyPrefixExcludeExceptions`` (one ``!**/*.md`` makes fsutil open every
excluded directory; here ``!docs/*.md`` never opens ``node_modules``), and it cannot change the
result, only the work: a directory is skipped only when nothing inside it can be included.

Decisions follow ``MatchesOrParentMatches`` everywhere, walker included. fsutil's walker uses
``MatchesUsingParentResults``, which differs in one corner: a pattern skipped at a directory
(already decided) is not inherited by its children, so ``d``, ``!d/e``, ``d`` keeps ``d/e`` in
BuildKit although the documented last-match rule (and this module) excludes it.

Known, deliberate departures from Docker (where Docker's regex translation leaks through):
``\\x`` is always the literal ``x`` (Docker emits Go regex ``\\x``, so ``\\d`` is a digit class
there), ``^`` outside a class is a literal (Docker leaves it as a regex anchor when the pattern
has wildcards, so such a pattern never matches), ``*``/``?`` inside a class are literal members
(Docker rewrites them into the class), POSIX ``[[:alpha:]]`` classes are not special, and a
reversed range such as ``[z-a]`` is rejected when the pattern is compiled rather than at the
first match.
"""

from __future__ import annotations

import enum
import os
import re
import stat as stat_module
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lark import Token, Tree
from lark.exceptions import UnexpectedInput, UnexpectedToken

from builder.dockerfile.grammar import load_parser
from builder.errors import ContextError, IgnorePatternError

__all__ = [
    "ContextEntry",
    "EntryKind",
    "IgnoreMatcher",
    "IgnorePattern",
    "MatchKind",
    "clean_path",
    "find_ignore_file",
    "load_matcher",
    "read_ignore_file",
    "walk_context",
]

DOCKERIGNORE_NAME = ".dockerignore"

# Go's unicode.IsSpace set, which strings.TrimSpace uses; Python's str.strip() also strips
# \x1c-\x1f, which Go keeps, so a pattern with those characters would differ.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
_UTF8_BOM = "\ufeff"


def _go_trim_space(text: str) -> str:
    return text.strip(_GO_SPACE)


def clean_path(path: str) -> str:
    """Go's ``path.Clean`` (``filepath.Clean`` on Unix): the shortest equivalent slash path.

    Differs from ``posixpath.normpath`` in one place Docker relies on: a leading ``//`` becomes
    ``/`` (POSIX lets normpath keep it).
    """
    if path == "":
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part == "" or part == ".":
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def _numbered_patterns(text: str) -> list[tuple[int, str]]:
    """``ignorefile.ReadAll`` with the 1-based line number of each pattern kept for messages."""
    if text.startswith(_UTF8_BOM):
        text = text[1:]
    patterns: list[tuple[int, str]] = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        line = raw[:-1] if raw.endswith("\r") else raw  # bufio.ScanLines drops one "\r"
        # A comment is "#" in column 1 only: Docker checks before trimming, so " # x" is a pattern.
        if line.startswith("#"):
            continue
        pattern = _go_trim_space(line)
        if not pattern:
            continue
        invert = pattern[0] == "!"
        if invert:
            pattern = _go_trim_space(pattern[1:])
        if pattern:
            pattern = clean_path(pattern)
            if len(pattern) > 1 and pattern[0] == "/":
                pattern = pattern[1:]
        if invert:
            pattern = "!" + pattern
        patterns.append((number, pattern))
    return patterns


def read_ignore_file(text: str) -> list[str]:
    """The cleaned pattern list of a .dockerignore file's text (``ignorefile.ReadAll``).

    A lone ``!`` is kept (as Docker's reader keeps it); building a matcher rejects it.
    """
    return [pattern for _, pattern in _numbered_patterns(text)]


class MatchKind(enum.Enum):
    """How patternmatcher decided to match a pattern; the shortcuts have their own semantics."""

    EXACT = "exact"  # no wildcard: path == pattern
    PREFIX = "prefix"  # literal then a final "**": path.startswith(literal)
    SUFFIX = "suffix"  # "**" first, literal after: path.endswith(literal) (so "**file" ~ "xfile")
    REGEX = "regex"


# One element of a pattern after parsing: a "/" separator, a "**", or a regex fragment that
# never crosses a "/" on its own unless ``crosses_slash`` (a negated class, or an escaped "/").
@dataclass(frozen=True, slots=True)
class _Piece:
    kind: str  # "slash" | "globstar" | "text" | "wild"
    regex: str
    crosses_slash: bool = False
    has_bracket: bool = False  # patternmatcher's compile switches to regex on "[" or "]"


_WILDCARD_REGEX = {"IGNORE_STAR": "[^/]*", "IGNORE_ANY": "[^/]"}


def _class_char(token: Token) -> str:
    value = str(token)
    return value[1] if token.type == "IGNORE_CLASS_ESCAPED" else value


def _class_piece(tree: Tree[Token], pattern: str) -> _Piece:
    negated = False
    items: list[str] = []
    crosses_slash = False
    for child in tree.children:
        if isinstance(child, Token):
            if child.type == "IGNORE_CLASS_NEGATE":
                negated = True
            continue
        chars = [
            _class_char(tok)
            for tok in child.children
            if isinstance(tok, Token) and tok.type != "IGNORE_CLASS_DASH"
        ]
        if len(chars) == 2:
            low, high = chars
            if low > high:
                raise IgnorePatternError(
                    f"invalid .dockerignore pattern {pattern!r}: "
                    f"character class range {low}-{high} is reversed"
                )
            crosses_slash = crosses_slash or low <= "/" <= high
            items.append(f"{re.escape(low)}-{re.escape(high)}")
        else:
            crosses_slash = crosses_slash or chars[0] == "/"
            items.append(re.escape(chars[0]))
    # Docker hands the class to Go's regexp, where [^...] also matches "/" (and "\n").
    body = "".join(items)
    regex = f"[^{body}]" if negated else f"[{body}]"
    return _Piece("wild", regex, crosses_slash=crosses_slash or negated, has_bracket=True)


def _pieces(tree: Tree[Token], pattern: str) -> list[_Piece]:
    pieces: list[_Piece] = []
    for node in tree.children:
        if isinstance(node, Token):  # IGNORE_SLASH between segments
            pieces.append(_Piece("slash", "/"))
            continue
        for part in node.children:
            if isinstance(part, Tree):
                pieces.append(_class_piece(part, pattern))
            elif part.type == "IGNORE_TEXT":
                text = str(part)
                pieces.append(_Piece("text", re.escape(text), has_bracket="]" in text))
            elif part.type == "IGNORE_ESCAPED":
                char = str(part)[1]
                # An escaped character switches patternmatcher to a regex (no shortcut).
                pieces.append(_Piece("wild", re.escape(char), crosses_slash=char == "/"))
            elif part.type == "IGNORE_GLOBSTAR":
                pieces.append(_Piece("globstar", ""))
            else:
                pieces.append(_Piece("wild", _WILDCARD_REGEX[part.type]))
    return pieces


def _describe_syntax_error(pattern: str, error: UnexpectedInput, *, offset: int) -> str:
    if isinstance(error, UnexpectedToken) and error.token.type == "$END":
        return "unterminated '[' character class"
    position = error.pos_in_stream
    if not isinstance(position, int) or not 0 <= position < len(pattern):
        return "syntax error"
    char = pattern[position]
    where = f"at column {position + 1 + offset}"
    if char == "\\":
        return "a trailing '\\' escapes nothing"
    if char == "]" and pattern[:position].endswith(("[", "[^")):
        return f"empty character class {where}"
    if char == "-" or (position > 0 and pattern[position - 1] == "-"):
        return f"'-' in a character class must be escaped or sit between two characters ({where})"
    return f"unexpected {char!r} {where}"


@dataclass(frozen=True, eq=False)
class IgnorePattern:
    """One compiled pattern: ``text`` is the cleaned pattern without its ``!``."""

    text: str
    exception: bool
    kind: MatchKind
    regex: re.Pattern[str] | None
    literal: str
    # Per "/"-segment regexes for the walker's "could this re-include below a directory" check;
    # None for a segment that can span directories (a "**", a negated class, an escaped "/").
    # Only exceptions need them (only an exception can re-include); empty for the others.
    segments: tuple[re.Pattern[str] | None, ...]
    matches: Callable[[str], bool] = field(repr=False)

    @classmethod
    def compile(cls, pattern: str) -> IgnorePattern:
        """Compile one pattern as ``patternmatcher.New`` sees it (``!`` prefix allowed)."""
        text = clean_path(_go_trim_space(pattern))
        exception = text.startswith("!")
        if exception:
            if len(text) == 1:
                raise IgnorePatternError('illegal exclusion pattern: "!"')
            text = text[1:]
        shown = ("!" if exception else "") + text  # what the error shows, columns count in it
        try:
            tree = load_parser("ignore_pattern").parse(text)
        except UnexpectedInput as error:
            reason = _describe_syntax_error(text, error, offset=len(shown) - len(text))
            raise IgnorePatternError(f"invalid .dockerignore pattern {shown!r}: {reason}") from None
        pieces = _pieces(tree, shown)
        kind, regex_source, literal = cls._classify(text, pieces)
        regex = re.compile(regex_source) if kind is MatchKind.REGEX else None
        return cls(
            text=text,
            exception=exception,
            kind=kind,
            regex=regex,
            literal=literal,
            segments=cls._segment_regexes(pieces) if exception else (),
            matches=cls._matcher(kind, regex, literal),
        )

    @staticmethod
    def _classify(text: str, pieces: list[_Piece]) -> tuple[MatchKind, str, str]:
        """Replays ``Pattern.compile``'s type detection over the parsed pieces."""
        kind = MatchKind.EXACT
        regex = ""
        index = 0
        while index < len(pieces):
            piece = pieces[index]
            if piece.kind == "globstar":
                first = index == 0
                # "**/" is treated as "**": the slash is eaten.
                if index + 1 < len(pieces) and pieces[index + 1].kind == "slash":
                    index += 1
                if index + 1 == len(pieces):
                    if kind is MatchKind.EXACT:
                        kind = MatchKind.PREFIX
                    else:
                        regex += ".*"
                        kind = MatchKind.REGEX
                else:
                    regex += "(?:.*/)?"
                    kind = MatchKind.REGEX
                if first:
                    kind = MatchKind.SUFFIX
            else:
                regex += piece.regex
                if piece.kind == "wild" or piece.has_bracket:
                    kind = MatchKind.REGEX
            index += 1
        if kind is MatchKind.PREFIX:
            return kind, "", text[:-2]
        if kind is MatchKind.SUFFIX:
            return kind, "", text[2:]
        if kind is MatchKind.EXACT:
            return kind, "", text
        return kind, regex, ""

    @staticmethod
    def _matcher(
        kind: MatchKind, regex: re.Pattern[str] | None, literal: str
    ) -> Callable[[str], bool]:
        if kind is MatchKind.EXACT:
            return literal.__eq__
        if kind is MatchKind.PREFIX:
            return lambda path: path.startswith(literal)
        if kind is MatchKind.SUFFIX:
            bare = literal[1:] if literal.startswith("/") else None  # "**/foo" also matches "foo"
            return lambda path: path.endswith(literal) or path == bare
        assert regex is not None
        fullmatch = regex.fullmatch
        return lambda path: fullmatch(path) is not None

    @staticmethod
    def _segment_regexes(pieces: list[_Piece]) -> tuple[re.Pattern[str] | None, ...]:
        segments: list[re.Pattern[str] | None] = []
        current = ""
        spanning = False
        for piece in [*pieces, _Piece("slash", "/")]:
            if piece.kind == "slash":
                segments.append(None if spanning else re.compile(current))
                current, spanning = "", False
            elif piece.kind == "globstar" or piece.crosses_slash:
                spanning = True
            else:
                current += piece.regex
        return tuple(segments)

    def could_match_below(self, directory_parts: tuple[str, ...]) -> bool:
        """Whether this pattern could match some path strictly inside the directory.

        Conservative (True when unsure): a segment that can span directories ends the check.
        """
        for position, segment in enumerate(self.segments):
            if segment is None or position >= len(directory_parts):
                return True
            if segment.fullmatch(directory_parts[position]) is None:
                return False
        return False

    def __str__(self) -> str:
        return ("!" if self.exception else "") + self.text


class IgnoreMatcher:
    """An ordered list of compiled patterns with Docker's decision rule.

    ``excludes(path)`` is ``MatchesOrParentMatches``: the last pattern that matches the path or
    one of its parent directories decides, and a path matched by nothing is kept.
    """

    __slots__ = ("_exception_flags", "_matchers", "patterns", "source")

    def __init__(self, patterns: Iterable[IgnorePattern], *, source: Path | None = None) -> None:
        self.patterns: tuple[IgnorePattern, ...] = tuple(patterns)
        self.source = source
        self._matchers = tuple(p.matches for p in self.patterns)
        self._exception_flags = tuple(p.exception for p in self.patterns)

    @classmethod
    def from_patterns(cls, patterns: Iterable[str], *, source: Path | None = None) -> IgnoreMatcher:
        """Patterns as ``patternmatcher.New`` takes them (already read; blanks skipped)."""
        compiled: list[IgnorePattern] = []
        for pattern in patterns:
            if not _go_trim_space(pattern):
                continue
            compiled.append(cls._compile(pattern, source, None))
        return cls(compiled, source=source)

    @classmethod
    def from_lines(cls, lines: Iterable[str], *, source: Path | None = None) -> IgnoreMatcher:
        """The lines of a .dockerignore file (read with ``ignorefile.ReadAll`` rules)."""
        text = "\n".join(line.rstrip("\n") for line in lines)
        return cls.from_text(text, source=source)

    @classmethod
    def from_text(cls, text: str, *, source: Path | None = None) -> IgnoreMatcher:
        """A whole .dockerignore file's text."""
        compiled = [
            cls._compile(pattern, source, number) for number, pattern in _numbered_patterns(text)
        ]
        return cls(compiled, source=source)

    @staticmethod
    def _compile(pattern: str, source: Path | None, line: int | None) -> IgnorePattern:
        try:
            return IgnorePattern.compile(pattern)
        except IgnorePatternError as error:
            if source is None and line is None:
                raise
            where = str(source) if source is not None else DOCKERIGNORE_NAME
            if line is not None:
                where += f":{line}"
            raise IgnorePatternError(f"{where}: {error}") from None

    def __len__(self) -> int:
        return len(self.patterns)

    @property
    def has_exceptions(self) -> bool:
        """Whether any ``!`` pattern exists (``PatternMatcher.Exclusions``)."""
        return any(self._exception_flags)

    def excludes(self, path: str) -> bool:
        """Whether the context path (relative, ``/``-separated) is left out of the context."""
        if not self.patterns:
            return False
        path = clean_path(path)
        if path == ".":
            return False  # Docker: "don't let them exclude everything"
        parents: list[str] = []
        slash = path.rfind("/")
        if slash >= 0:
            parent = path[:slash] or "/"
            if parent != "/":
                parts = parent.split("/")
                parents = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for index in range(len(self._matchers) - 1, -1, -1):
            match = self._matchers[index]
            if match(path) or any(match(p) for p in parents):
                return not self._exception_flags[index]
        return False

    def _decide(self, path: str, floor: int) -> int:
        """Highest index above ``floor`` whose pattern matches ``path`` itself, else ``floor``.

        ``floor`` is the parent's decision index: the patterns matching some ancestor. Only the
        highest matching index matters (last match wins), so nothing below it is evaluated.
        """
        matchers = self._matchers
        for index in range(len(matchers) - 1, floor, -1):
            if matchers[index](path):
                return index
        return floor

    def _is_excluded_at(self, index: int) -> bool:
        return index >= 0 and not self._exception_flags[index]

    def _may_reinclude_below(self, index: int, parts: tuple[str, ...]) -> bool:
        """Whether an exception after pattern ``index`` could match inside the directory."""
        return any(
            self._exception_flags[later] and self.patterns[later].could_match_below(parts)
            for later in range(index + 1, len(self.patterns))
        )


def find_ignore_file(context_dir: Path, dockerfile: Path | None) -> Path | None:
    """The ignore file that applies: ``<Dockerfile>.dockerignore`` beside the Dockerfile first,
    then the context's ``.dockerignore`` (BuildKit's dockerui order); None if neither exists.
    """
    if dockerfile is not None:
        specific = dockerfile.with_name(dockerfile.name + DOCKERIGNORE_NAME)
        if specific.is_file():
            return specific
    default = context_dir / DOCKERIGNORE_NAME
    if default.is_file():
        return default
    return None


def load_matcher(context_dir: Path, dockerfile: Path | None = None) -> IgnoreMatcher:
    """The matcher for a build: the applicable ignore file, or an empty matcher."""
    found = find_ignore_file(context_dir, dockerfile)
    if found is None:
        return IgnoreMatcher(())
    try:
        # Patterns are bytes in Go; surrogateescape keeps non-UTF-8 names matchable against
        # os.fsdecode'd paths.
        text = found.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as error:
        raise ContextError(f"{found}: cannot read ignore file: {error.strerror}") from None
    return IgnoreMatcher.from_text(text, source=found)


class EntryKind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    OTHER = "other"  # fifo, socket, device


@dataclass(frozen=True, slots=True)
class ContextEntry:
    """One included context entry: ``path`` relative and ``/``-separated, ``stat`` an lstat."""

    path: str
    kind: EntryKind
    stat: os.stat_result
    fspath: str  # absolute filesystem path, for opening


def _kind(mode: int) -> EntryKind:
    if stat_module.S_ISREG(mode):
        return EntryKind.FILE
    if stat_module.S_ISDIR(mode):
        return EntryKind.DIR
    if stat_module.S_ISLNK(mode):
        return EntryKind.SYMLINK
    return EntryKind.OTHER


def _name_key(entry: os.DirEntry[str]) -> bytes:
    return os.fsencode(entry.name)


def _str_key(entry: os.DirEntry[str]) -> str:
    return entry.name


@dataclass(slots=True)
class _OpenDir:
    prefix: str  # "" for the root, else "rel/path/"
    parts: tuple[str, ...]
    decision: int  # highest pattern index matching this directory or an ancestor (-1: none)
    entries: Iterator[os.DirEntry[str]]
    # An excluded directory that was opened anyway: yielded only if something inside is.
    pending: tuple[str, os.DirEntry[str]] | None


def _scan_sorted(fspath: str) -> Iterator[os.DirEntry[str]]:
    with os.scandir(fspath) as scanner:
        entries = sorted(scanner, key=_str_key)
    # Go sorts names by bytes. Code-point order is the same for valid UTF-8; only names with
    # undecodable bytes (surrogate escapes) need the slower byte key.
    if not all(entry.name.isascii() for entry in entries):
        entries.sort(key=_name_key)
    return iter(entries)


def _context_entry(rel: str, entry: os.DirEntry[str]) -> ContextEntry | None:
    try:
        info = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None  # removed while walking
    return ContextEntry(rel, _kind(info.st_mode), info, entry.path)


def walk_context(root: Path, matcher: IgnoreMatcher) -> Iterator[ContextEntry]:
    """Included entries under ``root``, depth-first with names sorted (Go ``WalkDir`` order).

    Excluded directories are not opened unless an exception could re-include something
    inside; an unreadable excluded directory is skipped, as BuildKit does. Only yielded
    entries are stat'ed. Raises ContextError for a context that is not a readable directory
    or an included directory that cannot be read.
    """
    root_path = os.fspath(root)
    try:
        stack = [_OpenDir("", (), -1, _scan_sorted(root_path), None)]
    except OSError as error:
        raise ContextError(f"{root}: cannot read build context: {error.strerror}") from None
    no_patterns = not matcher.patterns

    while stack:
        frame = stack[-1]
        entry = next(frame.entries, None)
        if entry is None:
            stack.pop()
            continue
        rel = frame.prefix + entry.name
        decision = -1 if no_patterns else matcher._decide(rel, frame.decision)
        excluded = matcher._is_excluded_at(decision)
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            continue

        if is_dir:
            parts = (*frame.parts, entry.name)
            if excluded and not matcher._may_reinclude_below(decision, parts):
                continue
            try:
                children = _scan_sorted(entry.path)
            except FileNotFoundError:
                continue
            except OSError as error:
                if excluded:
                    continue  # fsutil ignores permission errors on skipped paths
                raise ContextError(f"{rel}: cannot read directory: {error.strerror}") from None
            if excluded:
                stack.append(_OpenDir(rel + "/", parts, decision, children, (rel, entry)))
                continue
            item = _context_entry(rel, entry)
            if item is None:
                continue
            yield from _flush_pending(stack)
            yield item
            stack.append(_OpenDir(rel + "/", parts, decision, children, None))
            continue

        if excluded:
            continue
        item = _context_entry(rel, entry)
        if item is not None:
            yield from _flush_pending(stack)
            yield item


def _flush_pending(stack: list[_OpenDir]) -> Iterator[ContextEntry]:
    for frame in stack:
        if frame.pending is not None:
            item = _context_entry(*frame.pending)
            frame.pending = None
            if item is not None:
                yield item
