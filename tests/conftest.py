"""Shared pytest fixtures and paths."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
# Public upstream test data lives beside the project (never copied into it); a user's clone
# has no shared/, so tests that read it skip with this reason.
SHARED_CORPUS = ROOT.parent / "shared" / "corpus"
NO_CORPUS_REASON = f"upstream corpus not present at {SHARED_CORPUS} (only in the dev workplace)"


@pytest.fixture
def store_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty local store for one test (sets PYBUILD_ROOT)."""
    root = tmp_path / "store"
    monkeypatch.setenv("PYBUILD_ROOT", str(root))
    return root
