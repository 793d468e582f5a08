"""Content digests (``sha256:<hex>``) and streams that compute them while data passes.

Only sha256 is produced; sha512 is accepted when parsing because the OCI image spec
registers it, so documents written by other tools still parse.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import BinaryIO

from layerstore.errors import DigestMismatch, InvalidDigest

_HEX_LEN = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^(?P<alg>[a-z0-9]+(?:[.+_-][a-z0-9]+)*):(?P<hex>[a-zA-Z0-9=_-]+)$")


@dataclass(frozen=True, order=True, slots=True)
class Digest:
    """A validated content digest such as ``sha256:e3b0…``."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse and validate ``algorithm:hex``; raises :class:`InvalidDigest`."""
        m = _DIGEST_RE.match(text) if isinstance(text, str) else None
        if m is None:
            raise InvalidDigest(f"invalid digest {text!r}: expected sha256:<64 hex characters>")
        alg, hx = m.group("alg"), m.group("hex")
        want = _HEX_LEN.get(alg)
        if want is None:
            raise InvalidDigest(f"invalid digest {text!r}: unsupported algorithm {alg!r}")
        if len(hx) != want or not re.fullmatch(r"[0-9a-f]+", hx):
            raise InvalidDigest(
                f"invalid digest {text!r}: {alg} needs {want} lowercase hex characters"
            )
        return cls(alg, hx)

    @classmethod
    def of(cls, data: bytes) -> Digest:
        """The sha256 digest of ``data``."""
        return cls("sha256", hashlib.sha256(data).hexdigest())

    @property
    def short(self) -> str:
        """The first 12 hex characters, as ``docker images`` shows an IMAGE ID."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self) -> Hasher:
        """A fresh hasher of this digest's algorithm."""
        return Hasher(self.algorithm)


EMPTY_SHA256 = Digest("sha256", hashlib.sha256(b"").hexdigest())


class Hasher:
    """Incremental digest computation with byte counting."""

    __slots__ = ("_h", "algorithm", "size")

    def __init__(self, algorithm: str = "sha256") -> None:
        if algorithm not in _HEX_LEN:
            raise InvalidDigest(f"unsupported digest algorithm {algorithm!r}")
        self.algorithm = algorithm
        self._h = hashlib.new(algorithm)
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)
        self.size += len(data)

    def digest(self) -> Digest:
        return Digest(self.algorithm, self._h.hexdigest())

    def copy(self) -> Hasher:
        other = Hasher.__new__(Hasher)
        other.algorithm = self.algorithm
        other._h = self._h.copy()
        other.size = self.size
        return other


def digest_file(path: str | bytes, *, algorithm: str = "sha256", chunk: int = 1 << 20) -> Digest:
    """Digest a file's contents without holding it in memory."""
    h = Hasher(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.digest()


def digest_stream(stream: BinaryIO, *, algorithm: str = "sha256", chunk: int = 1 << 20) -> Digest:
    """Digest everything left in ``stream``."""
    h = Hasher(algorithm)
    while block := stream.read(chunk):
        h.update(block)
    return h.digest()


def verify(expected: Digest, actual: Digest, *, what: str = "blob") -> None:
    """Raise :class:`DigestMismatch` unless the two digests are equal."""
    if expected != actual:
        raise DigestMismatch(expected, actual, what=what)
