"""The filesystem model and its comparer, on generated layer tars.

Each row builds two images from small tars (a shared lower layer, then one layer per side)
and names the differences the comparer must report, by path and field: a comparer that
misses a mode, owner, content, link target or whiteout difference would let the
conformance cases pass while pybuild is wrong.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from typing import Any

import pytest

from .configcompare import DEFAULT_CONFIG_SKIPS, compare_configs
from .fsmodel import (
    BUILD_TIME,
    Entry,
    LayerFormatError,
    build_model,
    compare_models,
    mtime_bucket,
    without_buildah_run_stubs,
)

OLD = 946684800  # 2000-01-01, a fixed time kept exactly
NEW = 1_900_000_000  # after BUILD_EPOCH: "build"


def layer(*members: tuple[Any, ...], compress: bool = False) -> io.BytesIO:
    """A layer tar from (kind, path, ...) rows; see the kinds below."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, path, *rest in members:
            opts: dict[str, Any] = rest[0] if rest and isinstance(rest[0], dict) else {}
            info = tarfile.TarInfo(path)
            info.mtime = opts.get("mtime", OLD)
            info.uid, info.gid = opts.get("uid", 0), opts.get("gid", 0)
            data = b""
            if kind == "file":
                data = opts.get("data", b"x")
                info.size, info.mode = len(data), opts.get("mode", 0o644)
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, opts.get("mode", 0o755)
            elif kind == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, opts["target"], 0o777
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, opts["target"]
            elif kind == "whiteout":
                head, _, base = path.rpartition("/")
                info.name = f"{head}/.wh.{base}" if head else f".wh.{base}"
            elif kind == "opaque":
                info.name = f"{path}/.wh..wh..opq"
            else:
                raise ValueError(kind)
            if "xattrs" in opts:
                info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in opts["xattrs"].items()}
            tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
    data = raw.getvalue()
    return io.BytesIO(gzip.compress(data) if compress else data)


LOWER = (
    ("dir", "etc"),
    ("file", "etc/passwd", {"data": b"root"}),
    ("file", "etc/group", {"data": b"root"}),
    ("dir", "data"),
    ("dir", "data/old"),
    ("file", "data/old/f"),
    ("file", "data/keep"),
)

# (id, left layer, right layer, expected (path, field) differences)
COMPARER_CASES: list[tuple[str, tuple[Any, ...], tuple[Any, ...], list[tuple[str, str]]]] = [
    ("identical", (("file", "a"),), (("file", "a"),), []),
    (
        "mode",
        (("file", "a", {"mode": 0o644}),),
        (("file", "a", {"mode": 0o600}),),
        [("/a", "mode")],
    ),
    (
        "setuid bit",
        (("file", "a", {"mode": 0o4755}),),
        (("file", "a", {"mode": 0o755}),),
        [("/a", "mode")],
    ),
    ("uid", (("file", "a", {"uid": 1}),), (("file", "a"),), [("/a", "uid")]),
    ("gid", (("dir", "d", {"gid": 7}),), (("dir", "d"),), [("/d", "gid")]),
    (
        "content same size",
        (("file", "a", {"data": b"one"}),),
        (("file", "a", {"data": b"two"}),),
        [("/a", "sha256")],
    ),
    (
        "content and size",
        (("file", "a", {"data": b"one"}),),
        (("file", "a", {"data": b"three"}),),
        [("/a", "size"), ("/a", "sha256")],
    ),
    (
        "symlink target",
        (("symlink", "l", {"target": "/etc/passwd"}),),
        (("symlink", "l", {"target": "etc/passwd"}),),
        [("/l", "target")],
    ),
    (
        "type",
        (("file", "x"),),
        (("dir", "x"),),
        [("/x", "type"), ("/x", "mode"), ("/x", "size"), ("/x", "sha256")],
    ),
    ("missing whiteout", (("whiteout", "etc/group"),), (), [("/etc/group", "exists")]),
    (
        "whiteout of a directory hides its subtree",
        (("whiteout", "data/old"),),
        (),
        [("/data/old", "exists"), ("/data/old/f", "exists")],
    ),
    (
        "missing opaque marker",
        (("dir", "data"), ("opaque", "data"), ("file", "data/new")),
        (("dir", "data"), ("file", "data/new")),
        [("/data/keep", "exists"), ("/data/old", "exists"), ("/data/old/f", "exists")],
    ),
    (
        "opaque marker written after the new children",
        (("dir", "data"), ("file", "data/new"), ("opaque", "data")),
        (("dir", "data"), ("opaque", "data"), ("file", "data/new")),
        [],
    ),
    (
        "hard link versus a copy",
        (("file", "a", {"data": b"same"}), ("hardlink", "b", {"target": "a"})),
        (("file", "a", {"data": b"same"}), ("file", "b", {"data": b"same"})),
        [("/a", "hardlinks"), ("/b", "hardlinks")],
    ),
    (
        "hard link to a lower layer's file takes its content",
        (("hardlink", "p", {"target": "etc/passwd"}),),
        (("file", "p", {"data": b"root"}),),
        [("/etc/passwd", "hardlinks"), ("/p", "hardlinks")],
    ),
    (
        "xattr",
        (("file", "a", {"xattrs": {"user.k": "1"}}),),
        (("file", "a"),),
        [("/a", "xattrs")],
    ),
    (
        "mtime",
        (("file", "a", {"mtime": OLD}),),
        (("file", "a", {"mtime": NEW}),),
        [("/a", "mtime")],
    ),
    (
        "two build times are equal",
        (("file", "a", {"mtime": NEW}),),
        (("file", "a", {"mtime": NEW + 5}),),
        [],
    ),
    (
        "a file replaces a lower directory and its subtree",
        (("file", "data"),),
        (),
        [
            ("/data", "type"),
            ("/data", "mode"),
            ("/data", "size"),
            ("/data", "sha256"),
            ("/data/keep", "exists"),
            ("/data/old", "exists"),
            ("/data/old/f", "exists"),
        ],
    ),
    (
        "a parent no layer has is implicit",
        (("file", "new/deep/f"),),
        (("dir", "new"), ("dir", "new/deep"), ("file", "new/deep/f")),
        [
            ("/new", "mtime"),
            ("/new", "implicit"),
            ("/new/deep", "mtime"),
            ("/new/deep", "implicit"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        pytest.param(left, right, expected, id=name)
        for name, left, right, expected in COMPARER_CASES
    ],
)
def test_comparer_reports(
    left: tuple[Any, ...], right: tuple[Any, ...], expected: list[tuple[str, str]]
) -> None:
    ours = build_model([layer(*LOWER), layer(*left)])
    theirs = build_model([layer(*LOWER), layer(*right)])
    diffs = compare_models(ours, theirs)
    assert [(d.path, d.field) for d in diffs] == expected
    assert compare_models(theirs, ours) == [
        type(d)(d.path, d.field, d.right, d.left) for d in diffs
    ]


def test_difference_names_the_path_and_both_values() -> None:
    ours = build_model([layer(("file", "srv/a b", {"mode": 0o640}))])
    theirs = build_model([layer(("file", "srv/a b", {"mode": 0o644}))])
    assert [str(d) for d in compare_models(ours, theirs)] == ["/srv/a b: mode: 0o640 != 0o644"]


def test_ignore_skips_a_field_for_the_given_types_only() -> None:
    ours = build_model([layer(("dir", "d", {"mtime": OLD}), ("file", "d/f", {"mtime": OLD}))])
    theirs = build_model([layer(("dir", "d", {"mtime": NEW}), ("file", "d/f", {"mtime": NEW}))])
    diffs = compare_models(ours, theirs, ignore={"mtime": ["dir"]})
    assert [(d.path, d.field) for d in diffs] == [("/d/f", "mtime")]
    assert compare_models(ours, theirs, ignore={"mtime": ["*"]}) == []
    with pytest.raises(ValueError, match="colour"):
        compare_models(ours, theirs, ignore={"colour": ["*"]})


def test_model_records_every_attribute() -> None:
    model = build_model(
        [
            layer(*LOWER, compress=True),  # gzip layers are read too
            layer(
                ("file", "bin/tool", {"data": b"abc", "mode": 0o4711, "uid": 5, "gid": 6}),
                ("hardlink", "bin/alias", {"target": "bin/tool"}),
                ("symlink", "bin/link", {"target": "tool"}),
            ),
        ]
    )
    tool = model["/bin/tool"]
    assert tool == Entry(
        "file",
        0o4711,
        5,
        6,
        size=3,
        sha256="ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        mtime=OLD,
        hardlinks=("/bin/alias",),
    )
    assert model["/bin/alias"].sha256 == tool.sha256
    assert model["/bin/link"].target == "tool"
    assert model["/bin"].implicit
    assert "/data/old/f" in model


def test_whiteout_then_recreate_in_a_later_layer() -> None:
    model = build_model(
        [
            layer(*LOWER),
            layer(("whiteout", "data")),
            layer(("dir", "data", {"mode": 0o700}), ("file", "data/n")),
        ]
    )
    assert [p for p in model if p.startswith("/data")] == ["/data", "/data/n"]
    assert model["/data"].mode == 0o700


def test_mtime_buckets() -> None:
    assert mtime_bucket(OLD + 0.9) == OLD
    assert mtime_bucket(NEW) == BUILD_TIME


@pytest.mark.parametrize(
    "members",
    [
        (("hardlink", "b", {"target": "nowhere"}),),
        (("hardlink", "b", {"target": "etc"}),),
    ],
    ids=["to a missing file", "to a directory"],
)
def test_bad_hard_link_is_an_error_naming_the_member(members: tuple[Any, ...]) -> None:
    with pytest.raises(LayerFormatError, match="layer 1: b: hard link"):
        build_model([layer(*LOWER), layer(*members)])


def test_not_a_tar_is_an_error() -> None:
    with pytest.raises(LayerFormatError, match="layer 0: not a tar"):
        build_model([io.BytesIO(b"\x00garbage" * 100)])


STUBS = (("file", "etc/hostname", {"data": b"", "mtime": NEW}), ("dir", "run", {"mtime": NEW}))


@pytest.mark.parametrize(
    ("theirs_layer", "expected"),
    [
        pytest.param(
            (("dir", "etc", {"mtime": NEW}), *STUBS), [], id="empty stubs and their /etc mtime"
        ),
        pytest.param(
            (("dir", "etc", {"mtime": NEW}), ("file", "etc/hostname", {"data": b"host"})),
            [("/etc", "mtime"), ("/etc/hostname", "exists")],
            id="a stub with content is a real file",
        ),
        pytest.param(
            (("dir", "run"), ("file", "run/x")),
            [("/run", "exists"), ("/run/x", "exists")],
            id="a non-empty /run is real",
        ),
        pytest.param(
            (("dir", "etc", {"mtime": NEW}), ("file", "etc/group2")),
            [("/etc", "mtime"), ("/etc/group2", "exists")],
            id="only a stub excuses the /etc mtime",
        ),
    ],
)
def test_buildah_run_stubs_are_dropped_only_when_empty(
    theirs_layer: tuple[Any, ...], expected: list[tuple[str, str]]
) -> None:
    ours = build_model([layer(*LOWER)])
    theirs = without_buildah_run_stubs(ours, build_model([layer(*LOWER), layer(*theirs_layer)]))
    assert [(d.path, d.field) for d in compare_models(ours, theirs)] == expected


def test_buildah_run_stubs_are_kept_when_pybuild_has_them() -> None:
    ours = build_model([layer(*LOWER, ("file", "etc/hostname", {"data": b"x"}))])
    theirs = without_buildah_run_stubs(ours, build_model([layer(*LOWER), layer(*STUBS)]))
    assert [(d.path, d.field) for d in compare_models(ours, theirs)] == [
        ("/etc/hostname", "size"),
        ("/etc/hostname", "sha256"),
        ("/etc/hostname", "mtime"),
    ]  # /run is still dropped: pybuild has none


# -- configs ----------------------------------------------------------------------------

BUILDAH_CONFIG = {
    "created": "2026-01-01T00:00:00.1Z",
    "container": "d28c",
    "config": {
        "Hostname": "f953ee0c1aee",
        "Domainname": "",
        "AttachStdin": False,
        "Env": ["PATH=/bin", "A=1"],
        "Entrypoint": [],
        "OnBuild": [],
        "Volumes": {},
        "Labels": {"io.buildah.version": "1.28.2", "a": "b"},
    },
    "rootfs": {"type": "layers", "diff_ids": ["sha256:1"]},
    "history": [{"created_by": "x"}],
}
PYBUILD_CONFIG = {
    "created": "2026-01-01T00:00:05Z",
    "config": {"Env": ["PATH=/bin", "A=1"], "Labels": {"a": "b"}},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:2"]},
    "history": [{"created_by": "y"}],
}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, []),
        ({"User": "app"}, ["config/User"]),
        ({"Env": ["A=1", "PATH=/bin"]}, ["config/Env[0]", "config/Env[1]"]),
        ({"Env": ["PATH=/bin"]}, ["config/Env"]),
        ({"Labels": {"a": "c"}}, ["config/Labels/a"]),
        ({"Entrypoint": ["sh"]}, ["config/Entrypoint"]),
        ({"ExposedPorts": {"80/tcp": {}}}, ["config/ExposedPorts"]),
        ({"Healthcheck": {"Test": ["NONE"]}}, ["config/Healthcheck"]),
    ],
    ids=["equal", "user", "env order", "env missing", "label", "entrypoint", "port", "health"],
)
def test_config_comparer(change: dict[str, Any], expected: list[str]) -> None:
    ours = {**PYBUILD_CONFIG, "config": {**PYBUILD_CONFIG["config"], **change}}  # type: ignore[dict-item]
    diffs = compare_configs(ours, BUILDAH_CONFIG, DEFAULT_CONFIG_SKIPS)
    assert [d.path for d in diffs] == expected


def test_config_comparer_without_skips_sees_the_builder_fields() -> None:
    paths = {d.path.split("[")[0] for d in compare_configs(PYBUILD_CONFIG, BUILDAH_CONFIG)}
    assert {"created", "container", "config/Hostname", "rootfs/diff_ids"} <= paths
