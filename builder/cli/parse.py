"""``pybuild parse``: show how a Dockerfile parses (instructions, stages, build plan).

Kept light on purpose: it imports only the front end and the plan (no httpx, rich or
zstandard), so it starts fast enough to run in editors and pre-commit hooks. Errors are
printed as ``FILE:LINE: message`` on stderr with exit status 1; warnings go to stderr and do
not fail the command.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from builder.errors import BuildError


def _build_args(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    import os

    for value in values:
        name, eq, arg = value.partition("=")
        if not name:
            raise click.BadParameter(f"{value!r}: expected KEY=VALUE", param_hint="--build-arg")
        if eq:
            out[name] = arg
        elif name in os.environ:  # docker build --build-arg NAME takes it from the environment
            out[name] = os.environ[name]
    return out


def document(dockerfile: Any, plan: Any) -> dict[str, Any]:
    nodes = list(dockerfile.nodes)
    index_of = {id(n): i for i, n in enumerate(nodes)}
    directives: dict[str, str] = {"escape": dockerfile.escape}
    for d in dockerfile.directives:
        directives[d.name] = d.value
    doc: dict[str, Any] = {
        "directives": directives,
        "meta_args": [
            {"name": name, "default": default}
            for arg in dockerfile.meta_args
            for name, default in arg.pairs
        ],
        "instructions": [n.to_json() for n in nodes],
    }
    if plan is not None:
        doc["stages"] = [
            node.to_json(
                [index_of[id(node.stage.from_.node)]]
                + [index_of[id(i.node)] for i in node.stage.instructions]
            )
            for node in plan.stages
        ]
        doc["plan"] = list(plan.order)
    else:
        doc["stages"] = []
        doc["plan"] = []
    return doc


def _outline(dockerfile: Any, plan: Any) -> str:
    lines: list[str] = []
    for d in dockerfile.directives:
        lines.append(f"# {d.name}={d.value}")
    for arg in dockerfile.meta_args:
        lines.append(f"{arg.line:>4}  ARG {' '.join(arg.node.args)}")
    if plan is None:
        for node in dockerfile.nodes:
            lines.append(f"{node.line:>4}  {node.original}")
        return "\n".join(lines)
    needed = set(plan.order)
    for node in plan.stages:
        mark = "" if node.index in needed else "  (not needed for the target)"
        name = f" {node.name!r}" if node.name else ""
        deps = f" needs {', '.join(map(str, node.depends_on))}" if node.depends_on else ""
        platform = f" --platform={node.platform}" if node.platform else ""
        lines.append(
            f"stage {node.index}{name}: FROM {node.base} ({node.base_kind}){platform}{deps}{mark}"
        )
        for instruction in node.stage.instructions:
            text = instruction.node.original
            if len(text) > 100:
                text = text[:97] + "..."
            heredocs = instruction.node.heredocs or (
                instruction.node.trigger.heredocs if instruction.node.trigger else ()
            )
            if heredocs:
                names = ", ".join(h.name for h in heredocs)
                text += f"   [heredoc: {names}]"
            lines.append(f"{instruction.line:>4}  {text}")
    levels = " | ".join(", ".join(map(str, level)) for level in plan.levels)
    lines.append(f"plan: target stage {plan.target}; levels (parallel within a level): {levels}")
    return "\n".join(lines)


@click.command("parse")
@click.option("--json", "as_json", is_flag=True, help="Print the parse result as JSON.")
@click.option("--syntax-only", is_flag=True, help="Check syntax only (skip the typed pass).")
@click.option("--target", default=None, help="Stage to build (default: the last one).")
@click.option(
    "--build-arg", "build_args", multiple=True, metavar="KEY=VALUE", help="Set a build ARG."
)
@click.argument("file", type=click.Path(allow_dash=True, dir_okay=False))
def parse(
    as_json: bool, syntax_only: bool, target: str | None, build_args: tuple[str, ...], file: str
) -> None:
    """Parse FILE (a Dockerfile, or - for stdin) and print its instructions and stages."""
    from builder.dockerfile import parse as parse_dockerfile

    args = _build_args(build_args)
    if file == "-":
        filename = "-"
        data = sys.stdin.buffer.read()
    else:
        filename = file
        try:
            with open(file, "rb") as f:
                data = f.read()
        except OSError as e:
            click.echo(f"{file}: cannot read: {e.strerror}", err=True)
            sys.exit(1)
    text = data.decode("utf-8", errors="replace")
    try:
        dockerfile = parse_dockerfile(text, filename, syntax_only=syntax_only)
        plan = None
        if not syntax_only:
            from builder.plan import build_plan

            plan = build_plan(dockerfile, target=target, build_args=args)
    except BuildError as e:
        click.echo(str(e), err=True)
        sys.exit(1)
    for warning in dockerfile.warnings:
        click.echo(str(warning), err=True)
    if as_json:
        click.echo(json.dumps(document(dockerfile, plan), indent=2, ensure_ascii=False))
    else:
        click.echo(_outline(dockerfile, plan))
