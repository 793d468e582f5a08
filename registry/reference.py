"""Image references: parse and normalise ``[registry/]repository[:tag][@digest]``.

Follows the distribution reference grammar (github.com/distribution/reference) and Docker's
normalisation, so a name means the same thing here as in ``docker pull``: ``alpine`` is
``docker.io/library/alpine:latest``; a first path component is a registry only when it
contains ``.`` or ``:``, is ``localhost``, or has uppercase letters; ``index.docker.io`` is
``docker.io``. Errors name the part that is wrong, because a user typed it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from layerstore.digest import Digest
from layerstore.errors import InvalidDigest
from registry.errors import InvalidReference

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
OFFICIAL_NAMESPACE = "library"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

# distribution/reference regexp.go, anchored pieces.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST_RE = re.compile(rf"^(?:{_DOMAIN_NAME}|{_IPV6})$")
_PORT_RE = re.compile(r"^[0-9]+$")
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[_.]|__|[-]+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$", re.ASCII)
_IDENTIFIER_RE = re.compile(r"^[a-f0-9]{64}$")


def _fail(text: str, why: str) -> InvalidReference:
    return InvalidReference(f"invalid reference {text!r}: {why}")


def _split_domain(text: str, name: str) -> tuple[str, str]:
    """Docker's splitDockerDomain: (registry, repository path) with docker.io defaults."""
    slash = name.find("/")
    first = name[:slash] if slash >= 0 else ""
    if slash < 0 or (
        not any(c in first for c in ".:") and first != "localhost" and first.lower() == first
    ):
        registry, path = DOCKER_HUB, name
    else:
        registry, path = first, name[slash + 1 :]
        _check_domain(text, registry)
        if registry in _HUB_ALIASES:
            registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = f"{OFFICIAL_NAMESPACE}/{path}"
    return registry, path


def _check_domain(text: str, domain: str) -> None:
    host, port = domain, None
    if domain.startswith("["):
        close = domain.find("]")
        if close < 0:
            raise _fail(text, f"registry {domain!r} has an unclosed IPv6 bracket")
        host, rest = domain[: close + 1], domain[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise _fail(text, f"registry {domain!r} is not host[:port]")
            port = rest[1:]
    elif ":" in domain:
        host, port = domain.split(":", 1)
    if not _HOST_RE.match(host):
        raise _fail(text, f"invalid registry host {host!r}")
    if port is not None:
        if not _PORT_RE.match(port):
            raise _fail(text, f"invalid registry port {port!r} in {domain!r}")
        if not 0 < int(port) < 65536:
            raise _fail(text, f"registry port {port} in {domain!r} is out of range")


def _check_path(text: str, path: str) -> None:
    if not path:
        raise _fail(text, "repository name is empty")
    for component in path.split("/"):
        if not component:
            raise _fail(text, f"repository {path!r} has an empty path component")
        if component.lower() != component and _PATH_COMPONENT_RE.match(component.lower()):
            raise _fail(text, f"repository name {path!r} must be lowercase")
        if not _PATH_COMPONENT_RE.match(component):
            raise _fail(
                text,
                f"invalid repository path component {component!r} (lowercase letters, "
                "digits and single separators . _ __ - between them)",
            )


def _check_tag(text: str, tag: str) -> None:
    if not _TAG_RE.match(tag):
        raise _fail(
            text,
            f"invalid tag {tag!r} (1-128 characters: letters, digits, _ . -, not starting "
            "with . or -)",
        )


def _parse_digest(text: str, digest: str) -> Digest:
    try:
        return Digest.parse(digest)
    except InvalidDigest as e:
        raise _fail(text, f"invalid digest {digest!r}: {_digest_reason(e)}") from None


def _digest_reason(e: InvalidDigest) -> str:
    message = str(e)
    return message.split(": ", 1)[1] if ": " in message else message


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised image reference: registry, repository, and a tag and/or a digest."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str, *, default_tag: str | None = DEFAULT_TAG) -> Reference:
        """Parse and normalise ``text``; raises :class:`InvalidReference` naming the bad part.

        Without a tag or digest, ``default_tag`` is used (``latest``; ``None`` keeps a bare
        repository, as ``ls-tags`` wants).
        """
        if not isinstance(text, str) or not text.strip():
            raise InvalidReference("invalid reference: empty image name")
        if text != text.strip() or any(c.isspace() for c in text):
            raise _fail(text, "contains whitespace")
        if _IDENTIFIER_RE.match(text):
            raise _fail(
                text,
                "a 64-character hexadecimal string is an image ID, not a repository name",
            )
        rest, digest = text, None
        if "@" in rest:
            rest, digest_text = rest.split("@", 1)
            if not digest_text:
                raise _fail(text, "'@' must be followed by a digest")
            digest = _parse_digest(text, digest_text)
        tag = None
        colon = rest.rfind(":")
        if colon > rest.rfind("/"):
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not tag:
                raise _fail(text, "':' must be followed by a tag")
            _check_tag(text, tag)
        if not rest:
            raise _fail(text, "repository name is empty")
        if rest.startswith("/") or rest.endswith("/"):
            raise _fail(text, f"repository {rest!r} may not start or end with '/'")
        registry, path = _split_domain(text, rest)
        _check_path(text, path)
        if len(registry) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
            raise _fail(text, f"repository name is longer than {NAME_TOTAL_LENGTH_MAX} characters")
        if tag is None and digest is None:
            tag = default_tag
        return cls(registry, path, tag, digest)

    @classmethod
    def is_valid(cls, text: str) -> bool:
        try:
            cls.parse(text)
        except InvalidReference:
            return False
        return True

    @property
    def name(self) -> str:
        """Registry and repository: ``docker.io/library/alpine``."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host (and port) the distribution API is served on."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def identifier(self) -> str:
        """What goes after ``/manifests/``: the digest when there is one, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        return self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    def familiar(self) -> str:
        """The short form ``docker images`` shows: ``alpine:latest``, ``user/app:1``."""
        name = self.name
        if self.registry == DOCKER_HUB:
            name = self.repository
            prefix = OFFICIAL_NAMESPACE + "/"
            if name.startswith(prefix) and "/" not in name[len(prefix) :]:
                name = name[len(prefix) :]
        if self.tag is not None:
            name += f":{self.tag}"
        if self.digest is not None:
            name += f"@{self.digest}"
        return name

    def with_tag(self, tag: str) -> Reference:
        """The same repository with ``tag`` (a digest, if any, is dropped)."""
        _check_tag(tag, tag)
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: Digest | str) -> Reference:
        """The same repository and tag, pinned to ``digest``."""
        d = digest if isinstance(digest, Digest) else _parse_digest(str(digest), str(digest))
        return replace(self, digest=d)

    def repo(self) -> Reference:
        """The bare repository (no tag, no digest)."""
        return replace(self, tag=None, digest=None)

    def in_repository(self, repository: str) -> Reference:
        """Same registry, another repository (for cross-repository mounts)."""
        _check_path(repository, repository)
        return replace(self, repository=repository)

    def scope(self, actions: str | Iterable[str] = "pull") -> str:
        """The token scope ``repository:NAME:ACTIONS`` (distribution token auth)."""
        acts = [actions] if isinstance(actions, str) else list(actions)
        flat = sorted({a.strip() for part in acts for a in part.split(",") if a.strip()})
        return f"repository:{self.repository}:{','.join(flat)}"
