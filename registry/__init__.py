"""registry: an OCI distribution client (pull, push, tag, copy, login).

Uses ``layerstore`` for the OCI types and the local blob store; never imports ``builder``.
Public names are loaded on first use so that importing ``registry.errors`` (as the CLI does
for every command) does not pull in httpx.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Client",
    "Credentials",
    "PullResult",
    "PushResult",
    "Reference",
    "RetryPolicy",
    "TransportOptions",
    "copy_image",
    "load_credentials",
    "pull",
    "push",
]

_HOMES = {
    "Client": "registry.client",
    "Credentials": "registry.auth",
    "load_credentials": "registry.auth",
    "PullResult": "registry.pull",
    "pull": "registry.pull",
    "PushResult": "registry.push",
    "push": "registry.push",
    "Reference": "registry.reference",
    "RetryPolicy": "registry.transport",
    "TransportOptions": "registry.transport",
    "copy_image": "registry.copy",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'registry' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
