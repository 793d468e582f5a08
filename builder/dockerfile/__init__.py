"""The Dockerfile front end: text in, typed instructions out. No I/O, no execution.

``parse(text)`` runs the three passes: the pre-pass (``source``: BOM, directives, line joining,
heredoc bodies), the grammar (``grammar`` + ``transform.syntax_pass``: one node per
instruction, as BuildKit's parser sees it) and the typed pass (``transform.typed_pass``: the
checks ``docker build`` makes before running anything). ``syntax_only=True`` stops after the
grammar.
"""

from __future__ import annotations

from builder.dockerfile.instructions import Dockerfile, Node, Stage
from builder.dockerfile.source import Span, Warning

__all__ = ["Dockerfile", "Node", "Span", "Stage", "Warning", "parse"]


def parse(text: str, filename: str = "Dockerfile", *, syntax_only: bool = False) -> Dockerfile:
    """Parse a Dockerfile; raise a DockerfileError subclass (``FILE:LINE: message``) if bad."""
    from builder.dockerfile import lint, transform
    from builder.dockerfile.source import split_source

    source = split_source(text, filename)
    nodes, warnings = transform.syntax_pass(source)
    all_warnings = list(source.warnings) + warnings + lint.node_warnings(nodes)
    check = next((d.value for d in source.directives if d.name == "check"), None)
    meta_args: tuple = ()
    stages: tuple = ()
    if not syntax_only:
        meta_args, stages = transform.typed_pass(nodes, filename)
        all_warnings = lint.apply_check(all_warnings, check)
    return Dockerfile(
        filename=filename,
        escape=source.escape,
        directives=source.directives,
        nodes=tuple(nodes),
        meta_args=meta_args,
        stages=stages,
        warnings=tuple(all_warnings),
        typed=not syntax_only,
    )
