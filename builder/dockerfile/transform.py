"""Grammar reductions to nodes (the syntax pass), and nodes to typed instructions (the typed pass).

The syntax pass gives each instruction what BuildKit's parser gives it (flags, arguments,
JSON form, heredocs) and turns grammar failures into located DockerfileSyntaxErrors with a
message per instruction. The typed pass adds what ``docker build`` checks before it runs
anything: known instruction names (with a "did you mean"), the flag set of each instruction
(BuildKit's current one), argument counts, ``--mount`` specs, HEALTHCHECK options, ONBUILD
restrictions, FROM … AS names, and that there is a FROM.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from builder.dockerfile import instructions as ins
from builder.dockerfile import lint
from builder.dockerfile.grammar import Action, GrammarError, parse_with
from builder.dockerfile.instructions import MountSpec, Node
from builder.dockerfile.source import Span, SplitLines, Warning, split_lines
from builder.errors import (
    DockerfileError,
    DockerfileSyntaxError,
    InvalidFlagError,
    UnknownInstructionError,
)

KNOWN_INSTRUCTIONS = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
]

# BuildKit's flag sets (frontend/dockerfile/instructions/parse.go, dockerfile 1.x stable).
# kind: "s" string, "b" boolean (bare flag means true), "l" repeatable string list.
FLAGS: dict[str, dict[str, str]] = {
    "FROM": {"platform": "s"},
    # --device is in BuildKit's labs channel; accepted so such Dockerfiles parse.
    "RUN": {"mount": "l", "network": "s", "security": "s", "device": "l"},
    "COPY": {
        "from": "s",
        "chown": "s",
        "chmod": "s",
        "link": "b",
        "parents": "b",
        "exclude": "l",
    },
    "ADD": {
        "chown": "s",
        "chmod": "s",
        "link": "b",
        "checksum": "s",
        "keep-git-dir": "b",
        "unpack": "b",
        "exclude": "l",
    },
    "HEALTHCHECK": {
        "interval": "s",
        "timeout": "s",
        "start-period": "s",
        "start-interval": "s",
        "retries": "s",
    },
}
NETWORK_MODES = ("default", "none", "host")
SECURITY_MODES = ("sandbox", "insecure")
MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
_KNOWN = frozenset(KNOWN_INSTRUCTIONS)
_JSON = json.JSONDecoder()
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9\-_.]*$")

_KEYWORD_OF_RULE = {
    "from_": "FROM",
    "run": "RUN",
    "cmd": "CMD",
    "entrypoint": "ENTRYPOINT",
    "shell": "SHELL",
    "copy": "COPY",
    "add": "ADD",
    "volume": "VOLUME",
    "env": "ENV",
    "label": "LABEL",
    "arg": "ARG",
    "expose": "EXPOSE",
    "user": "USER",
    "workdir": "WORKDIR",
    "maintainer": "MAINTAINER",
    "stopsignal": "STOPSIGNAL",
    "healthcheck": "HEALTHCHECK",
    "onbuild": "ONBUILD",
}


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate (case-insensitive), as BuildKit's suggest package picks it."""
    pool = list(candidates)
    lowered = {c.lower(): c for c in pool}
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


# ---------------------------------------------------------------- syntax pass


def unquote_flag(raw: str) -> str:
    """A flag word with quotes removed and backslash escapes applied (extractBuilderFlags)."""
    if "'" not in raw and '"' not in raw and "\\" not in raw:
        return raw
    out: list[str] = []
    quote = ""
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if quote:
            if c == quote:
                quote = ""
            elif c == "\\":
                if i + 1 < n:
                    i += 1
                    out.append(raw[i])
            else:
                out.append(c)
        elif c in "'\"":
            quote = c
        elif c == "\\":
            if i + 1 < n:
                i += 1
                out.append(raw[i])
        else:
            out.append(c)
        i += 1
    return "".join(out)


class _NodeContext:
    """One parse's state for the semantic actions: the logical lines' texts, spans and
    heredocs (the n-th instruction the grammar completes is on the n-th line), and the
    JSON-like checks to make once the whole file has parsed (a grammar error anywhere is
    reported first, as before)."""

    __slots__ = ("deferred", "heredocs", "index", "spans", "texts", "warnings")

    def __init__(self, lines: SplitLines) -> None:
        self.texts = lines.texts
        self.spans = lines.spans
        self.heredocs = lines.heredocs
        self.index = 0
        self.deferred: list[tuple[str, str, Span]] = []
        self.warnings: list[Warning] = []

    def next_line(self) -> int:
        """The index of the next logical line, which the instruction being built takes."""
        index = self.index
        self.index = index + 1
        return index

    def check_json_like(self, keyword: str, value: str, span: Span) -> None:
        """BuildKit's JSON-or-shell rule: a JSON array of non-strings is an error; text that
        looks like a JSON array of strings but does not decode runs in shell form (warned)."""
        if not value.startswith("["):
            return
        try:
            decoded, _ = _JSON.raw_decode(value)
        except ValueError:
            if _LOOKS_LIKE_JSON.match(value):
                self.warnings.append(
                    Warning(
                        f"{keyword} arguments look like a JSON array but are not valid JSON; "
                        "they are used in shell form",
                        span,
                        "JSONArgsInvalid",
                    )
                )
            return
        if isinstance(decoded, list):
            raise DockerfileSyntaxError(
                "when using JSON array syntax, arrays must be comprised of strings only",
                filename=span.filename,
                line=span.line,
            )


# The grammar's argument shapes (the symbol after an instruction's keyword and flags) and
# how each becomes (args, json_form). Each takes the children from the argument on.
_ArgShape = Callable[[_NodeContext, list[Any], str, Span], tuple[tuple[str, ...], bool]]


def _no_args(
    context: _NodeContext, rest: list[Any], keyword: str, span: Span
) -> tuple[tuple[str, ...], bool]:
    return (), False


def _json_args(
    context: _NodeContext, rest: list[Any], keyword: str, span: Span
) -> tuple[tuple[str, ...], bool]:
    value, _ = _JSON.raw_decode(rest[0].lstrip())
    return tuple(value), True


def _text_args(
    context: _NodeContext, rest: list[Any], keyword: str, span: Span
) -> tuple[tuple[str, ...], bool]:
    value = rest[0].strip()
    if value[0] == "[" and keyword in _MAYBE_JSON:
        context.deferred.append((keyword, value, span))
    return (value,), False


def _heredoc_command_args(
    context: _NodeContext, rest: list[Any], keyword: str, span: Span
) -> tuple[tuple[str, ...], bool]:
    return (rest[0],), False  # heredoc_command's action joined its words


def _copy_words_args(
    context: _NodeContext, rest: list[Any], keyword: str, span: Span
) -> tuple[tuple[str, ...], bool]:
    words: tuple[str, ...] = rest[0]  # copy_words' action stripped them
    if words[0].startswith("["):
        context.deferred.append((keyword, " ".join(words), span))
    return words, False


def _word_args(
    context: _NodeContext, rest: list[Any], keyword: str, span: Span
) -> tuple[tuple[str, ...], bool]:
    words = tuple([t.lstrip() for t in rest])
    if keyword == "VOLUME" and words[0].startswith("["):
        context.deferred.append((keyword, " ".join(words), span))
    return words, False


def _pair_args(
    context: _NodeContext, rest: list[Any], keyword: str, span: Span
) -> tuple[tuple[str, ...], bool]:
    out: list[str] = []
    for token in rest:
        key, _, value = token.lstrip().partition("=")
        out += (key, value)
    return tuple(out), False


_ARG_SHAPES: dict[str | None, _ArgShape] = {
    None: _no_args,
    "JSON_ARRAY": _json_args,
    "TEXT": _text_args,
    "COMMAND_TEXT": _text_args,
    "heredoc_command": _heredoc_command_args,
    "copy_words": _copy_words_args,
    # WORD+, SHELL_WORD*, LEGACY_KEY TEXT, FROM's WORD [AS WORD]: each word without its blanks
    "WORD": _word_args,
    "LEGACY_KEY": _word_args,
    # Lark's helpers for `WORD+`, `SHELL_WORD*`, `PAIR+`, named after the rule they first
    # appear in; their numbers are dropped (see _shape) so a grammar edit cannot break them
    "__volume_plus": _word_args,
    "__arg_star": _word_args,
    "__env_plus": _pair_args,
}
_HEREDOC_RULES = frozenset({"run", "copy", "add"})
_HELPER_NUMBER = re.compile(r"(?<=^__)(.*)_\d+$")


def _shape(symbols: tuple[str, ...], index: int) -> _ArgShape:
    """How the argument starting at ``symbols[index]`` becomes (args, json_form)."""
    if index >= len(symbols):
        return _no_args
    return _ARG_SHAPES[_HELPER_NUMBER.sub(r"\1", symbols[index])]


def _all_nodes(context: _NodeContext, children: list[Any]) -> list[Node]:
    """dockerfile: the directives' values (None), then preamble and stages (node lists)."""
    out: list[Node] = []
    for part in children:
        if part:
            out.extend(part)
    return out


def _nothing(context: _NodeContext, children: list[Any]) -> None:
    return None


def _flags(context: _NodeContext, children: list[Any]) -> tuple[str, ...]:
    return tuple([unquote_flag(t.lstrip()) for t in children])


def _flags_then_end(context: _NodeContext, children: list[Any]) -> tuple[str, ...]:
    return tuple([unquote_flag(t.lstrip()) for t in children[:-1]])  # the last is the "--"


def _heredoc_command(context: _NodeContext, children: list[Any]) -> str:
    return "".join(children).lstrip()  # the tokens are contiguous: the command as written


def _copy_words(context: _NodeContext, children: list[Any]) -> tuple[str, ...]:
    return tuple([t.lstrip() for t in children])


def node_semantics(rule: str, symbols: tuple[str, ...]) -> Action | None:
    """The semantic action building nodes for one grammar rule alternative (see
    grammar.FastParser.run): nodes come straight from the reductions, no tree in between."""
    if rule == "dockerfile":
        return _all_nodes
    if rule == "directive":
        return _nothing
    if rule.startswith("_") or rule in ("preamble", "stage"):
        return None  # a list of nodes (inlined rules splice into their parent)
    if rule.endswith("_flags"):
        return _flags_then_end if symbols[-1] == "END_OF_FLAGS" else _flags
    if rule == "heredoc_command":
        return _heredoc_command
    if rule == "copy_words":
        return _copy_words
    return _instruction_semantics(rule, symbols)


def _instruction_semantics(rule: str, symbols: tuple[str, ...]) -> Action:
    keyword = _KEYWORD_OF_RULE.get(rule)
    flagged = len(symbols) > 1 and symbols[1].endswith("_flags")
    first = 2 if flagged else 1  # index of the first argument child
    if rule == "onbuild":
        has_trigger = len(symbols) > first

        def onbuild(context: _NodeContext, children: list[Any]) -> Node:
            flags: tuple[str, ...] = children[1] if flagged else ()
            if has_trigger:
                trigger: Node = children[first]
                index = context.index - 1  # the trigger took the line
                span, text = context.spans[index], context.texts[index]
                return Node("ONBUILD", span, flags, (), False, (), trigger, text)
            index = context.next_line()
            span, text = context.spans[index], context.texts[index]
            return Node("ONBUILD", span, flags, (), False, (), None, text)

        return onbuild
    if rule == "healthcheck":
        has_kind = len(symbols) > first
        shape = _shape(symbols, first + 1)

        def healthcheck(context: _NodeContext, children: list[Any]) -> Node:
            index = context.next_line()
            span = context.spans[index]
            flags: tuple[str, ...] = children[1] if flagged else ()
            args: tuple[str, ...] = ()
            json_form = False
            if has_kind:
                args, json_form = shape(context, children[first + 1 :], "HEALTHCHECK", span)
                args = (children[first].lstrip(), *args)
            text = context.texts[index]
            return Node("HEALTHCHECK", span, flags, args, json_form, (), None, text)

        return healthcheck
    shape = _shape(symbols, first)
    takes_heredocs = rule in _HEREDOC_RULES and len(symbols) > first
    if shape is _text_args and keyword is not None:
        # the commonest shape (RUN/CMD/WORKDIR/USER text), with _text_args written in
        maybe_json = keyword in _MAYBE_JSON

        def text_instruction(context: _NodeContext, children: list[Any]) -> Node:
            index = context.index
            context.index = index + 1
            span = context.spans[index]
            value = children[first].strip()
            if maybe_json and value[0] == "[":
                context.deferred.append((keyword, value, span))
            flags: tuple[str, ...] = children[1] if flagged else ()
            heredocs = context.heredocs[index] if takes_heredocs else ()
            text = context.texts[index]
            return Node(keyword, span, flags, (value,), False, heredocs, None, text)

        return text_instruction

    def instruction(context: _NodeContext, children: list[Any]) -> Node:
        index = context.index  # context.next_line(), inlined: this runs per instruction
        context.index = index + 1
        span = context.spans[index]
        word = keyword or children[0].lstrip().upper()
        flags: tuple[str, ...] = children[1] if flagged else ()
        args, json_form = shape(context, children[first:], word, span)
        heredocs = context.heredocs[index] if takes_heredocs and not json_form else ()
        # positional: this runs once per instruction and keyword arguments cost
        return Node(word, span, flags, args, json_form, heredocs, None, context.texts[index])

    return instruction


_MAYBE_JSON = frozenset({"RUN", "CMD", "ENTRYPOINT", "SHELL", "HEALTHCHECK"})
_LOOKS_LIKE_JSON = re.compile(r"""^\[\s*["'].*\]\s*$""")


def _syntax_message(line_text: str, error: GrammarError) -> str:
    keyword = line_text.split(None, 1)[0].upper() if line_text.strip() else ""
    seen = error.seen
    if keyword == "FROM":
        return "FROM requires either one or three arguments (FROM [--platform=…] image [AS name])"
    if keyword in ("ENV", "LABEL"):
        if seen == "end of line":
            return f"{keyword} must have two arguments"
        return f"Syntax error - can't find = in {seen!r}. Must be of the form: name=value"
    if keyword == "ONBUILD":
        return f"ONBUILD trigger is not a valid instruction: unexpected {seen!r}"
    return f"{keyword or 'instruction'}: unexpected {seen!r}"


def syntax_pass(source: SplitLines) -> tuple[list[Node], list[Warning]]:
    """Parse the pre-processed source with the grammar and build its nodes."""
    parts = _directive_lines(source)
    parts += source.texts
    text = "\n".join(parts) + "\n"
    context = _NodeContext(source)
    try:
        nodes: list[Node] = parse_with(text, source.escape, node_semantics, context)
    except GrammarError as e:
        index = e.line - len(source.directives) - 1
        if 0 <= index < len(source.texts):
            span = source.spans[index]
            column = None
            if span.line == span.end_line and e.column:
                column = e.column + source.indents[index]
            raise DockerfileSyntaxError(
                _syntax_message(source.texts[index], e),
                filename=source.filename,
                line=span.line,
                column=column,
            ) from None
        raise DockerfileSyntaxError(
            f"unexpected {e.seen!r}", filename=source.filename, line=None
        ) from None
    except DockerfileError:
        raise
    except (ValueError, AssertionError, IndexError) as e:  # a grammar/transform mismatch
        raise DockerfileSyntaxError(f"cannot parse: {e}", filename=source.filename) from None
    for keyword, value, span in context.deferred:
        context.check_json_like(keyword, value, span)
    return nodes, context.warnings


def _directive_lines(source: SplitLines) -> list[str]:
    return [f"# {d.name}={d.value}" for d in source.directives]


# ---------------------------------------------------------------- typed pass


class FlagValues:
    """Parsed ``--name=value`` flags of one instruction, validated against its flag set."""

    def __init__(self, node: Node, allowed: dict[str, str]) -> None:
        values: dict[str, str | bool | list[str]] = {}
        self.values = values
        for flag in node.flags:
            if flag[:2] != "--":
                raise _err(InvalidFlagError, node, f"arg should start with -- : {flag}")
            name, eq, value = flag[2:].partition("=")
            kind = allowed.get(name)
            if kind == "s" and eq and name not in values:  # the common case, checks below
                values[name] = value
                continue
            if kind is None:
                hint = suggest(name, allowed)
                message = f"unknown flag: {name}"
                if hint:
                    message += f" (did you mean {hint}?)"
                elif not allowed:
                    message += f" ({node.keyword} takes no flags)"
                else:
                    known = ", ".join(f"--{k}" for k in allowed)
                    message += f" ({node.keyword} accepts {known})"
                raise _err(InvalidFlagError, node, message)
            if kind == "l":
                existing = self.values.setdefault(name, [])
                assert isinstance(existing, list)
                if not eq:
                    raise _err(InvalidFlagError, node, f"Missing a value on flag: {name}")
                existing.append(value)
                continue
            if name in self.values:
                raise _err(InvalidFlagError, node, f"duplicate flag specified: {name}")
            if kind == "b":
                if not eq or value.lower() in ("true", "1", "t"):
                    self.values[name] = True
                elif value.lower() in ("false", "0", "f", ""):
                    self.values[name] = False
                else:
                    raise _err(
                        InvalidFlagError,
                        node,
                        f"expecting boolean value for flag {name}, not: {value}",
                    )
            else:
                if not eq:
                    raise _err(InvalidFlagError, node, f"Missing a value on flag: {name}")
                self.values[name] = value

    def string(self, name: str) -> str | None:
        value = self.values.get(name)
        return value if isinstance(value, str) else None

    def boolean(self, name: str) -> bool | None:
        value = self.values.get(name)
        return value if isinstance(value, bool) else None

    def strings(self, name: str) -> list[str]:
        value = self.values.get(name)
        return value if isinstance(value, list) else []


_NO_FLAGS: dict[str, str] = {}
_EMPTY_FLAGS = FlagValues(Node("", Span("", 0, 0)), _NO_FLAGS)


def _err(cls: type[DockerfileError], node: Node, message: str) -> DockerfileError:
    return cls(message, filename=node.span.filename, line=node.span.line)


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float | None:
    """Go's time.ParseDuration, in seconds; None when malformed."""
    if text in ("0", "+0", "-0"):
        return 0.0
    body = text.lstrip("+-")
    sign = -1.0 if text.startswith("-") else 1.0
    if not body:
        return None
    total, pos = 0.0, 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if not match:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return sign * total


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?$", re.I)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_mount(spec: str, node: Node) -> MountSpec:
    """One ``--mount`` value (CSV of key=value) into a MountSpec, with BuildKit's checks."""
    fields: dict[str, str | None] = {}
    for part in _csv_fields(spec):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        fields[key] = value if eq else None
    mount_type = (fields.pop("type", None) or "bind").lower()
    # Values may use build args (type=$MOUNT_TYPE); those are checked after expansion.
    if mount_type not in MOUNT_TYPES and "$" not in mount_type:
        raise _err(InvalidFlagError, node, f"unsupported mount type {mount_type!r}")
    target = None
    for key in ("target", "dst", "destination"):
        if key in fields:
            target = fields.pop(key)
    source = None
    for key in ("source", "src"):
        if key in fields:
            source = fields.pop(key)
    readonly: bool | None = None
    from_ = mount_id = sharing = env = None
    mode = uid = gid = size = None
    required: bool | None = None
    if fields:  # more than type, target and source
        for key in ("readonly", "ro"):
            if key in fields:
                readonly = _bool_field(fields.pop(key), key, node)
        if "rw" in fields:
            rw = _bool_field(fields.pop("rw"), "rw", node)
            readonly = not rw
        from_ = fields.pop("from", None)
        mount_id = fields.pop("id", None)
        sharing = fields.pop("sharing", None)
        if (
            sharing is not None
            and sharing not in ("shared", "private", "locked")
            and "$" not in sharing
        ):
            raise _err(InvalidFlagError, node, f"unsupported sharing value {sharing!r}")
        mode = _int_field(fields.pop("mode", None), "mode", node, base=8)
        uid = _int_field(fields.pop("uid", None), "uid", node)
        gid = _int_field(fields.pop("gid", None), "gid", node)
        if "size" in fields:
            raw = fields.pop("size") or ""
            match = _SIZE.match(raw.strip())
            if not match:
                raise _err(InvalidFlagError, node, f"invalid size {raw!r} in --mount")
            unit = (match.group(2) or "").lower().rstrip("b").rstrip("i")
            size = int(float(match.group(1)) * _SIZE_UNITS.get(unit, 1))
        if "required" in fields:
            required = _bool_field(fields.pop("required"), "required", node)
        env = fields.pop("env", None)
        allowed_extra = {"relabel"}
        unknown = [k for k in fields if k not in allowed_extra]
        if unknown:
            known = [
                "type",
                "target",
                "source",
                "from",
                "id",
                "readonly",
                "rw",
                "sharing",
                "mode",
                "uid",
                "gid",
                "size",
                "required",
                "env",
            ]
            hint = suggest(unknown[0], known)
            message = f"unexpected key '{unknown[0]}' in '{spec}'"
            if hint:
                message += f" (did you mean {hint}?)"
            raise _err(InvalidFlagError, node, message)
    # A bind mount without target= is accepted (BuildKit's own Dockerfiles use
    # `--mount=from=stage`); cache and tmpfs mounts need somewhere to go.
    if mount_type in ("cache", "tmpfs") and not target:
        raise _err(InvalidFlagError, node, f"mount type {mount_type} requires a target (target=…)")
    if mount_type == "secret" and not target and not mount_id and not env and not source:
        raise _err(InvalidFlagError, node, "secret mount requires an id, target or env")
    if from_ is not None and mount_type in ("tmpfs", "secret", "ssh"):
        raise _err(InvalidFlagError, node, f"from= is not allowed on a {mount_type} mount")
    # positional, in field order (keyword arguments cost more than the rest of this)
    return MountSpec(
        mount_type,
        target,
        source,
        from_,
        mount_id,
        readonly,
        sharing,
        mode,
        uid,
        gid,
        size,
        required,
        env,
        spec,
    )


def _csv_fields(spec: str) -> list[str]:
    """Go's encoding/csv on one record: commas separate, double quotes group."""
    if '"' not in spec:
        return [f for f in spec.split(",") if f]
    out: list[str] = []
    field: list[str] = []
    quoted = False
    i = 0
    while i < len(spec):
        c = spec[i]
        if quoted:
            if c == '"':
                if i + 1 < len(spec) and spec[i + 1] == '"':
                    field.append('"')
                    i += 1
                else:
                    quoted = False
            else:
                field.append(c)
        elif c == '"':
            quoted = True
        elif c == ",":
            out.append("".join(field))
            field = []
        else:
            field.append(c)
        i += 1
    out.append("".join(field))
    return [f for f in out if f]


def _bool_field(value: str | None, key: str, node: Node) -> bool:
    if value is None:
        return True
    lowered = value.lower()
    if lowered in ("true", "1", "t"):
        return True
    if lowered in ("false", "0", "f"):
        return False
    raise _err(InvalidFlagError, node, f"invalid value for {key}: {value!r}")


def _int_field(value: str | None, key: str, node: Node, base: int = 10) -> int | None:
    if value is None:
        return None
    try:
        return int(value, base)
    except ValueError:
        raise _err(InvalidFlagError, node, f"invalid value for {key}: {value!r}") from None


def _require(node: Node, ok: bool, message: str) -> None:
    if not ok:
        raise _err(DockerfileSyntaxError, node, message)


def typed_instruction(node: Node) -> ins.Instruction:
    """The typed form of one node (raises DockerfileError subclasses with its location)."""
    kw = node.keyword
    build = _TYPED.get(kw)
    if build is None:
        hint = suggest(kw, KNOWN_INSTRUCTIONS)
        message = f"unknown instruction: {kw}"
        if hint:
            message += f" (did you mean {hint}?)"
        raise _err(UnknownInstructionError, node, message)
    flags = FlagValues(node, FLAGS.get(kw, _NO_FLAGS)) if node.flags else _EMPTY_FLAGS
    return build(node, flags)


# One builder per instruction. The constructors are called positionally (in the classes'
# field order): this runs once per instruction and keyword arguments cost.


def _typed_from(node: Node, flags: FlagValues) -> ins.From:
    # The grammar guarantees one word or "image AS name".
    args = node.args
    name = None
    if len(args) == 3:
        name = args[2].lower()
        if not _STAGE_NAME.match(name):
            raise _err(
                DockerfileSyntaxError,
                node,
                f"invalid name for build stage: {args[2]!r}, name can't start with a "
                "number or contain symbols",
            )
    return ins.From(node, args[0], name, flags.string("platform"))


def _typed_run(node: Node, flags: FlagValues) -> ins.Run:
    args = node.args
    if not args and not node.heredocs:
        raise _err(DockerfileSyntaxError, node, "RUN requires at least one argument")
    if flags is _EMPTY_FLAGS:
        return ins.Run(node, args, node.json_form, (), None, None, node.heredocs)
    values: Any = flags.values  # kinds fixed by FLAGS["RUN"]: mount a list, network/security str
    mounts = tuple([parse_mount(m, node) for m in values.get("mount", ())])
    network = values.get("network")
    if network is not None and network not in NETWORK_MODES and "$" not in network:
        raise _err(
            InvalidFlagError,
            node,
            f"unsupported network mode {network!r} (use one of {', '.join(NETWORK_MODES)})",
        )
    security = values.get("security")
    if security is not None and security not in SECURITY_MODES and "$" not in security:
        raise _err(
            InvalidFlagError,
            node,
            f"unsupported security mode {security!r} (use sandbox or insecure)",
        )
    return ins.Run(node, args, node.json_form, mounts, network, security, node.heredocs)


def _typed_cmd(node: Node, flags: FlagValues) -> ins.Cmd:
    return ins.Cmd(node, node.args, node.json_form)


def _typed_entrypoint(node: Node, flags: FlagValues) -> ins.Entrypoint:
    return ins.Entrypoint(node, node.args, node.json_form)


def _typed_shell(node: Node, flags: FlagValues) -> ins.Shell:
    _require(node, node.json_form, "SHELL requires the arguments to be in JSON form")
    _require(node, bool(node.args), "SHELL requires at least one argument")
    return ins.Shell(node, node.args)


def _require_source_and_dest(node: Node) -> None:
    args = node.args
    if len(args) < 2:
        kw = node.keyword
        raise _err(
            DockerfileSyntaxError,
            node,
            f"{kw} requires at least two arguments, but only one was provided. Destination "
            "could not be determined."
            if len(args) == 1
            else f"{kw} requires at least two arguments",
        )


def _typed_copy(node: Node, flags: FlagValues) -> ins.Copy:
    _require_source_and_dest(node)
    args = node.args
    if flags is _EMPTY_FLAGS:
        return ins.Copy(
            node, args[:-1], args[-1], None, None, None, False, False, (), node.heredocs
        )
    values: Any = flags.values  # kinds fixed by FLAGS["COPY"]
    return ins.Copy(
        node,
        args[:-1],
        args[-1],
        values.get("from"),
        values.get("chown"),
        values.get("chmod"),
        bool(values.get("link")),
        bool(values.get("parents")),
        tuple(values.get("exclude", ())),
        node.heredocs,
    )


def _typed_add(node: Node, flags: FlagValues) -> ins.Add:
    _require_source_and_dest(node)
    args = node.args
    return ins.Add(
        node,
        sources=args[:-1],
        dest=args[-1],
        chown=flags.string("chown"),
        chmod=flags.string("chmod"),
        link=bool(flags.boolean("link")),
        checksum=flags.string("checksum"),
        keep_git_dir=bool(flags.boolean("keep-git-dir")),
        unpack=flags.boolean("unpack"),
        exclude=tuple(flags.strings("exclude")),
        heredocs=node.heredocs,
    )


def _pairs(node: Node) -> tuple[tuple[str, str], ...]:
    args = node.args
    if not args:
        raise _err(DockerfileSyntaxError, node, f"{node.keyword} requires at least one argument")
    keys = args[0::2][: len(args) // 2]  # the keys that have a value (zip's pairs)
    if "" in keys:
        raise _err(DockerfileSyntaxError, node, f"{node.keyword} names can not be blank")
    return tuple(zip(keys, args[1::2]))


def _typed_env(node: Node, flags: FlagValues) -> ins.Env:
    return ins.Env(node, _pairs(node))


def _typed_label(node: Node, flags: FlagValues) -> ins.Label:
    return ins.Label(node, _pairs(node))


def _typed_arg(node: Node, flags: FlagValues) -> ins.Arg:
    args = node.args
    if not args:
        raise _err(DockerfileSyntaxError, node, "ARG requires at least one argument")
    arg_pairs: list[tuple[str, str | None]] = []
    for word in args:
        name, eq, default = word.partition("=")
        if not name:
            raise _err(DockerfileSyntaxError, node, f"ARG names can not be blank: {word!r}")
        arg_pairs.append((name, default if eq else None))
    return ins.Arg(node, tuple(arg_pairs))


def _typed_expose(node: Node, flags: FlagValues) -> ins.Expose:
    if not node.args:
        raise _err(DockerfileSyntaxError, node, "EXPOSE requires at least one argument")
    return ins.Expose(node, node.args)


def _typed_volume(node: Node, flags: FlagValues) -> ins.Volume:
    args = node.args
    _require(node, bool(args), "VOLUME requires at least one argument")
    for path in args:
        _require(node, path.strip() != "", "VOLUME specified can not be an empty string")
    return ins.Volume(node, args)


def _one_argument(node: Node) -> str:
    args = node.args
    if len(args) != 1:
        raise _err(DockerfileSyntaxError, node, f"{node.keyword} requires exactly one argument")
    return args[0]


def _typed_user(node: Node, flags: FlagValues) -> ins.User:
    return ins.User(node, _one_argument(node))


def _typed_workdir(node: Node, flags: FlagValues) -> ins.Workdir:
    return ins.Workdir(node, _one_argument(node))


def _typed_maintainer(node: Node, flags: FlagValues) -> ins.Maintainer:
    return ins.Maintainer(node, _one_argument(node))


def _typed_stopsignal(node: Node, flags: FlagValues) -> ins.Stopsignal:
    return ins.Stopsignal(node, _one_argument(node))


def _typed_onbuild(node: Node, flags: FlagValues) -> ins.Onbuild:
    _require(node, node.trigger is not None, "ONBUILD requires at least one argument")
    assert node.trigger is not None
    trigger_kw = node.trigger.keyword
    if trigger_kw == "ONBUILD":
        raise _err(
            DockerfileSyntaxError, node, "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"
        )
    if trigger_kw in ("FROM", "MAINTAINER"):
        raise _err(DockerfileSyntaxError, node, f"{trigger_kw} isn't allowed as an ONBUILD trigger")
    return ins.Onbuild(node, trigger=typed_instruction(node.trigger))


def _healthcheck(node: Node, flags: FlagValues) -> ins.Healthcheck:
    args = node.args
    _require(node, bool(args), "HEALTHCHECK requires at least one argument")
    kind = args[0].upper()
    if kind == "NONE":
        _require(node, len(args) == 1, "HEALTHCHECK NONE takes no arguments")
        return ins.Healthcheck(node, test=("NONE",))
    if kind != "CMD":
        raise _err(
            DockerfileSyntaxError, node, f'Unknown type "{args[0]}" in HEALTHCHECK (try CMD)'
        )
    command = args[1:]
    _require(node, bool(command), "Missing command after HEALTHCHECK CMD")
    test = ("CMD", *command) if node.json_form else ("CMD-SHELL", command[0])

    def interval(name: str) -> float | None:
        raw = flags.string(name)
        if raw is None or raw == "":
            return None
        seconds = parse_duration(raw)
        if seconds is None:
            raise _err(InvalidFlagError, node, f"time: invalid duration {raw!r} in --{name}")
        if seconds != 0 and seconds < 0.001:
            raise _err(InvalidFlagError, node, f"Interval {name} cannot be less than 1ms")
        if seconds < 0:
            raise _err(InvalidFlagError, node, f"Interval {name} cannot be negative")
        return seconds

    retries: int | None = None
    raw_retries = flags.string("retries")
    if raw_retries:
        try:
            retries = int(raw_retries)
        except ValueError:
            raise _err(InvalidFlagError, node, f"invalid --retries value {raw_retries!r}") from None
        if retries < 0:
            raise _err(InvalidFlagError, node, f"--retries cannot be negative ({retries})")
    return ins.Healthcheck(
        node,
        test=test,
        interval=interval("interval"),
        timeout=interval("timeout"),
        start_period=interval("start-period"),
        start_interval=interval("start-interval"),
        retries=retries,
    )


_TYPED: dict[str, Callable[[Node, FlagValues], ins.Instruction]] = {
    "FROM": _typed_from,
    "RUN": _typed_run,
    "CMD": _typed_cmd,
    "ENTRYPOINT": _typed_entrypoint,
    "SHELL": _typed_shell,
    "COPY": _typed_copy,
    "ADD": _typed_add,
    "ENV": _typed_env,
    "LABEL": _typed_label,
    "ARG": _typed_arg,
    "EXPOSE": _typed_expose,
    "VOLUME": _typed_volume,
    "USER": _typed_user,
    "WORKDIR": _typed_workdir,
    "MAINTAINER": _typed_maintainer,
    "STOPSIGNAL": _typed_stopsignal,
    "HEALTHCHECK": _healthcheck,
    "ONBUILD": _typed_onbuild,
}
assert set(_TYPED) == _KNOWN


def typed_pass(
    nodes: list[Node], filename: str
) -> tuple[tuple[ins.Arg, ...], tuple[ins.Stage, ...]]:
    """Global ARGs and stages from the nodes; the checks ``docker build`` makes up front."""
    meta: list[ins.Arg] = []
    stages: list[ins.Stage] = []
    current: ins.From | None = None
    body: list[ins.Instruction] = []
    names: dict[str, int] = {}

    def close() -> None:
        if current is not None:
            stages.append(ins.Stage(len(stages), current, tuple(body)))

    for node in nodes:
        build = _TYPED.get(node.keyword)
        # typed_instruction inlined for the common case (a known keyword without flags)
        typed = (
            typed_instruction(node) if build is None or node.flags else build(node, _EMPTY_FLAGS)
        )
        if type(typed) is ins.From:
            close()
            if typed.name is not None:
                if typed.name in names:
                    raise _err(
                        DockerfileSyntaxError,
                        node,
                        f"duplicate stage name {typed.name!r} (first defined on line "
                        f"{names[typed.name]})",
                    )
                names[typed.name] = node.line
            current, body = typed, []
        elif current is None:
            if not isinstance(typed, ins.Arg):
                raise _err(
                    DockerfileSyntaxError,
                    node,
                    f"{node.keyword} before the first FROM: only ARG may come before FROM "
                    "(no build stage in current context)",
                )
            meta.append(typed)
        else:
            body.append(typed)
    close()
    if not stages:
        last = nodes[-1].span if nodes else Span(filename, 1, 1)
        raise DockerfileSyntaxError(
            "dockerfile contains no stages to build (no FROM instruction)",
            filename=filename,
            line=last.line,
        )
    return tuple(meta), tuple(stages)


def parse_dockerfile(text: str, filename: str, syntax_only: bool) -> ins.Dockerfile:
    """The three passes (see builder.dockerfile.parse, which is this)."""
    source = split_lines(text, filename)
    nodes, warnings = syntax_pass(source)
    all_warnings = list(source.warnings) + warnings + lint.node_warnings(nodes)
    meta_args: tuple[ins.Arg, ...] = ()
    stages: tuple[ins.Stage, ...] = ()
    if not syntax_only:
        meta_args, stages = typed_pass(nodes, filename)
        if all_warnings:  # (with none, apply_check has nothing to drop or raise)
            check = None
            for directive in source.directives:
                if directive.name == "check":
                    check = directive.value
                    break
            all_warnings = lint.apply_check(all_warnings, check)
    # positional: filename, escape, directives, nodes, meta_args, stages, warnings, typed
    return ins.Dockerfile(
        filename,
        source.escape,
        source.directives,
        tuple(nodes),
        meta_args,
        stages,
        tuple(all_warnings),
        not syntax_only,
    )
