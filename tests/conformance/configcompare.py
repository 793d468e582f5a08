"""Recursive comparison of two Docker-format image configs, with an explicit skip list.

Buildah writes every field of Docker's ``container.Config`` (``"Domainname": ""``,
``"OnBuild": []``, ``"AttachStdin": false`` …) where pybuild leaves empty ones out. The image
spec makes these fields optional and Docker treats an empty value as an absent one, so the
comparison counts a missing key and a zero value (``None``, ``""``, ``[]``, ``{}``, ``false``,
``0``) as equal; anything else must match exactly, lists in order. Fields that legitimately
differ between two builders (timestamps, host names, the builder's own labels) are skipped by
path: ``/``-separated keys from the top of the config (``config/Labels/io.buildah.version``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Skipped for every case; each with why it legitimately differs between two builders.
DEFAULT_CONFIG_SKIPS: dict[str, str] = {
    "created": "the build's clock",
    "container": "the id of the builder's working container (Docker and Buildah only)",
    "container_config": "the working container's config: legacy, builder-specific",
    "docker_version": "the builder's version",
    "parent": "Buildah's local store id of the previous step's image",
    "history": "created_by text and timestamps are each builder's own wording",
    "rootfs/diff_ids": "layer digests depend on tar encoding (ordering, headers, padding)",
    "config/Hostname": "Buildah writes its working container's random host name",
    "config/Labels/io.buildah.version": "Buildah labels its own version",
}


@dataclass(frozen=True)
class ConfigDifference:
    path: str
    left: object
    right: object

    def __str__(self) -> str:
        return f"{self.path}: {self.left!r} != {self.right!r}"


def is_empty(value: object) -> bool:
    return value is None or value is False or value == 0 or value in ("", [], {})


def drop(config: Mapping[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """A deep copy of ``config`` without the values at ``paths``."""
    out: dict[str, Any] = _copy(config)
    for path in paths:
        keys = path.split("/")
        node: Any = out
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                break
        else:
            if isinstance(node, dict):
                node.pop(keys[-1], None)
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def compare_configs(
    left: Mapping[str, Any], right: Mapping[str, Any], skip: Iterable[str] = ()
) -> list[ConfigDifference]:
    """Every difference between two configs after dropping ``skip`` paths, by path."""
    paths = list(skip)
    diffs: list[ConfigDifference] = []
    _compare("", drop(left, paths), drop(right, paths), diffs)
    return diffs


def _compare(path: str, a: Any, b: Any, out: list[ConfigDifference]) -> None:
    if is_empty(a) and is_empty(b):
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            _compare(f"{path}/{key}" if path else key, a.get(key), b.get(key), out)
        return
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for index, (x, y) in enumerate(zip(a, b)):
            _compare(f"{path}[{index}]", x, y, out)
        return
    if a != b or type(a) is not type(b):
        out.append(ConfigDifference(path or "/", a, b))


def value_at(config: Mapping[str, Any], path: str) -> Any:
    """The value at a ``/``-separated path (``None`` when absent)."""
    node: Any = config
    for key in path.split("/"):
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node
