"""registry: an OCI distribution client (pull, push, tag, copy, login).

Uses ``layerstore`` for the OCI types and the local blob store; never imports ``builder``.
Public names are loaded on first use so that importing ``registry.errors`` (as the CLI does
for every command) does not pull in httpx.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

# httpx's package __init__ imports its command-line client, and with it rich and pygments:
# ~30 ms on every pull and push (a fifth of pybuild's start-up). pybuild never runs that
# client. An empty stand-in registered before httpx is first imported makes httpx take the
# fallback it already has for a missing CLI extra (``main`` then only prints a notice).
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", types.ModuleType("httpx._main"))

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
