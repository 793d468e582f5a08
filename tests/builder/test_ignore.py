"""builder.ignore: .dockerignore reading, Docker-exact matching and the pruning context walker.

Tables: fixtures/dockerignore/ (our own, expectations from Docker's documentation and
moby/patternmatcher's rules) and, when present, the upstream moby/patternmatcher tables in
the shared corpus, read in place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import builder.ignore as ignore_module
from builder.dockerfile.grammar import load_parser
from builder.errors import ContextError, IgnorePatternError
from builder.ignore import (
    EntryKind,
    IgnoreMatcher,
    MatchKind,
    clean_path,
    find_ignore_file,
    load_matcher,
    read_ignore_file,
    walk_context,
)
from tests.conftest import FIXTURES, NO_CORPUS_REASON, SHARED_CORPUS

TABLES = FIXTURES / "dockerignore"
UPSTREAM = SHARED_CORPUS / "dockerignore"


def _load(path: Path) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["cases"]
    return cases


def _upstream(name: str) -> list[Any]:
    path = UPSTREAM / name
    if not path.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=NO_CORPUS_REASON))]
    params = []
    for case in _load(path):
        marks = []
        if case.get("platform") == "windows":
            marks.append(pytest.mark.skip(reason="Windows-only upstream case"))
        params.append(pytest.param(case, id=str(case.get("id", len(params))), marks=marks))
    return params


# ---- matching tables -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    _load(TABLES / "cases.json"),
    ids=lambda c: f"{'|'.join(c['lines'])}~{c['path']}",
)
def test_own_match_table(case: dict[str, Any]) -> None:
    text = "\n".join(case["lines"]) + "\n"
    if case.get("error"):
        with pytest.raises(IgnorePatternError):
            IgnoreMatcher.from_text(text)
        return
    matcher = IgnoreMatcher.from_text(text)
    assert matcher.excludes(case["path"]) is case["expected"], case["why"]


@pytest.mark.parametrize("case", _upstream("match_cases.json"))
def test_upstream_patternmatcher_table(case: dict[str, Any]) -> None:
    # Every api the table names (MatchesOrParentMatches, the deprecated Matches, New) agrees
    # with MatchesOrParentMatches on these inputs, so one entry point serves them all.
    if case.get("error"):
        with pytest.raises(IgnorePatternError):
            IgnoreMatcher.from_patterns(case["patterns"]).excludes(case["path"])
        return
    matcher = IgnoreMatcher.from_patterns(case["patterns"])
    if case.get("derived"):
        # Upstream asserts only that the second pattern is an exception (after trimming).
        assert matcher.patterns[-1].exception
        assert matcher.patterns[-1].text == "docs/README.md"
        assert matcher.excludes(case["path"]) is False
        return
    assert matcher.excludes(case["path"]) is case["expected"]


@pytest.mark.parametrize("case", _upstream("ignorefile_cases.json"))
def test_upstream_ignorefile_table(case: dict[str, Any]) -> None:
    assert read_ignore_file(case["content"]) == case["expected"]


@pytest.mark.parametrize("case", _load(TABLES / "read_cases.json"), ids=lambda c: c["name"])
def test_read_ignore_file_table(case: dict[str, Any]) -> None:
    assert read_ignore_file(case["text"]) == case["patterns"]


def test_from_lines_equals_from_text() -> None:
    lines = ["# c\n", "*.md\n", "!README.md\n"]
    by_lines = IgnoreMatcher.from_lines(lines)
    assert [str(p) for p in by_lines.patterns] == ["*.md", "!README.md"]
    assert by_lines.excludes("a.md") and not by_lines.excludes("README.md")


@pytest.mark.parametrize(
    ("pattern", "kind", "literal"),
    [
        ("a/b.txt", MatchKind.EXACT, "a/b.txt"),
        ("abc/**", MatchKind.PREFIX, "abc/"),
        ("**/foo/bar", MatchKind.SUFFIX, "/foo/bar"),
        ("**", MatchKind.SUFFIX, ""),
        ("**/*.go", MatchKind.REGEX, ""),
        ("a]b", MatchKind.REGEX, ""),
        ("a\\b", MatchKind.REGEX, ""),
    ],
)
def test_match_kind_follows_patternmatcher(pattern: str, kind: MatchKind, literal: str) -> None:
    compiled = IgnoreMatcher.from_patterns([pattern]).patterns[0]
    assert (compiled.kind, compiled.literal) == (kind, literal)


# ---- grammar and errors --------------------------------------------------------------------


def test_grammar_is_the_source_of_the_pattern_syntax() -> None:
    parser = load_parser("ignore_pattern")
    assert parser is load_parser("ignore_pattern")  # cached, built once
    assert parser.options.parser == "lalr"
    tree = parser.parse("src/**/[^a-c]?.py")
    segments = [c for c in tree.children if not hasattr(c, "type")]
    assert len(segments) == 3
    assert [t.data for t in tree.find_data("ignore_class")]


@pytest.mark.parametrize("pattern", ["a b", " x", "x ", "[ ]", "a\\ b", "\t#x", "[^ \t]/ /c"])
def test_grammar_keeps_whitespace_despite_dockerfile_ignores(pattern: str) -> None:
    # The Dockerfile part of the grammar %ignores blanks; pattern terminals must outrank it.
    tree = load_parser("ignore_pattern").parse(pattern)
    assert "".join(str(token) for token in tree.scan_values(lambda _: True)) == pattern


def test_exception_text_keeps_inner_leading_space_like_new() -> None:
    # patternmatcher.New trims the whole line, then strips "!": "! x" is the exception " x".
    matcher = IgnoreMatcher.from_patterns(["*", "! x"])
    assert (matcher.patterns[1].exception, matcher.patterns[1].text) == (True, " x")
    assert not matcher.excludes(" x") and matcher.excludes("x")


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("a[", "unterminated '['"),
        ("[^", "unterminated '['"),
        ("x\\", "trailing '\\'"),
        ("[]a]", "empty character class"),
        ("[a-b-c]", "'-' in a character class"),
        ("[z-a]", "reversed"),
    ],
)
def test_malformed_pattern_error_names_pattern_and_reason(pattern: str, reason: str) -> None:
    with pytest.raises(IgnorePatternError) as raised:
        IgnoreMatcher.from_patterns([pattern])
    assert repr(pattern) in str(raised.value)
    assert reason in str(raised.value)


def test_error_in_ignore_file_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("# header\nok\n\nsrc/[oops\n")
    with pytest.raises(IgnorePatternError) as raised:
        load_matcher(tmp_path, None)
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / '.dockerignore'}:4: ")
    assert "'src/[oops'" in message


@pytest.mark.parametrize(
    ("path", "cleaned"),
    [
        ("", "."),
        ("a//b/", "a/b"),
        ("./a/./b", "a/b"),
        ("a/../../b", "../b"),
        ("/../a", "/a"),
        ("//a", "/a"),
        ("/", "/"),
        ("a/..", "."),
    ],
)
def test_clean_path_is_go_clean(path: str, cleaned: str) -> None:
    assert clean_path(path) == cleaned


# ---- ignore file discovery -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("specific", "default", "expected"),
    [
        (True, True, "specific"),
        (True, False, "specific"),
        (False, True, "default"),
        (False, False, None),
    ],
)
def test_dockerfile_specific_ignore_file_takes_precedence(
    tmp_path: Path, specific: bool, default: bool, expected: str | None
) -> None:
    dockerfile = tmp_path / "docker" / "build.Dockerfile"
    dockerfile.parent.mkdir()
    dockerfile.write_text("FROM scratch\n")
    paths = {
        "specific": tmp_path / "docker" / "build.Dockerfile.dockerignore",
        "default": tmp_path / ".dockerignore",
    }
    if specific:
        paths["specific"].write_text("*.log\n")
    if default:
        paths["default"].write_text("*.tmp\n")
    found = find_ignore_file(tmp_path, dockerfile)
    assert found == (paths[expected] if expected else None)
    matcher = load_matcher(tmp_path, dockerfile)
    assert matcher.source == found
    assert matcher.excludes("x.log") is (expected == "specific")
    assert matcher.excludes("x.tmp") is (expected == "default")


def test_dockerfile_specific_ignore_file_replaces_not_merges(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "Dockerfile.dockerignore").write_text("")
    (tmp_path / ".dockerignore").write_text("*\n")
    matcher = load_matcher(tmp_path, tmp_path / "Dockerfile")
    assert len(matcher) == 0 and not matcher.excludes("anything")


def test_context_ignore_file_used_without_dockerfile(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("secret\n")
    assert load_matcher(tmp_path, None).excludes("secret/key")


# ---- the context walker --------------------------------------------------------------------


def _make_tree(root: Path, tree: list[str], ignore: str | None) -> None:
    if ignore is not None:
        (root / ".dockerignore").write_text(ignore)
    for spec in tree:
        if " -> " in spec:
            name, target = spec.split(" -> ")
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, root / name)
        elif spec.endswith("/"):
            (root / spec).mkdir(parents=True, exist_ok=True)
        else:
            (root / spec).parent.mkdir(parents=True, exist_ok=True)
            (root / spec).write_text(spec)


def _all_paths(root: Path, rel: str = "") -> Iterator[tuple[str, bool]]:
    """Every entry, depth-first and sorted by name bytes, with no pruning: (path, is_dir)."""
    with os.scandir(root / rel if rel else root) as entries:
        names = sorted(entries, key=lambda e: os.fsencode(e.name))
    for entry in names:
        path = f"{rel}{entry.name}"
        is_dir = entry.is_dir(follow_symlinks=False)
        yield path, is_dir
        if is_dir:
            yield from _all_paths(root, path + "/")


def _reference_walk(root: Path, matcher: IgnoreMatcher) -> list[str]:
    """What the walker must yield, from excludes() alone: included entries, plus excluded
    directories that have an included descendant."""
    entries = list(_all_paths(root))
    included = {path for path, _ in entries if not matcher.excludes(path)}
    wanted = set(included)
    for path in included:
        parts = path.split("/")
        wanted.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return [path for path, _ in entries if path in wanted]


@pytest.fixture
def opened_dirs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Directories the walker lists (instrumenting its one scandir call site)."""
    opened: list[str] = []
    real = ignore_module._scan_sorted

    def recording(fspath: str) -> Iterator[os.DirEntry[str]]:
        opened.append(fspath)
        return real(fspath)

    monkeypatch.setattr(ignore_module, "_scan_sorted", recording)
    return opened


@pytest.mark.parametrize("case", _load(TABLES / "walk_cases.json"), ids=lambda c: c["name"])
def test_walk_table(tmp_path: Path, case: dict[str, Any], opened_dirs: list[str]) -> None:
    _make_tree(tmp_path, case["tree"], case["ignore"])
    matcher = load_matcher(tmp_path, None)
    entries = list(walk_context(tmp_path, matcher))
    assert [e.path for e in entries] == case["expected"]
    assert [e.path for e in entries] == _reference_walk(tmp_path, matcher)
    opened = {os.path.relpath(p, tmp_path) for p in opened_dirs}
    for never in case["never_opened"]:
        assert never not in opened, f"{never} was listed although nothing in it can be included"
    for entry in entries:
        assert entry.fspath == str(tmp_path / entry.path)
        assert entry.kind is EntryKind.SYMLINK or not os.path.islink(entry.fspath)


def test_walk_entry_kinds_and_lstat(tmp_path: Path) -> None:
    _make_tree(tmp_path, ["f", "d/", "l -> d"], None)
    os.mkfifo(tmp_path / "p")
    entries = {e.path: e for e in walk_context(tmp_path, IgnoreMatcher(()))}
    assert {path: e.kind for path, e in entries.items()} == {
        "d": EntryKind.DIR,
        "f": EntryKind.FILE,
        "l": EntryKind.SYMLINK,
        "p": EntryKind.OTHER,
    }
    assert stat.S_ISLNK(entries["l"].stat.st_mode)  # lstat, not the target's stat
    assert entries["l"].stat.st_ino == os.lstat(tmp_path / "l").st_ino


def test_walk_does_not_descend_into_symlinked_directory(
    tmp_path: Path, opened_dirs: list[str]
) -> None:
    _make_tree(tmp_path, ["target/inner", "link -> target"], "target\n")
    assert [e.path for e in walk_context(tmp_path, load_matcher(tmp_path, None))] == [
        ".dockerignore",
        "link",
    ]
    assert opened_dirs == [str(tmp_path)]


def test_walk_sorts_undecodable_names_by_bytes_and_matches_them(tmp_path: Path) -> None:
    # b"\x80" sorts before "é" (b"\xc3\xa9") as bytes, after it as code points (U+DC80);
    # the ignore file's undecodable pattern matches the undecodable name.
    for name in (b"\x80x", "é".encode(), b"\xffy", b"z"):
        (tmp_path / os.fsdecode(name)).write_text("x")
    (tmp_path / ".dockerignore").write_bytes(b".dockerignore\n\xff*\n")
    walked = [os.fsencode(e.path) for e in walk_context(tmp_path, load_matcher(tmp_path, None))]
    assert walked == [b"z", b"\x80x", "é".encode()]


def test_walk_without_patterns_never_matches(tmp_path: Path) -> None:
    _make_tree(tmp_path, ["a/b/c"], None)

    class Exploding(IgnoreMatcher):
        def _decide(self, path: str, floor: int) -> int:
            raise AssertionError("matching work with no patterns")

    assert [e.path for e in walk_context(tmp_path, Exploding(()))] == ["a", "a/b", "a/b/c"]


def test_walk_missing_context_is_a_context_error(tmp_path: Path) -> None:
    with pytest.raises(ContextError, match="cannot read build context"):
        list(walk_context(tmp_path / "missing", IgnoreMatcher(())))


_WALK_WITHOUT_DAC = """
import json, sys
from pathlib import Path
from builder.errors import ContextError
from builder.ignore import IgnoreMatcher, load_matcher, walk_context
root = Path(sys.argv[1])
out = {}
for label, matcher in (("ignored", load_matcher(root, None)), ("plain", IgnoreMatcher(()))):
    try:
        out[label] = [entry.path for entry in walk_context(root, matcher)]
    except ContextError as error:
        out[label] = "ContextError: " + str(error)
print(json.dumps(out))
"""


def test_unreadable_directory_excluded_is_skipped_included_is_an_error(tmp_path: Path) -> None:
    # Root reads any directory: the walk runs in a child without the DAC override
    # capabilities (setpriv drops them from the bounding set), so mode 000 really denies.
    command = [sys.executable, "-c", _WALK_WITHOUT_DAC, str(tmp_path)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv (util-linux) is missing")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    _make_tree(tmp_path, ["locked/x", "ok"], "*\n!**/x\n")
    (tmp_path / "locked").chmod(0)
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        walked = json.loads(result.stdout)
        # Excluded, opened because of the wildcard exception, unreadable: skipped (fsutil).
        assert walked["ignored"] == []
        assert walked["plain"] == "ContextError: locked: cannot read directory: Permission denied"
    finally:
        (tmp_path / "locked").chmod(0o755)


# ---- differential properties ---------------------------------------------------------------


def _patternmatcher_oracle(patterns: list[str], path: str) -> bool:
    """A line-by-line transliteration of moby/patternmatcher (New, Pattern.compile,
    Pattern.match, MatchesOrParentMatches) working on the raw pattern text, independent of
    the grammar. Valid for the generated alphabet, where Go's and Python's regex agree."""

    def compile_one(pattern: str) -> tuple[str, Any]:
        regex, kind, i = "^", "exact", 0
        chars = list(pattern)
        pos = 0
        while pos < len(chars):
            ch = chars[pos]
            pos += 1
            if ch == "*":
                if pos < len(chars) and chars[pos] == "*":
                    pos += 1
                    if pos < len(chars) and chars[pos] == "/":
                        pos += 1
                    if pos == len(chars):
                        if kind == "exact":
                            kind = "prefix"
                        else:
                            regex += ".*"
                            kind = "regexp"
                    else:
                        regex += "(.*/)?"
                        kind = "regexp"
                    if i == 0:
                        kind = "suffix"
                else:
                    regex += "[^/]*"
                    kind = "regexp"
            elif ch == "?":
                regex += "[^/]"
                kind = "regexp"
            elif ch in ".+()|{}$":
                regex += "\\" + ch
            elif ch == "\\":
                regex += "\\" + chars[pos]
                pos += 1
                kind = "regexp"
            elif ch in "[]":
                regex += ch
                kind = "regexp"
            else:
                regex += ch
            i += 1
        return kind, re.compile(regex + "$") if kind == "regexp" else None

    def match(pattern: str, kind: str, regex: Any, candidate: str) -> bool:
        if kind == "exact":
            return candidate == pattern
        if kind == "prefix":
            return candidate.startswith(pattern[:-2])
        if kind == "suffix":
            suffix = pattern[2:]
            return candidate.endswith(suffix) or (suffix[:1] == "/" and candidate == suffix[1:])
        return regex.match(candidate) is not None and regex.match(candidate).end() == len(candidate)

    compiled = []
    for raw in patterns:
        text = clean_path(raw.strip())
        exclusion = text.startswith("!")
        if exclusion:
            if text == "!":
                raise ValueError('illegal exclusion pattern: "!"')
            text = text[1:]
        compiled.append((text, exclusion, *compile_one(text)))
    path = clean_path(path)
    if path == ".":
        return False
    parent = os.path.dirname(path) or "."
    parent_dirs = parent.split("/")
    matched = False
    for text, exclusion, kind, regex in compiled:
        if exclusion != matched:
            continue
        hit = match(text, kind, regex, path)
        if not hit and parent != ".":
            hit = any(
                match(text, kind, regex, "/".join(parent_dirs[: n + 1]))
                for n in range(len(parent_dirs))
            )
        if hit:
            matched = not exclusion
    return matched


_SEGMENTS = [
    "a",
    "b",
    "x",
    "ab",
    "*",
    "?",
    "**",
    "a*",
    "*b",
    "[ab]",
    "[^a]",
    "[a-c]?",
    "\\*",
    "a.b",
]
_pattern = st.lists(st.sampled_from(_SEGMENTS), min_size=1, max_size=4).map("/".join)
_patterns = st.lists(
    st.tuples(st.booleans(), _pattern).map(lambda t: ("!" if t[0] else "") + t[1]),
    min_size=1,
    max_size=4,
)
_name = st.sampled_from(["a", "b", "x", "ab", "a.b", "xa", ".a", "c", "*"])
_path = st.lists(_name, min_size=1, max_size=4).map("/".join)


@settings(max_examples=1000, deadline=None)
@given(patterns=_patterns, paths=st.lists(_path, min_size=1, max_size=8))
def test_matcher_agrees_with_patternmatcher_transliteration(
    patterns: list[str], paths: list[str]
) -> None:
    try:
        matcher = IgnoreMatcher.from_patterns(patterns)
    except IgnorePatternError:
        with pytest.raises(ValueError):
            _patternmatcher_oracle(patterns, "a")
        return
    for path in paths:
        assert matcher.excludes(path) is _patternmatcher_oracle(patterns, path), (patterns, path)


@pytest.fixture(scope="module")
def full_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every combination of a few names, three levels deep, so any pattern has targets."""
    root = tmp_path_factory.mktemp("full_tree")
    dirs = ["a", "b", "ab", ".a"]
    files = ["a", "b", "x", "a.b"]
    for top in dirs:
        for sub in dirs:
            for name in files:
                (root / top / sub).mkdir(parents=True, exist_ok=True)
                (root / top / sub / name).write_text("x")
        (root / top / "x").write_text("x")
    (root / "x").write_text("x")
    (root / "a.b").write_text("x")
    return root


@settings(max_examples=300, deadline=None)
@given(patterns=_patterns)
def test_pruning_walker_equals_unpruned_reference(full_tree: Path, patterns: list[str]) -> None:
    try:
        matcher = IgnoreMatcher.from_patterns(patterns)
    except IgnorePatternError:
        assume(False)
    walked = [entry.path for entry in walk_context(full_tree, matcher)]
    assert walked == _reference_walk(full_tree, matcher), patterns
