"""Loads ``dockerfile_grammar.lark``, builds its LALR tables with Lark, and runs them fast.

This is the only module that knows where the grammar file lives: inside this package in an
installed wheel (pyproject's force-include puts it there), else at the top of a source
checkout. Lark turns the grammar into LALR tables and terminal regexes (``load_parser``,
cached on disk by Lark, keyed by the grammar's hash); :class:`FastParser` runs those same
tables with the contextual-lexer rule (each parser state scans only for the terminals it
accepts) in a loop made for this grammar, about twice as fast as Lark's general one. Its
tables are cached too (in the temp directory, keyed by the grammar text, the escape
character and the installed Lark and Python), so a CLI run imports no Lark at all; the
cache location never depends on the working directory, and a cache that cannot be read or
written only costs the rebuild.

The escape character chosen by a ``# escape=`` directive changes how ARG/ENV/LABEL words end,
which a fixed grammar cannot say; the grammar writes it as ``%ESC%`` and each escape character
gets its own parser with the placeholder filled in.

Parse failures come out as :class:`GrammarError` (line, column, what was seen, what was
expected); ``transform`` turns them into located DockerfileSyntaxErrors.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lark import Lark

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
    from lark import Lark

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
    """A parse failure reduced to where it happened (Lark line, column) and what was seen.

    ``transform`` turns it into a located DockerfileSyntaxError; no Lark exception or
    traceback can reach a user.
    """

    def __init__(self, line: int, column: int, seen: str, expected: frozenset[str]) -> None:
        super().__init__(f"line {line}:{column}: unexpected {seen!r}")
        self.line = line
        self.column = column
        self.seen = seen
        self.expected = expected


class Tok:
    """A token: terminal name, text (with its leading blanks), offset and line."""

    __slots__ = ("line", "start_pos", "type", "value")

    def __init__(self, type_: str, value: str, start_pos: int, line: int) -> None:
        self.type = type_
        self.value = value
        self.start_pos = start_pos
        self.line = line

    @property
    def end_pos(self) -> int:
        return self.start_pos + len(self.value)

    def __str__(self) -> str:
        return self.value


class Branch:
    """A rule match: the rule name and its children (rules starting with ``_`` are inlined)."""

    __slots__ = ("children", "data")

    def __init__(self, data: str, children: list[Branch | Tok]) -> None:
        self.data = data
        self.children = children


# A semantic action: called with the parse's context object and a rule's children (token
# texts and the values of its sub-rules); what it returns is the rule's value.
Action = Callable[[Any, list[Any]], Any]
# Chooses the action for one rule alternative: (rule name, its symbols) -> action, or None to
# keep the children list itself as the value.
Semantics = Callable[[str, tuple[str, ...]], Action | None]


@dataclass(frozen=True)
class Tables:
    """What the driver needs from Lark's LALR analysis, in plain picklable values.

    ``actions[state][symbol]``: an int is "shift to / go to that state"; a tuple is "reduce
    by a rule" as (rule name, symbol count, inlined?, child plan, the rule's symbols). The
    child plan is None when every child is kept as is, else one code per symbol: 0 drop (a
    filtered token such as _NL), 1 keep, 2 splice (an inlined rule's children).
    ``terminals[state]`` lists the terminals the state accepts in the contextual lexer's
    order; ``patterns`` their regexes.
    """

    start_state: int
    end_state: int
    actions: dict[int, dict[str, Any]]
    terminals: dict[int, tuple[str, ...]]
    patterns: dict[str, str]
    # states where a newline can only be the _NL token (see _may_start_with_newline)
    newline_states: frozenset[int] = frozenset()

    @classmethod
    def from_lark(cls, lark: Lark, start: str) -> Tables:
        from lark.parsers.lalr_analysis import Reduce, Shift

        table = lark.parser.parser.parser.parse_table
        defs = {t.name: t for t in lark.terminals}

        def order(name: str) -> tuple[int, int, int, str]:
            t = defs[name]
            return (-t.priority, -t.pattern.max_width, -len(t.pattern.value), name)

        rules: dict[Any, tuple[str, int, bool, tuple[int, ...] | None, tuple[str, ...]]] = {}
        actions: dict[int, dict[str, Any]] = {}
        terminals: dict[int, tuple[str, ...]] = {}
        for state, row_in in table.states.items():
            terminals[state] = tuple(sorted((n for n in row_in if n in defs), key=order))
            row: dict[str, Any] = {}
            for symbol, (action, arg) in row_in.items():
                if action is Shift:
                    row[symbol] = int(arg)
                    continue
                assert action is Reduce
                if arg not in rules:
                    name = str(arg.origin.name)
                    plan = tuple(
                        (2 if not sym.is_term else 0) if sym.name.startswith("_") else 1
                        for sym in arg.expansion
                    )
                    child_plan = None if all(code == 1 for code in plan) else plan
                    symbols = tuple(str(sym.name) for sym in arg.expansion)
                    rules[arg] = (
                        name,
                        len(arg.expansion),
                        name.startswith("_"),
                        child_plan,
                        symbols,
                    )
                row[symbol] = rules[arg]
            actions[state] = row
        patterns = {name: t.pattern.to_regexp() for name, t in defs.items()}
        may_start = {name: _may_start_with_newline(p) for name, p in patterns.items()}
        newline_states = frozenset(
            state
            for state, names in terminals.items()
            if "_NL" in names and not any(may_start[n] for n in names if n != "_NL")
        )
        return cls(
            table.start_states[start],
            table.end_states[start],
            actions,
            terminals,
            patterns,
            newline_states,
        )


def _may_start_with_newline(pattern: str) -> bool:
    """Whether the regex might match text that starts with a newline (False only if proven).

    A state whose other terminals cannot start with a newline scans a newline as _NL without
    running its alternation: no other alternative could have matched there. The proof walks
    the parsed regex's leading elements; anything it does not know counts as "might".
    """
    import re._constants as c  # type: ignore[import-not-found]
    import re._parser as sre  # type: ignore[import-not-found]

    categories = {
        "CATEGORY_SPACE": r"\s",
        "CATEGORY_NOT_SPACE": r"\S",
        "CATEGORY_DIGIT": r"\d",
        "CATEGORY_NOT_DIGIT": r"\D",
        "CATEGORY_WORD": r"\w",
        "CATEGORY_NOT_WORD": r"\W",
    }

    def char_in(items: list[Any]) -> bool:
        negate = False
        found = False
        for op, arg in items:
            if op is c.NEGATE:
                negate = True
            elif op is c.LITERAL:
                found = found or arg == 10
            elif op is c.RANGE:
                found = found or arg[0] <= 10 <= arg[1]
            elif op is c.CATEGORY:
                regex = categories.get(str(arg))
                if regex is None:
                    return True
                found = found or re.match(regex, "\n") is not None
            else:
                return True
        return found != negate

    def starts(seq: Any) -> tuple[bool, bool]:
        """(might start with a newline, might match the empty string) for a sequence."""
        for op, arg in seq:
            if op is c.LITERAL:
                possible, nullable = arg == 10, False
            elif op is c.NOT_LITERAL:
                possible, nullable = arg != 10, False
            elif op is c.IN:
                possible, nullable = char_in(arg), False
            elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
                possible, nullable = starts(arg[2])
                nullable = nullable or arg[0] == 0
            elif op is c.SUBPATTERN:
                possible, nullable = starts(arg[3])
            elif op is c.ATOMIC_GROUP:
                possible, nullable = starts(arg)
            elif op is c.BRANCH:
                results = [starts(branch) for branch in arg[1]]
                possible = any(r[0] for r in results)
                nullable = any(r[1] for r in results)
            elif op in (c.ASSERT, c.ASSERT_NOT, c.AT):
                continue  # zero-width: the next element decides
            else:
                return True, True
            if possible:
                return True, True
            if not nullable:
                return False, False
        return False, True

    try:
        possible, nullable = starts(sre.parse(pattern))
    except Exception:  # an unknown regex shape: assume the worst
        return True
    return possible or nullable


# How a reduction gathers its children (see Tables' child plan).
_KEEP = 0  # every child as is
_GROW = 1  # (2, 1[, 0]) without an action: the inlined list in the first child grows by one
_PASS = 2  # (2,): the one child is an inlined rule's list, which becomes the children
_FIRST = 3  # (1, 0…): the first child alone (a rule and its _NL)
_FIRST_TAIL = 4  # (1, 0…, 2): the first child, then an inlined list (stage: from_ _NL lines)
_SPLICE = 5  # anything else: FastParser._splice
_NEVER = re.compile("(?!)").match  # the scanner of a state that accepts no terminal


def _tree_semantics(rule: str, symbols: tuple[str, ...]) -> Action | None:
    """Lark's tree: a Branch per rule that is not inlined."""
    if rule.startswith("_"):
        return None

    def branch(context: Any, children: list[Any]) -> Branch:
        return Branch(rule, children)

    return branch


class FastParser:
    """An LALR driver over the tables Lark builds from the grammar.

    Lark's own driver is general (lexer threads, callbacks, positions, interactive parsing)
    and costs several microseconds per token; parsing is on the CLI's hot path, so this loop
    runs the same tables and the same terminal regexes with the contextual-lexer rule (each
    parser state scans only for the terminals it accepts) and nothing else. It either builds
    Lark's tree (:meth:`parse`) or, like Lark's ``transformer=`` in LALR mode, calls an action
    per reduction so callers build their own values straight from the grammar's rules without
    an intermediate tree (:meth:`run`).
    """

    def __init__(self, tables: Tables) -> None:
        self.start_state = tables.start_state
        self.end_state = tables.end_state
        self.actions = tables.actions
        self.accepts = {state: frozenset(names) for state, names in tables.terminals.items()}
        self._patterns = tables.patterns
        self._terminals = tables.terminals
        self.newline_states = tables.newline_states
        # compiled on first use: a short Dockerfile visits few parser states, and compiling
        # every state's alternation up front would cost a CLI run ~20 ms
        # (a list indexed by state, like the bound action tables: the states are numbered from
        # 0, and a list index is the interpreter's cheapest lookup; each entry starts as a stub
        # that compiles the state's scanner, puts it in its place and scans)
        self.scanners: list[Any] = [self._lazy_scanner(state) for state in range(len(self.actions))]
        self._bound: dict[Semantics, list[dict[str, Any]]] = {}

    def _lazy_scanner(self, state: int) -> Callable[[str, int], Any]:
        def first_scan(text: str, pos: int) -> Any:
            scanner = self.scanners[state] = self.compile_scanner(state)
            return scanner(text, pos)

        return first_scan

    def compile_scanner(self, state: int) -> Any:
        names = self._terminals[state]
        if not names:
            return _NEVER
        alternatives = "|".join(f"(?P<{n}>{self._patterns[n]})" for n in names)
        return re.compile(alternatives).match

    def bind(self, semantics: Semantics) -> list[dict[str, Any]]:
        """The action table with each reduction's action chosen by ``semantics`` (cached),
        indexed by state."""
        cached = self._bound.get(semantics)
        if cached is not None:
            return cached
        reductions: dict[Any, tuple[Any, ...]] = {}
        bound: dict[int, dict[str, Any]] = {}
        for state, row in self.actions.items():
            out: dict[str, Any] = {}
            for symbol, act in row.items():
                if type(act) is int:
                    out[symbol] = act
                    continue
                if act not in reductions:
                    name, size, _, plan, symbols = act
                    action = semantics(name, symbols)
                    if plan is None:
                        how = _KEEP
                    elif plan == (2,):
                        how = _PASS
                    elif action is None and plan[0] == 2 and plan[1] == 1 and not any(plan[2:]):
                        how = _GROW
                    elif plan[0] == 1 and not any(plan[1:]):
                        how = _FIRST
                    elif plan[0] == 1 and plan[-1] == 2 and not any(plan[1:-1]):
                        how = _FIRST_TAIL
                    else:
                        how = _SPLICE
                    reductions[act] = (action, size, how, plan, name)
                out[symbol] = reductions[act]
            bound[state] = out
        table = [bound[state] for state in range(len(bound))]
        self._bound[semantics] = table
        return table

    def parse(self, text: str) -> Branch:
        """Lark's tree for ``text`` (Tok leaves with types and lines, Branch per rule)."""
        tree: Branch = self.run(text, _tree_semantics, None, tokens=True)
        return tree

    def run(self, text: str, semantics: Semantics, context: Any, *, tokens: bool = False) -> Any:
        """Parse ``text``, calling ``semantics``' actions; return the start rule's value.

        Leaves are the token texts (with their leading blanks), or :class:`Tok` objects when
        ``tokens`` is set. Raises GrammarError.
        """
        actions = self.bind(semantics)
        scanners = self.scanners
        newline_states = self.newline_states
        splice = self._splice
        state_stack = [self.start_state]
        values: list[Any] = []
        push_state = state_stack.append
        push_value = values.append
        pos = 0
        n = len(text)
        line = 1
        state: Any = self.start_state
        token: Any
        children: list[Any]
        # Every token but the end: the start rule is reduced only on "$END", so the loop
        # cannot finish here and needs no accept test per reduction.
        while pos < n:
            start = pos
            if text[pos] == "\n" and state in newline_states:
                # only _NL can match here (Tables.newline_states): no alternation to run
                kind = "_NL"
                pos += 1
            else:
                match = scanners[state](text, pos)
                if match is None:
                    raise self._unexpected_text(text, pos, state)
                kind = match.lastgroup
                pos = match.end()
            if not tokens:
                token = text[start:pos]
            elif kind[0] == "_":
                token = None
                if kind == "_NL":
                    line += 1
            else:
                token = Tok(kind, text[start:pos], start, line)
            row = actions[state]
            while True:
                act: Any = row.get(kind)
                if type(act) is int:
                    push_state(act)
                    push_value(token)
                    state = act
                    break
                if act is None:
                    raise self._unexpected_token(text, start, pos, state)
                action, size, how, plan, name = act
                if how == _GROW:  # the list stays where it is on the value stack
                    values[-size].append(values[1 - size])
                    del values[1 - size :]
                    del state_stack[-size:]
                else:
                    if how == _KEEP:
                        if size:
                            children = values[-size:]
                            del values[-size:]
                            del state_stack[-size:]
                        else:
                            children = []
                    elif how == _PASS:
                        children = values.pop()
                        state_stack.pop()
                    else:
                        if how == _FIRST:
                            children = [values[-size]]
                        elif how == _FIRST_TAIL:
                            children = [values[-size]]
                            children += values[-1]
                        else:
                            children = splice(values[-size:], plan)
                        del values[-size:]
                        del state_stack[-size:]
                    push_value(children if action is None else action(context, children))
                state = actions[state_stack[-1]][name]  # a goto: always an int
                push_state(state)
                row = actions[state]
        # The end: reductions up to the start rule (never a shift on "$END").
        while True:
            act = actions[state].get("$END")
            if type(act) is not tuple:
                raise self._unexpected_token(text, pos, pos, state)
            action, size, how, plan, name = act
            # the main loop's ways of gathering children (a file ends with several of these
            # reductions, so the generic splice would cost every file a few calls)
            if how == _KEEP:
                children = values[-size:] if size else []
            elif how == _GROW:
                children = values[-size]
                children.append(values[1 - size])
            elif how == _PASS:
                children = values[-1]
            elif how == _FIRST:
                children = [values[-size]]
            elif how == _FIRST_TAIL:
                children = [values[-size]]
                children += values[-1]
            else:
                children = splice(values[-size:], plan)
            if size:
                del values[-size:]
                del state_stack[-size:]
            result = children if action is None else action(context, children)
            state = actions[state_stack[-1]][name]
            if state == self.end_state:
                return result
            push_state(state)
            push_value(result)

    @staticmethod
    def _splice(taken: list[Any], plan: tuple[int, ...]) -> list[Any]:
        """Drop filtered tokens and splice inlined rules' children, as the plan says.

        A left-recursive list rule (a repetition) hands its growing list back as its first
        child; extending that list in place keeps long lists linear, as Lark does.
        """
        children: list[Any]
        if plan[0] == 2:
            children = taken[0]
            start = 1
        else:
            children = []
            start = 0
        for index in range(start, len(plan)):
            code = plan[index]
            if code == 1:
                children.append(taken[index])
            elif code == 2:
                children.extend(taken[index])
        return children

    @staticmethod
    def _where(text: str, pos: int) -> tuple[int, int]:
        """Line (1-based) and line start offset of ``pos``: only _NL tokens hold newlines."""
        return text.count("\n", 0, pos) + 1, text.rfind("\n", 0, pos) + 1

    def _unexpected_text(self, text: str, pos: int, state: int) -> GrammarError:
        line, line_start = self._where(text, pos)
        end = text.find("\n", pos)
        rest = text[pos : end if end >= 0 else len(text)]
        word = rest.lstrip()
        return GrammarError(
            line,
            pos - line_start + 1 + len(rest) - len(word),
            word.split()[0] if word.split() else "end of line",
            self.accepts[state],
        )

    def _unexpected_token(self, text: str, start: int, end: int, state: int) -> GrammarError:
        line, line_start = self._where(text, start)
        value = text[start:end]
        seen = value.strip() or "end of line"
        column = start - line_start + 1 + (len(value) - len(value.lstrip()))
        return GrammarError(line, column, seen, self.accepts[state])


_TABLES_FORMAT = 3


@functools.cache
def fast_parser(escape: str) -> FastParser:
    """The driver for one escape character. Its tables are cached on disk (keyed by the
    grammar's text, Lark's version and Python's) so a CLI run needs neither Lark's analysis
    nor Lark's own cache; any problem with the cache file just means building them again."""
    import pickle

    path = _tables_cache_path(escape)
    try:
        with open(path, "rb") as f:
            tables = pickle.load(f)
        if isinstance(tables, Tables):
            return FastParser(tables)
    except (OSError, pickle.PickleError, EOFError, AttributeError, ImportError, TypeError):
        pass
    tables = Tables.from_lark(load_parser("dockerfile", escape), "dockerfile")
    try:
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as f:
            pickle.dump(tables, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, path)
    except OSError:
        pass
    return FastParser(tables)


def _tables_cache_path(escape: str) -> Path:
    """Where the driver tables for this grammar, escape, Python and installed Lark live.

    Lark is identified by its package file and modification time (found without importing
    it, which is the point: a cached run never imports Lark).
    """
    import hashlib
    import importlib.util
    import sys
    import tempfile

    spec = importlib.util.find_spec("lark")
    origin = spec.origin if spec is not None and spec.origin else "lark"
    try:
        stamp = os.stat(origin).st_mtime_ns
    except OSError:
        stamp = 0
    key = hashlib.sha256(
        f"{origin}|{stamp}|{sys.version_info[:2]}|{escape}|{_TABLES_FORMAT}|".encode()
        + grammar_text().encode()
    ).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / f".pybuild-dockerfile-{key}.pickle"


def parse_tree(text: str, escape: str) -> Branch:
    """Parse pre-processed Dockerfile text (see source.py); raise GrammarError on failure."""
    return fast_parser(escape).parse(text)


def parse_with(text: str, escape: str, semantics: Semantics, context: Any) -> Any:
    """Parse pre-processed Dockerfile text calling ``semantics``' actions (see FastParser.run)."""
    return fast_parser(escape).run(text, semantics, context)
