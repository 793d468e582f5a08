"""Pieces of the transport that need no server: error mapping, backoff, parallel transfers."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from registry.errors import (
    AuthenticationError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ResponseError,
)
from registry.parallel import Cancelled, TransferPool
from registry.progress import ProgressSink
from registry.transport import RetryPolicy, error_from_response


def _response(
    status: int, body: object = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    content = json.dumps(body).encode() if body is not None else b""
    request = httpx.Request("GET", "https://u:pw@reg.io/v2/a/manifests/1?token=secret")
    return httpx.Response(status, content=content, headers=headers or {}, request=request)


def _errors(*codes: str) -> dict[str, object]:
    return {
        "errors": [
            {"code": c, "message": f"{c.lower()} happened", "detail": {"x": 1}} for c in codes
        ]
    }


@pytest.mark.parametrize(
    ("status", "body", "kind", "retryable", "text"),
    [
        (
            401,
            _errors("UNAUTHORIZED"),
            AuthenticationError,
            False,
            "unauthorized: unauthorized happened",
        ),
        (403, _errors("DENIED"), PermissionDenied, False, "denied: denied happened"),
        (404, _errors("MANIFEST_UNKNOWN"), NotFound, False, "manifest_unknown"),
        (404, _errors("NAME_UNKNOWN"), NotFound, False, "name_unknown"),
        (400, _errors("BLOB_UNKNOWN"), NotFound, False, "blob_unknown"),
        (429, _errors("TOOMANYREQUESTS"), RateLimited, True, "toomanyrequests"),
        (400, _errors("DIGEST_INVALID", "SIZE_INVALID"), ResponseError, False, "digest_invalid"),
        (500, None, ResponseError, True, "HTTP 500"),
        (503, {"not": "distribution"}, ResponseError, True, "HTTP 503"),
        (502, "not json at all", ResponseError, True, "HTTP 502"),
    ],
)
def test_error_mapping(
    status: int, body: object, kind: type[ResponseError], retryable: bool, text: str
) -> None:
    err = error_from_response(_response(status, body), what="thing")
    assert type(err) is kind
    assert err.retryable is retryable
    assert err.status == status
    assert text in str(err)
    assert "pw" not in err.url and "secret" not in err.url


def test_retry_after_is_parsed() -> None:
    err = error_from_response(_response(429, _errors("TOOMANYREQUESTS"), {"Retry-After": "12"}))
    assert isinstance(err, RateLimited) and err.retry_after == 12.0


def test_backoff_is_bounded_and_jittered() -> None:
    policy = RetryPolicy(attempts=8, base_delay=0.5, max_delay=4.0, total=60.0)
    delays = [policy.delay(n) for n in range(1, 9)]
    assert all(0.25 <= d <= 4.0 for d in delays)
    assert max(delays[4:]) > max(delays[:1])  # grows
    assert len({round(policy.delay(3), 6) for _ in range(20)}) > 1  # jitter
    assert policy.delay(1, retry_after=7.0) == 7.0
    assert policy.delay(1, retry_after=1000.0) == 60.0  # within the total budget


def test_transfer_pool_stops_the_others_on_failure() -> None:
    pool = TransferPool(4, ProgressSink())
    seen: list[str] = []

    def slow() -> object:
        step = pool.task("slow", "slow", None)
        try:
            for _ in range(500):
                step(1)
                time.sleep(0.01)
        except Cancelled:
            seen.append("cancelled")
            raise
        return None

    def failing() -> object:
        time.sleep(0.05)
        raise ValueError("boom")

    pool.add("slow", slow)
    pool.add("failing", failing)
    started = time.monotonic()
    with pytest.raises(ValueError, match="boom"):
        pool.run()
    assert seen == ["cancelled"]
    assert time.monotonic() - started < 3


def test_pull_and_push_do_not_import_rich_until_a_bar_is_drawn() -> None:
    import subprocess
    import sys

    code = (
        "import sys, registry.pull, registry.push, registry.copy, builder.cli.registry\n"
        "print(sorted(m for m in ('rich', 'pygments') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
