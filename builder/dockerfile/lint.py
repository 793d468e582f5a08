"""Check rules as data, and the ``# check=`` directive that turns them off or into errors.

BuildKit reports these as build warnings (``docker build --check`` lists them); pybuild prints
them on stderr. A rule is a name, a message template and the documentation link BuildKit uses,
so users can look the name up. ``# check=skip=A,B`` or ``skip=all`` silences rules;
``error=true`` makes any remaining warning fail the parse.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from builder.dockerfile.instructions import Node
from builder.dockerfile.source import Warning
from builder.errors import DockerfileSyntaxError


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    message: str
    url: str


RULES = {
    rule.name: rule
    for rule in (
        Rule(
            "MaintainerDeprecated",
            "MAINTAINER instruction is deprecated in favor of using label",
            "https://docs.docker.com/go/dockerfile/rule/maintainer-deprecated/",
        ),
        Rule(
            "NoEmptyContinuation",
            "empty continuation line",
            "https://docs.docker.com/go/dockerfile/rule/no-empty-continuation/",
        ),
        Rule(
            "JSONArgsInvalid",
            "arguments look like a JSON array but are not valid JSON",
            "https://docs.docker.com/reference/dockerfile/#shell-and-exec-form",
        ),
        Rule(
            "FromAsCasing",
            "'as' and 'FROM' keywords' casing do not match",
            "https://docs.docker.com/go/dockerfile/rule/from-as-casing/",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class CheckConfig:
    """The parsed ``# check=`` directive."""

    skip: frozenset[str] = frozenset()
    skip_all: bool = False
    error: bool = False

    @classmethod
    def parse(cls, value: str | None) -> CheckConfig:
        if not value:
            return cls()
        skip: set[str] = set()
        skip_all = error = False
        for part in value.split(";"):
            key, _, val = part.strip().partition("=")
            key = key.strip().lower()
            if key == "skip":
                names = {v.strip() for v in val.split(",") if v.strip()}
                if any(n.lower() == "all" for n in names):
                    skip_all = True
                skip |= names
            elif key == "error":
                error = val.strip().lower() in ("true", "1")
        return cls(frozenset(skip), skip_all, error)

    def enabled(self, rule: str) -> bool:
        return not self.skip_all and rule not in self.skip


def node_warnings(nodes: Iterable[Node]) -> list[Warning]:
    """Warnings about the nodes themselves (deprecated or inconsistent syntax)."""
    out: list[Warning] = []
    for node in nodes:
        if node.keyword == "MAINTAINER":
            out.append(
                Warning(RULES["MaintainerDeprecated"].message, node.span, "MaintainerDeprecated")
            )
        if node.keyword == "FROM" and len(node.args) == 3:
            keyword = node.original.split(None, 1)[0]
            as_word = node.args[1]
            if (keyword.isupper() and as_word.islower()) or (
                keyword.islower() and as_word.isupper()
            ):
                out.append(Warning(RULES["FromAsCasing"].message, node.span, "FromAsCasing"))
    return out


def apply_check(warnings: Iterable[Warning], check: str | None) -> list[Warning]:
    """Drop skipped rules; raise the first remaining warning if ``error=true``."""
    config = CheckConfig.parse(check)
    kept = [w for w in warnings if not w.rule or config.enabled(w.rule)]
    kept = [replace(w, message=f"{w.message} [{w.rule}]") if w.rule else w for w in kept]
    if config.error and kept:
        first = kept[0]
        raise DockerfileSyntaxError(
            f"lint error: {first.message}", filename=first.span.filename, line=first.span.line
        )
    return kept
