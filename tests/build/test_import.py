"""``pybuild import``: a root file system directory or tarball becomes a one-layer image."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from .conftest import Pybuild

pytestmark = pytest.mark.root


def test_import_tarball_with_changes(
    pybuild: Pybuild, busybox_rootfs: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "rootfs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(busybox_rootfs, arcname=".")
    pybuild(
        "import", str(archive), "imported:1",
        "--change", "ENV MODE=imported", "--change", "WORKDIR /tmp",
        "--change", 'ENTRYPOINT ["sh", "-c"]', "--change", 'CMD ["echo $MODE in $(pwd)"]',
    )  # fmt: skip
    config = pybuild.config("imported:1")
    assert len(config["rootfs"]["diff_ids"]) == 1
    assert config["config"]["WorkingDir"] == "/tmp"
    assert pybuild("run", "imported:1").stdout == "imported in /tmp\n"
    bad = pybuild("import", str(archive), "imported:2", "--change", "RUN true", check=False)
    assert bad.returncode == 1 and "RUN" in bad.stderr
