"""BuildKit's ``Node.Dump()`` format for our nodes, to compare with upstream ``result`` files."""

from __future__ import annotations

import json

from builder.dockerfile.instructions import Node


def go_quote(s: str) -> str:
    """Go's strconv.Quote for the characters the corpus uses."""
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch in "\a\b\f\v":
            out.append("\\" + {"\a": "a", "\b": "b", "\f": "f", "\v": "v"}[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _values(node: Node) -> list[str]:
    if node.keyword in ("ENV", "LABEL"):
        rest = node.original.split(None, 1)[1] if " " in node.original.strip() else ""
        legacy = len(node.args) == 2 and not rest.lstrip().startswith(f"{node.args[0]}=")
        sep = "" if legacy else "="
        out: list[str] = []
        for key, value in zip(node.args[0::2], node.args[1::2]):
            out += [key, value, sep]
        return out
    return list(node.args)


def dump(node: Node) -> str:
    text = node.keyword.lower()
    if node.flags:
        text += " [" + " ".join(go_quote(f) for f in node.flags) + "]"
    if node.trigger is not None:
        text += " (" + dump(node.trigger) + ")"
    for value in _values(node):
        text += " " + go_quote(value)
    return text.strip()


def dump_all(nodes: list[Node]) -> str:
    return "".join(f"({dump(n)})\n" for n in nodes)


__all__ = ["dump", "dump_all", "json"]
