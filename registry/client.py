"""Client: the distribution API of one registry (manifests, blobs, uploads, tags).

One :class:`Client` per registry host owns one :class:`~registry.transport.Transport`
(pooled connections) and one :class:`~registry.auth.Authenticator` (token cache), and is
safe to share between worker threads. Methods take a :class:`Reference` for the repository
and speak the endpoints of the OCI distribution spec; quirks of real servers are handled
here (see the notes on each method) so pull/push/copy stay about what to move.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from layerstore.blobs import BlobStore
from layerstore.descriptor import Descriptor, MediaType
from layerstore.digest import Digest
from layerstore.errors import DigestMismatch
from registry.auth import Authenticator, Credentials
from registry.errors import (
    NotFound,
    RegistryError,
    ResponseError,
    TransportError,
    UnsupportedManifestKind,
)
from registry.reference import Reference
from registry.transport import Transport, TransportOptions

# Accept everything we can read; OCI types must be listed or distribution 2.8 answers 404
# for an OCI manifest. Schema 1 is listed last so old registries say what they have.
MANIFEST_ACCEPT = ", ".join(
    [
        MediaType.OCI_INDEX,
        MediaType.OCI_MANIFEST,
        MediaType.DOCKER_MANIFEST_LIST,
        MediaType.DOCKER_MANIFEST,
        f"{MediaType.DOCKER_SCHEMA1_SIGNED};q=0.1",
        f"{MediaType.DOCKER_SCHEMA1};q=0.1",
    ]
)
OCTET = "application/octet-stream"
MAX_MANIFEST_SIZE = 4 << 20
# Blobs up to this size go in one PUT; larger ones in PATCH chunks that can be resumed.
MONOLITHIC_MAX = int(os.environ.get("PYBUILD_UPLOAD_MONOLITHIC_MAX") or 64 << 20)
CHUNK_SIZE = int(os.environ.get("PYBUILD_UPLOAD_CHUNK_SIZE") or 64 << 20)
_READ = 1 << 20

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class RemoteManifest:
    """A manifest or index as the registry served it: exact bytes, type and digest."""

    raw: bytes
    media_type: str
    digest: Digest

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.raw))


def _noop(_: int) -> None:
    return None


class Client:
    """The distribution API of one registry host."""

    def __init__(
        self,
        registry: str,
        *,
        options: TransportOptions | None = None,
        credentials: Credentials | None = None,
        api_host: str | None = None,
    ) -> None:
        self.registry = registry
        self.auth = Authenticator(registry, credentials)
        host = api_host or Reference(registry, "x").api_host
        self.transport = Transport(host, options=options, auth=self.auth)

    @classmethod
    def for_reference(
        cls,
        ref: Reference,
        *,
        options: TransportOptions | None = None,
        credentials: Credentials | None = None,
    ) -> Client:
        return cls(ref.registry, options=options, credentials=credentials, api_host=ref.api_host)

    def close(self) -> None:
        self.transport.close()
        self.auth.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _pull(ref: Reference) -> tuple[str, ...]:
        return (ref.scope("pull"),)

    @staticmethod
    def _push(ref: Reference) -> tuple[str, ...]:
        return (ref.scope("pull,push"),)

    # -- base ------------------------------------------------------------------------------

    def ping(self) -> None:
        """``GET /v2/``: reachable and (after a challenge) authenticated."""
        self.transport.request("GET", "/v2/", what=f"{self.registry} /v2/")

    # -- manifests -------------------------------------------------------------------------

    def get_manifest(self, ref: Reference, *, identifier: str | None = None) -> RemoteManifest:
        """The manifest or index ``ref`` names (by digest if it has one), verified."""
        ident = identifier or ref.identifier
        response = self.transport.request(
            "GET",
            f"/v2/{ref.repository}/manifests/{ident}",
            scopes=self._pull(ref),
            headers={"Accept": MANIFEST_ACCEPT},
            what=f"manifest {ref.name}:{ident}" if ":" not in ident else f"{ref.name}@{ident}",
        )
        raw = response.content
        if len(raw) > MAX_MANIFEST_SIZE:
            raise ResponseError(f"manifest of {ref} is larger than {MAX_MANIFEST_SIZE} bytes")
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        if media_type in MediaType.SCHEMA1 or b'"schemaVersion": 1' in raw[:200]:
            raise UnsupportedManifestKind(
                f"{ref} is a Docker schema 1 manifest: unsupported, too old (re-push it with a "
                "current Docker or skopeo to convert it)"
            )
        digest = Digest.of(raw)
        if ident.startswith(("sha256:", "sha512:")):
            want = Digest.parse(ident)
            if want.algorithm != "sha256":
                digest = _digest_with(want.algorithm, raw)
            if digest != want:
                raise DigestMismatch(want, digest, what=f"manifest {ref.name}")
        else:
            header = response.headers.get("docker-content-digest")
            if header and header.startswith("sha256:") and Digest.parse(header) != digest:
                raise DigestMismatch(Digest.parse(header), digest, what=f"manifest {ref}")
        if not media_type or media_type in ("application/json", "text/plain"):
            media_type = _sniff_media_type(raw)
        return RemoteManifest(raw, media_type, digest)

    def head_manifest(self, ref: Reference) -> Descriptor | None:
        """The descriptor of what ``ref`` names, or None when it does not exist."""
        try:
            response = self.transport.request(
                "HEAD",
                f"/v2/{ref.repository}/manifests/{ref.identifier}",
                scopes=self._pull(ref),
                headers={"Accept": MANIFEST_ACCEPT},
                what=f"manifest {ref}",
            )
        except NotFound:
            return None
        header = response.headers.get("docker-content-digest")
        size = response.headers.get("content-length")
        if not header or size is None:
            manifest = self.get_manifest(ref)
            return manifest.descriptor
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        return Descriptor(media_type, Digest.parse(header), int(size))

    def resolve(self, ref: Reference) -> Descriptor:
        """What ``ref`` names now (media type, digest, size), without fetching blobs.

        Raises :class:`NotFound` when the tag or digest does not exist.
        """
        desc = self.head_manifest(ref)
        if desc is None:
            raise NotFound(
                f"manifest_unknown: {ref} does not exist", status=404, codes=("MANIFEST_UNKNOWN",)
            )
        return desc

    def put_manifest(self, ref: Reference, raw: bytes, media_type: str) -> Digest:
        """PUT a manifest/index under ``ref``'s tag (or its digest); checks the digest back."""
        digest = Digest.of(raw)
        ident = ref.tag if ref.tag is not None else str(ref.digest or digest)
        response = self.transport.request(
            "PUT",
            f"/v2/{ref.repository}/manifests/{ident}",
            scopes=self._push(ref),
            headers={"Content-Type": media_type},
            content=raw,
            ok=(200, 201, 202),
            what=f"manifest {ref.name}:{ident}",
        )
        header = response.headers.get("docker-content-digest")
        if header and header.startswith("sha256:") and Digest.parse(header) != digest:
            raise DigestMismatch(digest, Digest.parse(header), what=f"pushed manifest {ref}")
        return digest

    def delete_manifest(self, ref: Reference, digest: Digest) -> None:
        self.transport.request(
            "DELETE",
            f"/v2/{ref.repository}/manifests/{digest}",
            scopes=(ref.scope("delete"),),
            ok=(200, 202),
            what=f"manifest {ref.name}@{digest}",
        )

    # -- tags ------------------------------------------------------------------------------

    def list_tags(self, ref: Reference, *, page_size: int | None = None) -> list[str]:
        """Every tag of the repository, following ``Link: <…>; rel="next"`` pages."""
        tags: list[str] = []
        path: str | None = f"/v2/{ref.repository}/tags/list"
        params: dict[str, str] | None = {"n": str(page_size)} if page_size else None
        seen: set[str] = set()
        while path is not None:
            response = self.transport.request(
                "GET",
                path,
                scopes=self._pull(ref),
                params=params,
                what=f"tags of {ref.name}",
            )
            doc = response.json()
            for tag in doc.get("tags") or []:
                if tag not in seen:
                    seen.add(tag)
                    tags.append(str(tag))
            path = _next_link(response.headers.get("link"), str(response.url))
            params = None
        return tags

    # -- blobs -----------------------------------------------------------------------------

    def blob_size(self, ref: Reference, digest: Digest, *, push: bool = False) -> int | None:
        """``HEAD`` a blob: its size, or None when the repository does not have it."""
        try:
            response = self.transport.request(
                "HEAD",
                f"/v2/{ref.repository}/blobs/{digest}",
                scopes=self._push(ref) if push else self._pull(ref),
                what=f"blob {digest.short} in {ref.name}",
            )
        except NotFound:
            return None
        length = response.headers.get("content-length")
        return int(length) if length is not None and length.isdigit() else -1

    def fetch_blob_bytes(self, ref: Reference, desc: Descriptor) -> bytes:
        """A small blob (a config) in memory, verified."""
        response = self.transport.request(
            "GET",
            f"/v2/{ref.repository}/blobs/{desc.digest}",
            scopes=self._pull(ref),
            what=f"blob {desc.digest.short} of {ref.name}",
        )
        data = response.content
        actual = Digest.of(data) if desc.digest.algorithm == "sha256" else None
        if actual is not None and actual != desc.digest:
            raise DigestMismatch(desc.digest, actual, what=f"blob of {ref.name}")
        return data

    def open_blob(self, ref: Reference, desc: Descriptor) -> BlobReader:
        """A readable stream of a blob, verified when it reaches its end (for copies)."""
        response = self.transport.request(
            "GET",
            f"/v2/{ref.repository}/blobs/{desc.digest}",
            scopes=self._pull(ref),
            stream=True,
            what=f"blob {desc.digest.short} of {ref.name}",
        )
        return BlobReader(response, desc, f"blob of {ref.name}", self.transport.host)

    def fetch_blob(
        self,
        ref: Reference,
        desc: Descriptor,
        blobs: BlobStore,
        *,
        progress: Progress = _noop,
        url: str | None = None,
    ) -> Digest:
        """Stream a blob into ``blobs``, verifying its digest on the fly.

        A broken transfer resumes with ``Range`` when the server answers 206, else starts over;
        attempts are bounded by the retry policy. A digest mismatch raises
        :class:`DigestMismatch` and leaves nothing in the store.
        """
        path = url or f"/v2/{ref.repository}/blobs/{desc.digest}"
        policy = self.transport.options.retry
        started = time.monotonic()
        attempt = 0
        writer = blobs.writer(desc.digest)
        try:
            while True:
                attempt += 1
                if desc.size > 0 and writer.size == desc.size:
                    return writer.commit()  # everything arrived before the break
                headers = {}
                if writer.size:
                    headers["Range"] = f"bytes={writer.size}-"
                response = self.transport.request(
                    "GET",
                    path,
                    scopes=self._pull(ref),
                    headers=headers,
                    stream=True,
                    ok=(200, 206),
                    what=f"blob {desc.digest.short} of {ref.name}",
                    trusted=url is None,
                )
                try:
                    if writer.size and response.status_code != 206:
                        # No range support: start again from the first byte.
                        progress(-writer.size)
                        writer.abort()
                        writer = blobs.writer(desc.digest)
                    elif writer.size and not _range_starts_at(response, writer.size):
                        progress(-writer.size)
                        writer.abort()
                        writer = blobs.writer(desc.digest)
                        response.close()
                        continue
                    for block in response.iter_raw():  # as received: a break keeps what arrived
                        writer.write(block)
                        progress(len(block))
                        if desc.size >= 0 and writer.size > desc.size:
                            raise DigestMismatch(
                                desc.digest,
                                f"more than {desc.size} bytes",
                                what=f"blob of {ref.name}",
                            )
                except _HTTP_ERRORS as e:
                    if attempt >= policy.attempts or time.monotonic() - started > policy.total:
                        raise TransportError(
                            f"download of blob {desc.digest.short} from {ref.name} broke "
                            f"after {writer.size} bytes: {e}"
                        ) from None
                    self.transport.sleep(policy.delay(attempt))
                    continue
                finally:
                    response.close()
                if desc.size >= 0 and writer.size != desc.size:
                    if attempt < policy.attempts:
                        continue  # a short body: ask for the rest
                    raise ResponseError(
                        f"blob {desc.digest.short} of {ref.name}: got {writer.size} bytes, the "
                        f"manifest says {desc.size}"
                    )
                return writer.commit()
        finally:
            writer.abort()

    # -- uploads ---------------------------------------------------------------------------

    def mount_blob(self, ref: Reference, digest: Digest, source: str) -> str | None:
        """Try a cross-repository mount from ``source`` (a repository on this registry).

        Returns None when mounted, else the ``Location`` of the upload session the
        registry opened instead (202), which the caller must use or cancel.
        """
        source_ref = ref.in_repository(source)
        response = self.transport.request(
            "POST",
            f"/v2/{ref.repository}/blobs/uploads/",
            scopes=(*self._push(ref), source_ref.scope("pull")),
            params={"mount": str(digest), "from": source},
            ok=(201, 202),
            headers={"Content-Length": "0"},
            what=f"mount of {digest.short} from {source} into {ref.name}",
        )
        if response.status_code == 201:
            return None
        return self._location(response)

    def start_upload(self, ref: Reference) -> str:
        response = self.transport.request(
            "POST",
            f"/v2/{ref.repository}/blobs/uploads/",
            scopes=self._push(ref),
            headers={"Content-Length": "0"},
            ok=(202,),
            what=f"upload to {ref.name}",
        )
        return self._location(response)

    def cancel_upload(self, ref: Reference, location: str) -> None:
        with contextlib.suppress(RegistryError):
            self.transport.request(
                "DELETE",
                location,
                scopes=self._push(ref),
                ok=(204, 200, 202, 404),
                retry=False,
                what=f"upload to {ref.name}",
            )

    def _location(self, response: httpx.Response) -> str:
        location = response.headers.get("location")
        if not location:
            raise ResponseError(
                f"registry {self.registry} opened an upload without a Location header"
            )
        # Relative Locations are resolved against the request URL (RFC 7231 §7.1.2).
        return urljoin(str(response.request.url), location)

    def upload_status(self, ref: Reference, location: str) -> tuple[int, str] | None:
        """(bytes the registry holds, the session's current Location), None when gone."""
        try:
            response = self.transport.request(
                "GET",
                location,
                scopes=self._push(ref),
                ok=(204, 200),
                what=f"upload status in {ref.name}",
            )
        except NotFound:
            return None
        except ResponseError as e:
            if e.status in (400, 404, 416) or "BLOB_UPLOAD_UNKNOWN" in e.codes:
                return None
            raise
        # distribution reports "0-<last byte>" and also "0-0" for an empty session; reading
        # "0-0" as empty is the safe side: a wrong guess gets a 416 and a fresh session.
        m = re.fullmatch(r"(?:bytes=)?(\d+)-(\d+)", response.headers.get("range", "").strip())
        held = int(m.group(2)) + 1 if m and m.group(2) != "0" else 0
        current = self._location(response) if response.headers.get("location") else location
        return held, current

    def upload_blob(
        self,
        ref: Reference,
        digest: Digest,
        size: int,
        opener: Callable[[], BinaryIO],
        *,
        mount_from: tuple[str, ...] = (),
        progress: Progress = _noop,
        check_exists: bool = True,
        whole: bool = False,
    ) -> str:
        """Make ``digest`` exist in ``ref``'s repository; returns how.

        ``"exists"`` (HEAD found it), ``"mounted"`` (cross-repository mount), or
        ``"uploaded"``. Small blobs (and, with ``whole``, streams that cannot seek) are sent
        as POST + one PUT; large ones as PATCH chunks that resume from the registry's
        ``Range`` after a broken connection. A session whose commit failed, or that
        disagrees about the offset (416), is abandoned and a new one started (distribution
        drops a session after a failed commit).
        """
        if check_exists and self.blob_size(ref, digest, push=True) is not None:
            progress(size)
            return "exists"
        location: str | None = None
        for source in mount_from:
            if source == ref.repository:
                continue
            try:
                location = self.mount_blob(ref, digest, source)
            except ResponseError:
                location = None  # some registries refuse mounts outright: plain upload
                continue
            if location is None:
                progress(size)
                return "mounted"
            break
        policy = self.transport.options.retry
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            if location is None:
                location = self.start_upload(ref)
            try:
                if whole or size <= MONOLITHIC_MAX:
                    self._put_whole(ref, location, digest, size, opener, progress)
                else:
                    self._put_chunked(ref, location, digest, size, opener, progress)
                return "uploaded"
            except (TransportError, ResponseError) as e:
                retryable = getattr(e, "retryable", False) or getattr(e, "status", 0) == 416
                if not retryable or attempt >= policy.attempts:
                    raise
                if time.monotonic() - started > policy.total:
                    raise
                self.transport.sleep(policy.delay(attempt))
                # A failed commit kills the session in distribution: begin a new one. The
                # blob may have landed anyway (the reply was lost): check first.
                if self.blob_size(ref, digest, push=True) is not None:
                    return "uploaded"
                self.cancel_upload(ref, location)  # do not leave the dead session behind
                location = None

    def _commit_url(self, location: str, digest: Digest) -> str:
        parts = urlsplit(location)
        query = parts.query + ("&" if parts.query else "") + f"digest={digest}"
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))

    def _put_whole(
        self,
        ref: Reference,
        location: str,
        digest: Digest,
        size: int,
        opener: Callable[[], BinaryIO],
        progress: Progress,
    ) -> None:
        sent = 0

        def body() -> Iterator[bytes]:
            nonlocal sent
            if sent:
                progress(-sent)
                sent = 0
            with opener() as f:
                while block := f.read(_READ):
                    sent += len(block)
                    progress(len(block))
                    yield block

        try:
            response = self.transport.request(
                "PUT",
                self._commit_url(location, digest),
                scopes=self._push(ref),
                headers={"Content-Type": OCTET, "Content-Length": str(size)},
                content=body,
                retry=False,
                ok=(201, 204),
                what=f"blob {digest.short} to {ref.name}",
            )
        except (TransportError, ResponseError):
            progress(-sent)
            raise
        _check_digest_header(response, digest, ref)

    def _put_chunked(
        self,
        ref: Reference,
        location: str,
        digest: Digest,
        size: int,
        opener: Callable[[], BinaryIO],
        progress: Progress,
    ) -> None:
        offset = 0
        reported = 0
        failures = 0
        policy = self.transport.options.retry
        with opener() as f:
            while offset < size:
                length = min(CHUNK_SIZE, size - offset)
                f.seek(offset)
                start = offset

                def chunk(start: int = start, length: int = length) -> Iterator[bytes]:
                    left = length
                    f.seek(start)
                    while left > 0:
                        block = f.read(min(_READ, left))
                        if not block:
                            break
                        left -= len(block)
                        yield block

                try:
                    response = self.transport.request(
                        "PATCH",
                        location,
                        scopes=self._push(ref),
                        headers={
                            # distribution answers 500 to a PATCH without this Content-Type.
                            "Content-Type": OCTET,
                            "Content-Range": f"{start}-{start + length - 1}",
                            "Content-Length": str(length),
                        },
                        content=chunk,
                        retry=False,
                        ok=(202, 204),
                        what=f"blob {digest.short} to {ref.name}",
                    )
                except (TransportError, ResponseError) as e:
                    if not (getattr(e, "retryable", False) or getattr(e, "status", 0) == 416):
                        raise
                    failures += 1
                    if failures >= policy.attempts:
                        raise
                    self.transport.sleep(policy.delay(failures))
                    status = self.upload_status(ref, location)
                    if status is None:
                        progress(-reported)
                        raise  # the session is gone: the caller starts a new one
                    offset, location = status
                    progress(offset - reported)
                    reported = offset
                    continue
                location = self._location(response)
                offset = start + length
                progress(offset - reported)
                reported = offset
        try:
            response = self.transport.request(
                "PUT",
                self._commit_url(location, digest),
                scopes=self._push(ref),
                headers={"Content-Type": OCTET, "Content-Length": "0"},
                retry=False,
                ok=(201, 204),
                what=f"blob {digest.short} to {ref.name}",
            )
        except (TransportError, ResponseError):
            progress(-reported)
            raise
        _check_digest_header(response, digest, ref)


_HTTP_ERRORS = (httpx.HTTPError, TransportError)


class BlobReader:
    """A file-like view of a streamed blob response that checks size and digest at EOF."""

    def __init__(self, response: httpx.Response, desc: Descriptor, what: str, host: str) -> None:
        self._response = response
        self._chunks = response.iter_raw()
        self._hasher = desc.digest.hasher()
        self.desc = desc
        self.what = what
        self.host = host

    def read(self, n: int = -1) -> bytes:
        try:
            block = next(self._chunks, b"")
        except httpx.HTTPError as e:
            raise TransportError(f"download of {self.what} from {self.host} broke: {e}") from None
        if block:
            self._hasher.update(block)
            return block
        actual = self._hasher.digest()
        if actual != self.desc.digest:
            raise DigestMismatch(self.desc.digest, actual, what=self.what)
        return b""

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _range_starts_at(response: httpx.Response, offset: int) -> bool:
    content_range = response.headers.get("content-range", "")
    # "bytes 100-199/200"
    try:
        first = content_range.split(" ", 1)[1].split("-", 1)[0]
        return int(first) == offset
    except (IndexError, ValueError):
        return False


def _check_digest_header(response: httpx.Response, digest: Digest, ref: Reference) -> None:
    header = response.headers.get("docker-content-digest")
    if header and header.startswith(f"{digest.algorithm}:") and Digest.parse(header) != digest:
        raise DigestMismatch(digest, Digest.parse(header), what=f"uploaded blob in {ref.name}")


def _digest_with(algorithm: str, data: bytes) -> Digest:
    import hashlib

    return Digest(algorithm, hashlib.new(algorithm, data).hexdigest())


def _sniff_media_type(raw: bytes) -> str:
    import json

    try:
        doc = json.loads(raw)
    except ValueError:
        return MediaType.OCI_MANIFEST
    if isinstance(doc, dict):
        if isinstance(doc.get("mediaType"), str):
            return str(doc["mediaType"])
        if "manifests" in doc:
            return MediaType.OCI_INDEX
    return MediaType.OCI_MANIFEST


def _next_link(header: str | None, base: str) -> str | None:
    """The ``rel="next"`` target of an RFC 5988 Link header, absolute."""
    if not header:
        return None
    for part in header.split(","):
        if 'rel="next"' in part or "rel=next" in part:
            start, end = part.find("<"), part.find(">")
            if start >= 0 and end > start:
                return urljoin(base, part[start + 1 : end])
    return None
