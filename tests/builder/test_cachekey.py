"""Cache keys and content digests: what changes a key, and what must not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.cachekey import ContentHasher, step_key
from layerstore.db import Database


def test_step_key_is_deterministic_and_order_independent() -> None:
    a = step_key(None, instruction="RUN x", visible={"A": "1", "B": "2"}, inputs={"base": "d"})
    b = step_key(None, instruction="RUN x", visible={"B": "2", "A": "1"}, inputs={"base": "d"})
    assert a.hex == b.hex and len(a.hex) == 64


@pytest.mark.parametrize(
    "change",
    [
        {"instruction": "RUN y"},
        {"visible": {"A": "2", "B": "2"}},
        {"visible": {"A": "1"}},
        {"inputs": {"base": "e"}},
        {"platform": "linux/arm64"},
    ],
)
def test_step_key_changes_with_each_input(change: dict[str, object]) -> None:
    base = {"instruction": "RUN x", "visible": {"A": "1", "B": "2"}, "inputs": {"base": "d"}}
    a = step_key(None, **base)  # type: ignore[arg-type]
    b = step_key(None, **{**base, **change})  # type: ignore[arg-type]
    assert a.hex != b.hex


def test_step_key_chains_parent() -> None:
    p1 = step_key(None, instruction="FROM a")
    p2 = step_key(None, instruction="FROM b")
    assert step_key(p1, instruction="RUN x").hex != step_key(p2, instruction="RUN x").hex


def _tree(root: Path) -> None:
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"hello")
    (root / "g").write_bytes(b"world")
    os.symlink("g", root / "link")


@pytest.mark.parametrize("with_db", [False, True])
def test_content_digest_rules(tmp_path: Path, with_db: bool) -> None:
    root = tmp_path / "ctx"
    root.mkdir()
    _tree(root)
    db = Database(tmp_path / "db.sqlite") if with_db else None
    hasher = ContentHasher(db)
    paths = ["d", "d/f", "g", "link"]
    first = hasher.digest_paths(root, paths)
    # same selection in another order → same digest
    assert ContentHasher(db).digest_paths(root, reversed(paths)) == first
    # touching the mtime only → same digest
    os.utime(root / "g", ns=(1, 1))
    assert ContentHasher(db).digest_paths(root, paths) == first
    # content change (same size) → different digest, even with a forged identical mtime
    st = os.stat(root / "d" / "f")
    (root / "d" / "f").write_bytes(b"HELLO")
    os.utime(root / "d" / "f", ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = ContentHasher(db).digest_paths(root, paths)
    assert changed != first
    # mode change → different
    os.chmod(root / "g", 0o600)
    assert ContentHasher(db).digest_paths(root, paths) != changed
    # link target change → different
    before = ContentHasher(db).digest_paths(root, paths)
    os.unlink(root / "link")
    os.symlink("d/f", root / "link")
    assert ContentHasher(db).digest_paths(root, paths) != before
    # selecting a different set of paths → different
    assert ContentHasher(db).digest_paths(root, ["g"]) != ContentHasher(db).digest_paths(
        root, ["g", "d/f"]
    )


def test_memo_avoids_rereading_unchanged_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "ctx"
    root.mkdir()
    (root / "big").write_bytes(b"x" * 1000)
    db = Database(tmp_path / "db.sqlite")
    first = ContentHasher(db).digest_paths(root, ["big"])
    assert db.connection().execute("SELECT COUNT(*) FROM file_digests").fetchone()[0] == 1

    import builtins

    opened: list[object] = []
    real_open = builtins.open

    def counting_open(file: object, *args: object, **kwargs: object) -> object:
        opened.append(file)
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(builtins, "open", counting_open)
    # A new hasher (a new build) finds the memo in the database and reads nothing.
    assert ContentHasher(db).digest_paths(root, ["big"]) == first
    assert opened == []
    # Once the file changes, it is read again.
    (root / "big").write_bytes(b"y" * 1000)
    assert ContentHasher(db).digest_paths(root, ["big"]) != first
    assert opened == [root / "big"]
