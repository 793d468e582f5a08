"""End-to-end build fixtures: a session store with a busybox base image, and a CLI runner.

Every test drives the real ``pybuild`` command (a subprocess, so exit codes, stdin and
stdout are the user's) against one store on tmpfs shared by the session, so the base image
is imported once. Tests that need a cold cache use their own store (``fresh_store``).
Builds need root (namespaces, overlayfs); without it the whole folder skips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures" / "build"
BASE = "busybox:test"

pytestmark = pytest.mark.root


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "builds need root (namespaces and overlayfs)"
    if shutil.which("busybox") is None:
        return "busybox not installed (apt-get install busybox-static)"
    try:
        from builder.sandbox import check_sandbox_support

        check_sandbox_support()
    except Exception as e:  # SandboxUnavailable, with the reason
        return str(e)
    return None


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Pybuild:
    """Runs ``pybuild`` with a given store."""

    def __init__(self, store: Path) -> None:
        self.store = store

    def __call__(
        self,
        *args: str,
        input: bytes | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Result:
        environment = dict(os.environ)
        environment.pop("SOURCE_DATE_EPOCH", None)
        environment.update(PYBUILD_ROOT=str(self.store), **(env or {}))
        proc = subprocess.run(
            [sys.executable, "-m", "builder", *args],
            input=input,
            capture_output=True,
            env=environment,
            cwd=cwd or ROOT,
            timeout=300,
        )
        result = Result(
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"pybuild {' '.join(args)} exited {proc.returncode}:\n{result.output}"
            )
        return result

    def build(self, context: Path | str, *args: str, **kwargs: Any) -> Result:
        return self("build", "--progress", "plain", *args, str(context), **kwargs)

    def config(self, name: str) -> dict[str, Any]:
        out = self("inspect", name).stdout
        doc = json.loads(out)
        return dict(doc["Config"])

    def export(self, context: Path | str, dest: Path, *args: str) -> Path:
        self.build(context, "-o", f"type=local,dest={dest}", *args)
        return dest


def import_base(pybuild: Pybuild, rootfs: Path) -> None:
    pybuild("import", str(rootfs), BASE, "--change", 'CMD ["sh"]')


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    rootfs = tmp_path_factory.mktemp("busybox") / "rootfs"
    subprocess.run([str(ROOT / "scripts" / "make-busybox-rootfs"), str(rootfs)], check=True)
    return rootfs


def _tmpfs_dir(prefix: str) -> Path:
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


@pytest.fixture(scope="session")
def session_store(busybox_rootfs: Path) -> Iterator[Path]:
    store = _tmpfs_dir("pybuild-test-store-")
    import_base(Pybuild(store), busybox_rootfs)
    yield store
    shutil.rmtree(store, ignore_errors=True)


@pytest.fixture
def pybuild(session_store: Path) -> Pybuild:
    """``pybuild`` on the session store (base image ``busybox:test`` present)."""
    return Pybuild(session_store)


@pytest.fixture
def fresh_store(busybox_rootfs: Path) -> Iterator[Pybuild]:
    """``pybuild`` on a store of its own (cold cache), with the base image imported."""
    store = _tmpfs_dir("pybuild-test-fresh-")
    runner = Pybuild(store)
    import_base(runner, busybox_rootfs)
    yield runner
    shutil.rmtree(store, ignore_errors=True)


@pytest.fixture
def context(tmp_path: Path) -> Callable[[str], Path]:
    """Copy ``fixtures/build/<case>`` into a private directory (tests may change it)."""

    def make(case: str) -> Path:
        dest = tmp_path / case
        if dest.exists():  # the same test asks again: its (possibly changed) copy
            return dest
        shutil.copytree(FIXTURES / case, dest, symlinks=True)
        return dest

    return make


def tree(root: Path) -> dict[str, tuple[str, int, int, int, str]]:
    """Every path under ``root``: (type, mode, uid, gid, content or link target)."""
    out: dict[str, tuple[str, int, int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", 0, st.st_uid, st.st_gid, os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777, st.st_uid, st.st_gid, "")
            else:
                data = path.read_bytes()
                text = data.decode(errors="replace") if len(data) < 4096 else f"<{len(data)}>"
                out[rel] = ("file", st.st_mode & 0o7777, st.st_uid, st.st_gid, text)
    return out


def steps(output: str, word: str = "CACHED") -> list[str]:
    """Plain-progress lines reporting ``word`` (e.g. which steps were cached)."""
    return [line for line in output.splitlines() if line.rstrip().endswith(word)]


def history(config: dict[str, Any]) -> list[str]:
    return [h.get("created_by", "") for h in config.get("history", [])]


def write(path: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    return path


def lines(text: str) -> Sequence[str]:
    return [line for line in text.splitlines() if line.strip()]
