"""Stage state → image config: metadata instructions applied, and Docker-like history text.

Every instruction adds one history entry. Its ``created_by`` reads as BuildKit writes it
(``dockerfile2llb``), because tools and people grep image history for these strings:
``RUN |1 A=1 /bin/sh -c make # buildkit``, ``COPY src /app # buildkit``, ``ENV A=b``,
``CMD ["sh" "-c" "x"]`` (Go's ``%q`` of a string list), ``EXPOSE [80/tcp]``,
``VOLUME [/data]``; steps that carry a file system state get `` # buildkit`` appended and
every entry the comment ``buildkit.dockerfile.v0``.

The words of ENV, LABEL, EXPOSE, VOLUME, USER, WORKDIR, STOPSIGNAL are expanded against
the build environment (build args in scope + the config's Env, Env winning), as BuildKit
does; CMD, ENTRYPOINT, SHELL, HEALTHCHECK and ONBUILD are not expanded.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from builder.dockerfile import instructions as ins
from builder.dockerfile.shell import expand_word
from builder.errors import DockerfileError
from layerstore.config import ContainerConfig, Healthcheck, ImageConfig, format_created

HISTORY_COMMENT = "buildkit.dockerfile.v0"
DEFAULT_SHELL = ("/bin/sh", "-c")

# Predefined ARGs usable without an ARG line; never in history or cache keys (BuildKit).
PROXY_ARGS = frozenset(
    {
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "FTP_PROXY",
        "ftp_proxy",
        "NO_PROXY",
        "no_proxy",
        "ALL_PROXY",
        "all_proxy",
    }
)


def go_quote_list(items: Sequence[str]) -> str:
    """Go's ``fmt.Sprintf("%q", []string{...})``: ``["a" "b"]``."""
    return "[" + " ".join(json.dumps(s, ensure_ascii=False) for s in items) + "]"


def go_list(items: Sequence[str]) -> str:
    """Go's ``fmt.Sprintf("%v", []string{...})``: ``[a b]``."""
    return "[" + " ".join(items) + "]"


def timestamp(epoch: int | None) -> str:
    """``created`` for history and config: SOURCE_DATE_EPOCH when set, else now."""
    if epoch is not None:
        return format_created(datetime.fromtimestamp(epoch, UTC))
    return format_created(datetime.now(UTC))


def _go_duration(seconds: float | None) -> str:
    if not seconds:
        return "0s"
    if seconds == int(seconds):
        total = int(seconds)
        h, rest = divmod(total, 3600)
        m, s = divmod(rest, 60)
        out = (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + f"{s}s"
        return out
    return f"{seconds:g}s"


def shell_of(config: ImageConfig) -> tuple[str, ...]:
    """The shell for shell-form commands: SHELL, else ``/bin/sh -c``."""
    shell = config.config.shell
    return tuple(shell) if shell else DEFAULT_SHELL


def command_argv(instr_command: Sequence[str], json_form: bool, config: ImageConfig) -> list[str]:
    """argv for CMD/ENTRYPOINT/RUN: exec form as written, shell form wrapped in the shell."""
    if json_form:
        return list(instr_command)
    return [*shell_of(config), " ".join(instr_command)]


def run_history(argv: Sequence[str], visible_args: Mapping[str, str]) -> str:
    """BuildKit's ``runCommandString``: ``RUN |2 A=1 B=2 /bin/sh -c cmd``."""
    pairs = [f"{k}={v}" for k, v in visible_args.items()]
    prefix = [f"|{len(pairs)}", *pairs] if pairs else []
    return "RUN " + " ".join([*prefix, *argv])


class Expander:
    """Expands instruction words against the build environment, with Dockerfile locations."""

    def __init__(self, env: Mapping[str, str], *, escape: str, filename: str) -> None:
        self.env = env
        self.escape = escape
        self.filename = filename

    def word(self, word: str, line: int) -> str:
        try:
            return expand_word(word, self.env, escape=self.escape)
        except DockerfileError as e:
            raise type(e)(e.message, filename=self.filename, line=line) from None


def _port(text: str) -> str:
    port, _, proto = text.partition("/")
    return f"{port}/{(proto or 'tcp').lower()}"


def apply_metadata(
    config: ImageConfig,
    instruction: ins.Instruction,
    expand: Expander,
    *,
    cmd_set_in_stage: bool = False,
) -> tuple[ImageConfig, str]:
    """Apply one metadata instruction; returns the new config and the history text.

    ``cmd_set_in_stage`` says whether a CMD came earlier in this stage: ENTRYPOINT resets
    only a CMD inherited from the base image.

    Handles ENV, LABEL, EXPOSE, VOLUME, USER, CMD, ENTRYPOINT, HEALTHCHECK, SHELL,
    STOPSIGNAL, ONBUILD and MAINTAINER (WORKDIR, ARG, RUN, COPY, ADD live in the executor).
    """
    line = instruction.line
    cc = config.config
    if isinstance(instruction, ins.Env):
        pairs = [(k, expand.word(v, line)) for k, v in instruction.pairs]
        for key, value in pairs:
            cc = cc.with_env(expand.word(key, line), value)
        text = "ENV " + " ".join(f"{expand.word(k, line)}={v}" for k, v in pairs)
        return config.evolve(config=cc), text
    if isinstance(instruction, ins.Label):
        labels = {expand.word(k, line): expand.word(v, line) for k, v in instruction.pairs}
        text = "LABEL " + " ".join(f"{k}={v}" for k, v in labels.items())
        return config.evolve(config=cc.with_labels(labels)), text
    if isinstance(instruction, ins.Expose):
        ports: list[str] = []
        for raw in instruction.ports:
            for word in expand.word(raw, line).split():
                ports.append(_port(word))
        merged = tuple(sorted({*cc.exposed_ports, *ports}))
        return config.evolve(config=cc.evolve(exposed_ports=merged)), "EXPOSE " + go_list(ports)
    if isinstance(instruction, ins.Volume):
        paths = [expand.word(p, line) for p in instruction.paths]
        for p in paths:
            if not p.strip():
                raise DockerfileError(
                    "VOLUME specified can not be an empty string",
                    filename=expand.filename,
                    line=line,
                )
        merged = tuple(sorted({*cc.volumes, *paths}))
        return config.evolve(config=cc.evolve(volumes=merged)), "VOLUME " + go_list(paths)
    if isinstance(instruction, ins.User):
        user = expand.word(instruction.user, line)
        return config.evolve(config=cc.evolve(user=user)), f"USER {user}"
    if isinstance(instruction, ins.Cmd):
        argv = command_argv(instruction.command, instruction.json_form, config)
        text = "CMD " + go_quote_list(argv)
        return config.evolve(config=cc.evolve(cmd=tuple(argv))), text
    if isinstance(instruction, ins.Entrypoint):
        argv = command_argv(instruction.command, instruction.json_form, config)
        if not instruction.json_form and not instruction.command:
            argv = []
        text = "ENTRYPOINT " + go_quote_list(argv)
        # ENTRYPOINT resets a CMD inherited from the base image, not one this stage set
        # (Dockerfile reference, "Understand how CMD and ENTRYPOINT interact").
        cmd = cc.cmd if cmd_set_in_stage else None
        return config.evolve(config=cc.evolve(entrypoint=tuple(argv), cmd=cmd)), text
    if isinstance(instruction, ins.Healthcheck):
        hc = _healthcheck(instruction)
        return config.evolve(config=cc.evolve(healthcheck=hc)), "HEALTHCHECK " + _hc_text(hc)
    if isinstance(instruction, ins.Shell):
        shell = tuple(instruction.command)
        return config.evolve(config=cc.evolve(shell=shell)), "SHELL " + go_list(shell)
    if isinstance(instruction, ins.Stopsignal):
        sig = expand.word(instruction.signal, line)
        return config.evolve(config=cc.evolve(stop_signal=sig)), f"STOPSIGNAL {sig}"
    if isinstance(instruction, ins.Onbuild):
        trigger = onbuild_text(instruction)
        return (
            config.evolve(config=cc.evolve(on_build=(*cc.on_build, trigger))),
            f"ONBUILD {trigger}",
        )
    if isinstance(instruction, ins.Maintainer):
        return config.evolve(author=instruction.maintainer), (
            f"MAINTAINER {instruction.maintainer}"
        )
    raise TypeError(f"not a metadata instruction: {instruction.keyword}")


def onbuild_text(instruction: ins.Onbuild) -> str:
    """The trigger text stored in the config's OnBuild list (``RUN echo hi``)."""
    original = instruction.node.original.strip()
    head, _, rest = original.partition(" ")
    if head.upper() == "ONBUILD":
        return rest.strip()
    return original


def _healthcheck(instruction: ins.Healthcheck) -> Healthcheck:
    def ns(seconds: float | None) -> int:
        return round((seconds or 0) * 1e9)

    return Healthcheck(
        test=tuple(instruction.test),
        interval=ns(instruction.interval),
        timeout=ns(instruction.timeout),
        start_period=ns(instruction.start_period),
        start_interval=ns(instruction.start_interval),
        retries=instruction.retries or 0,
    )


def _hc_text(hc: Healthcheck) -> str:
    durations = " ".join(
        json.dumps(_go_duration(v / 1e9))
        for v in (hc.interval, hc.timeout, hc.start_period, hc.start_interval)
    )
    return f"&{{{go_quote_list(hc.test)} {durations} '\\x{hc.retries:02x}'}}"


def workdir_path(current: str, path: str) -> str:
    """WORKDIR's new value: absolute paths replace, relative ones join the current one."""
    if not path.startswith("/"):
        path = posixpath.join(current or "/", path)
    cleaned = posixpath.normpath(path)
    return "/" if cleaned in ("", ".") else cleaned


def add_history(
    config: ImageConfig, created_by: str, *, layer: bool, created: str, stateful: bool
) -> ImageConfig:
    """Append the history entry of a step that made no layer (``layer`` False)."""
    text = created_by + (" # buildkit" if stateful else "")
    return config.with_history(
        created_by=text, created=created, comment=HISTORY_COMMENT, empty_layer=not layer
    )


def with_step_layer(
    config: ImageConfig, diff_id: object, created_by: str, created: str
) -> ImageConfig:
    """Append a layer and its history entry (``# buildkit`` marks a state-carrying step)."""
    from layerstore.digest import Digest

    assert isinstance(diff_id, Digest)
    return config.with_layer(
        diff_id, created_by=created_by + " # buildkit", created=created, comment=HISTORY_COMMENT
    )


def base_config(platform_os: str, architecture: str, variant: str | None) -> ImageConfig:
    """The config of ``FROM scratch``: Docker's default PATH and nothing else."""
    cc = ContainerConfig(
        env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
    )
    return ImageConfig(architecture=architecture, os=platform_os, variant=variant, config=cc)
