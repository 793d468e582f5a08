"""The parser against upstream's own data: BuildKit's parser test files and their ``result``
dumps, its line-number and Go-test expectations, and every Dockerfile of the BuildKit
integration tests and of 30 real-world repositories (read in place from ../shared/corpus).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.dockerfile import parse
from builder.dockerfile.instructions import Node
from builder.dockerfile.source import parse_heredoc_word, split_source
from builder.errors import DockerfileError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "corpus"
NO_CORPUS_REASON = f"upstream corpus not present at {SHARED} (only in the dev workplace)"
PARSER = SHARED / "dockerfile" / "buildkit-parser"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=NO_CORPUS_REASON)


# ---- BuildKit's Node.Dump() format, to compare with upstream ``result`` files


def go_quote(s: str) -> str:
    """Go's strconv.Quote for the characters the corpus uses."""
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch in "\a\b\f\v":
            out.append("\\" + {"\a": "a", "\b": "b", "\f": "f", "\v": "v"}[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _values(node: Node) -> list[str]:
    if node.keyword in ("ENV", "LABEL"):
        rest = node.original.split(None, 1)[1] if " " in node.original.strip() else ""
        legacy = len(node.args) == 2 and not rest.lstrip().startswith(f"{node.args[0]}=")
        sep = "" if legacy else "="
        out: list[str] = []
        for key, value in zip(node.args[0::2], node.args[1::2]):
            out += [key, value, sep]
        return out
    return list(node.args)


def dump(node: Node) -> str:
    text = node.keyword.lower()
    if node.flags:
        text += " [" + " ".join(go_quote(f) for f in node.flags) + "]"
    if node.trigger is not None:
        text += " (" + dump(node.trigger) + ")"
    for value in _values(node):
        text += " " + go_quote(value)
    return text.strip()


def dump_all(nodes: list[Node]) -> str:
    return "".join(f"({dump(n)})\n" for n in nodes)


def _dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


def _read(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        return f.read()


@pytest.mark.parametrize("case", _dirs(PARSER / "testfiles"), ids=lambda p: p.name)
def test_buildkit_testfile_dump(case: Path) -> None:
    """BuildKit's parser testfiles: our nodes dumped as Node.Dump() equal upstream's result."""
    nodes = parse(_read(case / "Dockerfile"), syntax_only=True).nodes
    assert dump_all(list(nodes)).strip() == _read(case / "result").strip()


@pytest.mark.parametrize("case", _dirs(PARSER / "testfiles-negative"), ids=lambda p: p.name)
def test_buildkit_negative_testfile_fails(case: Path) -> None:
    with pytest.raises(DockerfileError):
        parse(_read(case / "Dockerfile"), syntax_only=True)


def test_buildkit_line_numbers() -> None:
    expected = json.loads(_read(PARSER / "testfile-line" / "upstream.json"))["lines"]
    nodes = parse(_read(PARSER / "testfile-line" / "Dockerfile"), syntax_only=True).nodes
    assert [[n.span.line, n.span.end_line] for n in nodes] == expected


GOTESTS = [p for p in _dirs(PARSER / "gotests") if (p / "upstream.json").is_file()]


@pytest.mark.parametrize("case", GOTESTS, ids=lambda p: p.name)
def test_buildkit_go_test_partials(case: Path) -> None:
    """What BuildKit's Go tests assert about instruction N (args, JSON form, heredocs)."""
    partial = json.loads(_read(case / "upstream.json"))["partial"]
    nodes = parse(_read(case / "Dockerfile"), syntax_only=True).nodes
    for index, want in partial.items():
        node = nodes[int(index)]
        if "instruction" in want:
            assert node.keyword == want["instruction"]
        if "args" in want:
            assert list(node.args) == want["args"]
        if "json_form" in want:
            assert node.json_form == want["json_form"]
        if "heredocs" in want:
            got = [
                {
                    "name": h.name,
                    "content": h.content,
                    "expand": h.expand,
                    "chomp": h.chomp,
                    "fd": h.fd,
                }
                for h in node.heredocs
            ]
            assert got == want["heredocs"]


# Go-test inputs upstream expects the parser to reject: JSON arrays with non-string members
# (TestJSONArraysInvalid, through parseMaybeJSON) and ENV without a value.
GOTESTS_INVALID = {
    f"json-invalid-0{i}": "arrays must be comprised of strings only" for i in range(8)
}
GOTESTS_INVALID["nameval-withoutval"] = "ENV must have two arguments"


@pytest.mark.parametrize(
    "case",
    [p for p in _dirs(PARSER / "gotests") if not (p / "upstream.json").is_file()],
    ids=lambda p: p.name,
)
def test_buildkit_go_test_inputs(case: Path) -> None:
    text = _read(case / "Dockerfile")
    if case.name in GOTESTS_INVALID:
        with pytest.raises(DockerfileError, match=GOTESTS_INVALID[case.name]):
            parse(text, syntax_only=True)
    else:
        parse(text, syntax_only=True)


def test_heredoc_words_table() -> None:
    table = json.loads(_read(PARSER / "heredoc_words.json"))
    for word in table["validHeredocs"]:
        heredoc = parse_heredoc_word(word)
        assert heredoc is not None and heredoc.name == "EOF", word
    for word in table["invalidHeredocs"]:
        with pytest.raises(ValueError):
            parse_heredoc_word(word)
    for word in table["notHeredocs"]:
        assert parse_heredoc_word(word) is None, word
    for row in table["heredocsFromLine"]:
        names = row["heredocNames"] or []
        text = f"FROM x\n{row['line']}\n" + "".join(f"{n}\n" for n in names)
        line = split_source(text).lines[1]
        assert [h.name for h in line.heredocs] == names, row


def test_directive_inputs() -> None:
    """The directive-test inputs: the parser honours leading '#' directives only."""
    inputs = json.loads(_read(PARSER / "directives.json"))["inputs"]
    first = split_source(inputs[0]["input"] + "FROM busybox\n")
    assert [(d.name, d.value) for d in first.directives] == [("escape", "\\")]
    upper = split_source(inputs[1]["input"] + "FROM busybox\n")
    assert [(d.name, d.value) for d in upper.directives] == [("escape", "\\")]
    for item in inputs:
        text = item["input"]
        if "FROM" not in text:
            text += "\nFROM busybox\n"
        try:
            parse(text, syntax_only=True)
        except DockerfileError as e:  # JSON-form and // directives are not Dockerfiles
            assert item["input"].lstrip("\ufeff").startswith(("{", "//", "#!")), (item, e)


# Files of the integration corpus that are invalid on purpose (BuildKit's tests expect an
# error) or are Go format templates; each must fail, with this message.
INTEGRATION_INVALID = {
    "dockerfile_mount-003": "unknown flag: mont (did you mean mount?)",
    "dockerfile_mount-004": "unknown flag: mont (did you mean mount?)",
    "dockerfile_mount-005": "unexpected key 'typ'",
    "dockerfile_mount-006": "unexpected key 'typ'",
    "dockerfile_mount-007": "unsupported mount type 'tmp'",
    "dockerfile_mount-008": "unsupported mount type 'tmp'",
    "errors-000": "ENV requires at least one argument",
    "errors-004": "unknown flag: foo",
    "dockerfile_addgit-006": "ADD requires at least two arguments",  # a template fragment
    "dockerfile_addgit-008": "ADD requires at least two arguments",  # a template fragment
    "dockerfile_platform-000": "invalid name for build stage: 'build-%s'",  # Go fmt template
    "dockerfile_platform-001": "invalid name for build stage: 'build-%s'",  # Go fmt template
    "dockerfile_targets-000": "RUN before the first FROM",  # a fragment of a test's file
    "dockerfile_check-015": "lint error: 'as' and 'FROM' keywords' casing do not match",
    "dockerfile_check-016": "lint error: 'as' and 'FROM' keywords' casing do not match",
    # BuildKit reports a duplicate stage name as a lint (DuplicateStageName); pybuild refuses it.
    "dockerfile_check-029": "duplicate stage name 'b'",
}


def _corpus_files(folder: str) -> list[Path]:
    root = SHARED / "dockerfile" / folder
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "sources.json")


def test_integration_corpus_parses() -> None:
    files = _corpus_files("buildkit-integration")
    assert len(files) == 475
    failures: dict[str, str] = {}
    for path in files:
        try:
            parse(_read(path), path.name)
        except DockerfileError as e:
            failures[path.parent.name] = str(e)
    assert set(failures) == set(INTEGRATION_INVALID), failures
    for name, message in INTEGRATION_INVALID.items():
        assert message in failures[name], (name, failures[name])


def test_realworld_corpus_parses() -> None:
    files = _corpus_files("realworld")
    assert len(files) == 639
    count = 0
    failures = []
    for path in files:
        try:
            count += len(parse(_read(path), str(path)).nodes)
        except DockerfileError as e:
            failures.append(str(e))
    assert failures == []
    assert count == 9006  # the corpus README's instruction count
