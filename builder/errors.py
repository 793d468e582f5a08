"""Errors raised by the builder: Dockerfile front end, context, plan and execution.

Exception tree::

    BuildError
    ├── DockerfileError            bad Dockerfile input; ``str()`` is ``FILE:LINE[:COL]: message``
    │   ├── DockerfileSyntaxError  the text does not follow the Dockerfile grammar
    │   ├── UnknownInstructionError  with a "did you mean" suggestion
    │   ├── InvalidFlagError       unknown or malformed ``--flag`` (suggests the closest known one)
    │   ├── ExpansionError         ``${var:?message}`` and malformed substitutions
    │   └── UnknownStageError      ``--target``, ``FROM`` or ``--from`` naming no stage; cycles
    ├── IgnorePatternError         a .dockerignore pattern that does not parse
    ├── ContextError               a source that is missing, ignored, or outside the context
    ├── StepFailed                 a RUN step that exited non-zero (command, status, last lines)
    ├── SandboxUnavailable         a kernel feature the RUN sandbox needs is missing
    ├── UnknownUserError           USER names a user or group the image's passwd/group lack
    └── CacheError                 the build cache cannot be read or written

The CLI alone decides formatting and exit codes (1 for these, 2 for usage errors).
"""

from __future__ import annotations


class BuildError(Exception):
    """Base class of every builder error."""


class DockerfileError(BuildError):
    """An error in a Dockerfile, located by file name, line and (where known) column."""

    def __init__(
        self,
        message: str,
        *,
        filename: str = "Dockerfile",
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.filename = filename
        self.line = line
        self.column = column

    def __str__(self) -> str:
        where = self.filename
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.message}"


class DockerfileSyntaxError(DockerfileError):
    """The text does not follow the Dockerfile grammar."""


class UnknownInstructionError(DockerfileError):
    """An instruction keyword that does not exist."""


class InvalidFlagError(DockerfileError):
    """An unknown or malformed ``--flag`` on an instruction."""


class ExpansionError(DockerfileError):
    """A variable substitution that fails (``${x:?msg}``) or is malformed."""


class UnknownStageError(DockerfileError):
    """A stage reference (``--target``, ``FROM``, ``--from``) that names no stage, or a cycle."""


class IgnorePatternError(BuildError):
    """A .dockerignore pattern that cannot be parsed."""


class ContextError(BuildError):
    """A build-context source that is missing, excluded, or outside the context."""


class StepFailed(BuildError):
    """A RUN step exited with a non-zero status."""

    def __init__(
        self,
        message: str,
        *,
        exit_code: int | None = None,
        last_lines: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.last_lines = last_lines


class SandboxUnavailable(BuildError):
    """The kernel lacks a feature the RUN sandbox needs (namespaces, overlayfs, …)."""


class UnknownUserError(BuildError):
    """``USER`` names a user or group missing from the image's ``/etc/passwd``/``/etc/group``."""


class CacheError(BuildError):
    """The build cache could not be read or written."""
