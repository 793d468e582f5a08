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
    from builder.dockerfile import transform  # lazily: it brings the grammar driver

    return transform.parse_dockerfile(text, filename, syntax_only)
