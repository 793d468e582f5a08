"""CacheIndex: build-step cache keys → the image state the step produced, in the store's db.

A record holds what a later build needs to skip the step entirely: the digest of the image
config after the step (the config blob itself is stored in the blob store, so history and
``created`` times come back exactly and a fully cached build reproduces the same image ID)
and the layer descriptors of the stage so far, each with its diff ID. A record whose blobs
have been garbage-collected is ignored (a miss), never trusted. The blobs of every record are
registered as extra GC roots, so ``pybuild prune`` keeps them until the cache is cleared.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from builder.cachekey import CacheKey
from layerstore.descriptor import Descriptor
from layerstore.digest import Digest
from layerstore.store import Store

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS build_cache (
        key TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        layers TEXT NOT NULL,
        created REAL NOT NULL,
        last_used REAL NOT NULL)""",
)


@dataclass(frozen=True)
class LayerRef:
    """A layer of a stage: its blob descriptor and its diff ID (uncompressed digest)."""

    descriptor: Descriptor
    diff_id: Digest

    def to_json(self) -> dict[str, object]:
        return {"descriptor": self.descriptor.to_json(), "diff_id": str(self.diff_id)}

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> LayerRef:
        return cls(Descriptor.from_json(obj["descriptor"]), Digest.parse(str(obj["diff_id"])))


@dataclass(frozen=True)
class CachedState:
    """The state a cached step left: config blob digest and the stage's layers."""

    config: Digest
    layers: tuple[LayerRef, ...]


class CacheIndex:
    """Step records in ``store``'s database; ``enabled=False`` (``--no-cache``) never hits."""

    def __init__(self, store: Store, *, enabled: bool = True) -> None:
        self.store = store
        self.enabled = enabled
        store.db.ensure_schema("build_cache", _SCHEMA)
        store.gc_root_providers.append(self.gc_roots)

    def get(self, key: CacheKey) -> CachedState | None:
        """The recorded state of ``key`` when every blob it needs is still stored."""
        if not self.enabled:
            return None
        row = (
            self.store.db.connection()
            .execute("SELECT config, layers FROM build_cache WHERE key = ?", (key.hex,))
            .fetchone()
        )
        if row is None:
            return None
        try:
            state = CachedState(
                Digest.parse(row[0]), tuple(LayerRef.from_json(o) for o in json.loads(row[1]))
            )
        except (ValueError, KeyError, TypeError):
            return None
        blobs = self.store.blobs
        if not blobs.has(state.config) or not all(
            blobs.has(layer.descriptor.digest) for layer in state.layers
        ):
            return None
        with self.store.db.transaction() as conn:
            conn.execute(
                "UPDATE build_cache SET last_used = ? WHERE key = ?", (time.time(), key.hex)
            )
        return state

    def peek(self, key: CacheKey) -> CachedState | None:
        """The record of ``key`` even under ``--no-cache`` (for exporting it)."""
        enabled, self.enabled = self.enabled, True
        try:
            return self.get(key)
        finally:
            self.enabled = enabled

    def put(self, key: CacheKey, state: CachedState) -> None:
        """Record (or replace) the state ``key`` produced."""
        self.put_hex(key.hex, state)

    def put_hex(self, key_hex: str, state: CachedState) -> None:
        now = time.time()
        layers = json.dumps([layer.to_json() for layer in state.layers])
        with self.store.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO build_cache(key, config, layers, created, last_used)"
                " VALUES (?, ?, ?, ?, ?)",
                (key_hex, str(state.config), layers, now, now),
            )

    def clear(self) -> int:
        """Forget every record; returns how many there were."""
        with self.store.db.transaction() as conn:
            count = conn.execute("SELECT COUNT(*) FROM build_cache").fetchone()[0]
            conn.execute("DELETE FROM build_cache")
        return int(count)

    def __len__(self) -> int:
        row = self.store.db.connection().execute("SELECT COUNT(*) FROM build_cache").fetchone()
        return int(row[0])

    def gc_roots(self) -> Iterable[Digest]:
        """Every blob a record needs (extra roots for :meth:`Store.gc`)."""
        return list(self._digests())

    def _digests(self) -> Iterator[Digest]:
        rows = self.store.db.connection().execute("SELECT config, layers FROM build_cache")
        for config, layers in rows.fetchall():
            try:
                yield Digest.parse(config)
                for obj in json.loads(layers):
                    yield LayerRef.from_json(obj).descriptor.digest
            except (ValueError, KeyError, TypeError):
                continue


# -- inline cache (``--cache-to type=inline`` / ``--cache-from IMAGE``) --------------------------

INLINE_KEY = "io.pybuild.cache.v1"


def inline_document(
    cache: CacheIndex, keys: Iterable[CacheKey], layers: tuple[LayerRef, ...]
) -> str:
    """The records of ``keys`` whose layers are a prefix of ``layers``, as canonical JSON.

    Embedded in the final image config (member ``io.pybuild.cache.v1``), so the image
    itself carries what another machine needs to reuse its steps: each record's config
    (base64 of its exact bytes) and how many of the image's layers it had.
    """
    import base64

    from layerstore.canonicaljson import canonical_json

    store = cache.store
    steps = []
    for key in keys:
        state = cache.peek(key)
        if state is None or tuple(state.layers) != layers[: len(state.layers)]:
            continue
        raw = store.blobs.read_bytes(state.config)
        steps.append(
            {"key": key.hex, "layers": len(state.layers), "config": base64.b64encode(raw).decode()}
        )
    return canonical_json({"steps": steps}).decode()


def import_inline(
    cache: CacheIndex, config_extra: dict[str, str], layers: tuple[LayerRef, ...]
) -> int:
    """Record the steps an image's inline cache describes; returns how many were imported."""
    import base64

    text = config_extra.get(INLINE_KEY)
    if text is None:
        return 0
    try:
        steps = json.loads(text)["steps"]
    except (ValueError, KeyError, TypeError):
        return 0
    count = 0
    for step in steps:
        try:
            raw = base64.b64decode(step["config"])
            n = int(step["layers"])
            key_hex = str(step["key"])
        except (KeyError, ValueError, TypeError):
            continue
        if n > len(layers) or len(key_hex) != 64:
            continue
        digest = cache.store.blobs.put_bytes(raw)
        cache.put_hex(key_hex, CachedState(digest, layers[:n]))
        count += 1
    return count
