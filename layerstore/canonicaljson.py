"""The one JSON encoding pybuild writes documents in.

Digests are taken over bytes, so a document we write must always encode the same way:
keys sorted, no insignificant whitespace, UTF-8 (not ``\\u`` escapes). Documents read
from elsewhere are never re-encoded: their original bytes are kept beside the parsed value.
"""

from __future__ import annotations

import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` deterministically (sorted keys, compact separators, UTF-8)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
