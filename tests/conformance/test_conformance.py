"""pybuild against Buildah: for each case, the same image config and the same final filesystem.

Each case of ``fixtures/conformance/`` gives two tests: ``test_config`` compares the
Docker-format configs (:mod:`.configcompare`, default skips plus the case's own, each with a
reason) and ``test_filesystem`` the filesystems made by applying each image's layers
(:mod:`.fsmodel`). Where Buildah departs from the Dockerfile reference the case says so
(``documented``) and pybuild is held to the reference instead; a known pybuild defect is a
strict xfail naming what differs.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest

from .configcompare import DEFAULT_CONFIG_SKIPS, compare_configs, value_at
from .conftest import Case, CaseBuilds, Tools, case_names
from .fsmodel import Entry, ImageArchive, compare_models, without_buildah_run_stubs

pytestmark = [pytest.mark.root, pytest.mark.tools, pytest.mark.registry]


def _params(kind: str) -> list[Any]:
    params = []
    for name in case_names():
        case = Case.load(name)
        marks = []
        if kind in case.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=case.xfail[kind]))
        params.append(pytest.param(name, id=name, marks=marks))
    return params


@cache
def _config(archive: Path) -> dict[str, Any]:
    return ImageArchive(archive).config()


@cache
def _model(archive: Path) -> dict[str, Entry]:
    return ImageArchive(archive).model()


def _expected(field: str, value: Any) -> Any:
    if field == "mode" and isinstance(value, str):
        return int(value, 8)
    return value


@pytest.mark.parametrize("case_name", _params("config"))
def test_config(case_name: str, builds: dict[str, CaseBuilds]) -> None:
    built = builds[case_name]
    case = built.case
    ours = _config(built.pybuild.require("pybuild"))
    theirs = _config(built.buildah.require("buildah"))
    documented = [d for d in case.documented if "config" in d]
    skip = [*DEFAULT_CONFIG_SKIPS, *case.skip_config, *(d["config"] for d in documented)]
    problems = [f"{d}  (pybuild != buildah)" for d in compare_configs(ours, theirs, skip)]
    for doc in documented:
        path, expected = doc["config"], doc["expected"]
        if value_at(ours, path) != expected:
            problems.append(
                f"{path}: pybuild {value_at(ours, path)!r}, the reference says {expected!r}"
                f" ({doc['reference']})"
            )
        if value_at(theirs, path) == expected:
            problems.append(f"{path}: Buildah now gives {expected!r}: drop the departure note")
    assert not problems, f"{case_name}: config differences:\n" + "\n".join(problems)


@pytest.mark.parametrize("case_name", _params("fs"))
def test_filesystem(case_name: str, builds: dict[str, CaseBuilds], tools: Tools) -> None:
    built = builds[case_name]
    case = built.case
    ours = _model(built.pybuild.require("pybuild"))
    if ours == _model(tools.base_archive):
        # Guards against a case (or the wiring) that compares two copies of the base image.
        config = _config(built.pybuild.require("pybuild"))
        assert compare_configs(config, _config(tools.base_archive), DEFAULT_CONFIG_SKIPS), (
            f"{case_name}: pybuild's result is the base image itself: the case tests nothing"
        )
    theirs = without_buildah_run_stubs(ours, _model(built.buildah.require("buildah")))
    ignore = {name: spec["types"] for name, spec in case.skip_fs.items()}
    documented = {(d["path"], d["field"]): d for d in case.documented if "path" in d}
    problems = [
        f"{d}  (pybuild != buildah)"
        for d in compare_models(ours, theirs, ignore=ignore)
        if (d.path, d.field) not in documented
    ]
    for (path, name), doc in documented.items():
        expected = _expected(name, doc["expected"])

        def value(model: dict[str, Entry], path: str = path, name: str = name) -> Any:
            entry = model.get(path)
            if name == "exists":
                return entry is not None
            return None if entry is None else getattr(entry, name)

        if value(ours) != expected:
            problems.append(
                f"{path}: {name}: pybuild {value(ours)!r}, the reference says {expected!r}"
                f" ({doc['reference']})"
            )
        if value(theirs) == expected:
            problems.append(f"{path}: {name}: Buildah now gives {expected!r}: drop the note")
    assert not problems, f"{case_name}: filesystem differences:\n" + "\n".join(problems)
