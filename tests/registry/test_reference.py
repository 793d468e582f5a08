"""Reference parsing and normalisation, driven by fixtures/registry/references.tsv."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerstore.digest import Digest
from registry.errors import InvalidReference
from registry.reference import Reference

TABLE = Path(__file__).resolve().parents[2] / "fixtures" / "registry" / "references.tsv"


def _rows() -> list[list[str]]:
    rows = []
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip("\n"):
            continue
        rows.append(line.split("\t"))
    return rows


VALID = [r for r in _rows() if not r[1].startswith("!")]
INVALID = [r for r in _rows() if r[1].startswith("!")]


def test_table_is_large_enough() -> None:
    assert len(VALID) >= 25 and len(INVALID) >= 25


@pytest.mark.parametrize(
    ("text", "normalised", "familiar", "registry", "repository", "tag", "digest"),
    VALID,
    ids=[r[0][:40] for r in VALID],
)
def test_valid(
    text: str,
    normalised: str,
    familiar: str,
    registry: str,
    repository: str,
    tag: str,
    digest: str,
) -> None:
    ref = Reference.parse(text)
    assert str(ref) == normalised
    assert ref.familiar() == familiar
    assert ref.registry == registry
    assert ref.repository == repository
    assert ref.tag == (None if tag == "-" else tag)
    assert ref.digest == (None if digest == "-" else Digest.parse(digest))
    # Normalisation is idempotent: the printed forms parse back to the same reference.
    assert Reference.parse(str(ref)) == ref
    assert Reference.parse(ref.familiar()) == ref


@pytest.mark.parametrize(
    ("text", "error"), [r[:2] for r in INVALID], ids=[r[0][:40] for r in INVALID]
)
def test_invalid(text: str, error: str) -> None:
    with pytest.raises(InvalidReference) as info:
        Reference.parse(text)
    assert error[1:] in str(info.value)
    assert isinstance(info.value, ValueError)


def test_api_host_and_name() -> None:
    hub = Reference.parse("alpine")
    assert hub.name == "docker.io/library/alpine"
    assert hub.api_host == "registry-1.docker.io"
    local = Reference.parse("127.0.0.1:5000/app:1")
    assert local.api_host == "127.0.0.1:5000"
    assert local.identifier == "1"


def test_identifier_prefers_digest() -> None:
    d = Digest.of(b"x")
    ref = Reference.parse(f"x.io/app:1@{d}")
    assert ref.identifier == str(d)


def test_with_tag_and_digest() -> None:
    d = Digest.of(b"x")
    ref = Reference.parse("x.io/app:1")
    pinned = ref.with_digest(d)
    assert str(pinned) == f"x.io/app:1@{d}"
    assert str(pinned.with_tag("2")) == "x.io/app:2"
    assert str(ref.with_digest(str(d))) == str(pinned)
    with pytest.raises(InvalidReference, match="invalid tag"):
        ref.with_tag("-bad")
    with pytest.raises(InvalidReference, match="invalid digest"):
        ref.with_digest("sha256:12")


def test_bare_repository() -> None:
    ref = Reference.parse("x.io/app", default_tag=None)
    assert ref.tag is None and str(ref) == "x.io/app"
    assert str(Reference.parse("x.io/app:3").repo()) == "x.io/app"
    assert str(ref.in_repository("other/app")) == "x.io/other/app"


@pytest.mark.parametrize(
    ("actions", "scope"),
    [
        ("pull", "repository:library/alpine:pull"),
        (["push", "pull"], "repository:library/alpine:pull,push"),
        ("pull,push", "repository:library/alpine:pull,push"),
        (("pull", "pull"), "repository:library/alpine:pull"),
    ],
)
def test_scope(actions: str | list[str], scope: str) -> None:
    assert Reference.parse("alpine").scope(actions) == scope
