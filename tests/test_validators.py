"""The validator registry: words -> specs, which file gets which format, structured problems."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.validators import KINDS, Problem, ValidatorSpec, formats, parse_validators, schema_paths


def test_every_kind_is_listed_in_the_unknown_word_message() -> None:
    """An unknown word names every registered kind as it is written."""
    with pytest.raises(ValueError, match="unknown validator 'xml'") as err:
        parse_validators("auto,xml")
    assert str(err.value).endswith("expected auto, yaml, json, schema:<path> or none")
    assert all(kind.usage in str(err.value) for kind in KINDS.values())


@pytest.mark.parametrize("word", ["schema:", "schema", "yaml:x", "auto:"])
def test_a_path_only_where_the_kind_takes_one(word: str) -> None:
    """`schema` needs a path, the other kinds take none."""
    with pytest.raises(ValueError, match="unknown validator"):
        parse_validators(word)


def test_a_relative_path_is_resolved_against_the_base(tmp_path: Path) -> None:
    """A webhook profile's relative `schema:` path is read next to the profiles file."""
    (tmp_path / "s.json").write_text("{}")
    assert parse_validators("auto, schema:s.json", base=tmp_path) == (
        ValidatorSpec("auto"),
        ValidatorSpec("schema", tmp_path / "s.json"),
    )
    with pytest.raises(ValueError, match="schema file .*missing.json does not exist"):
        parse_validators("schema:missing.json", base=tmp_path)


def test_none_stands_alone() -> None:
    """`none` checks nothing and cannot be combined."""
    assert parse_validators("none") == ()
    with pytest.raises(ValueError, match="'none' cannot be combined"):
        parse_validators("none,yaml")


FILES = {"a.yaml": b"", "b.yml": b"", "c.json": b"", "d.conf": b""}


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("auto", {"a.yaml": "yaml", "b.yml": "yaml", "c.json": "json"}),
        ("json", dict.fromkeys(FILES, "json")),
        ("json,yaml", dict.fromkeys(FILES, "yaml")),  # every-file kinds: registry order, not word order
        ("auto,json", dict.fromkeys(FILES, "json")),  # a kind for every file beats picking by extension
        ("none", {}),
    ],
)
def test_each_file_gets_one_format(words: str, expected: dict[str, str]) -> None:
    """A file is parsed once, in the format of the first kind (by rank, then registry order) that reads it."""
    assert formats(FILES, parse_validators(words)) == expected


def test_schema_reads_by_extension_and_lists_its_path(tmp_path: Path) -> None:
    """`schema:` alone parses .yaml/.yml/.json files and applies its schema."""
    (tmp_path / "s.json").write_text("{}")
    specs = parse_validators(f"schema:{tmp_path / 's.json'}")
    assert formats(FILES, specs) == {"a.yaml": "yaml", "b.yml": "yaml", "c.json": "json"}
    assert schema_paths(specs) == [tmp_path / "s.json"]


@pytest.mark.parametrize(
    ("problem", "text"),
    [
        (Problem("a.yaml", "invalid YAML", 3, 7), "a.yaml:3:7: invalid YAML"),
        (Problem("a.yaml", "invalid YAML", 3), "a.yaml:3: invalid YAML"),
        (Problem("a.yaml", "invalid YAML"), "a.yaml: invalid YAML"),
        (Problem("", "schema s.json: not a JSON Schema object"), "schema s.json: not a JSON Schema object"),
    ],
)
def test_problem_text_leaves_out_what_is_unknown(problem: Problem, text: str) -> None:
    """A structured problem reads `file:line:column: message`; no empty field leaves a stray colon."""
    assert str(problem) == text
