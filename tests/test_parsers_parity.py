"""`check_yaml` (parse-only, no documents built) refuses exactly what `parse_yaml` refuses, with the same
problem at the same line and column, on a corpus of hostile texts, random mutations of real YAML, and
the repository's own YAML and JSON files. `bench/yaml_parity.py` runs the same comparison on any dirs
(e.g. site-packages) and times both.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar.parsers import MAX_DEPTH, MAX_NODES, check_yaml, parse_yaml
from sidecar.problems import ProblemError

ROOT = Path(__file__).resolve().parent.parent
Outcome = tuple[str, ...]


def outcome(check: Callable[[str], object], text: str) -> Outcome:
    """("ok",) or what was refused: the problem and where, or any other exception by type."""
    try:
        check(text)
    except ProblemError as e:
        return ("refused", str(e.at("f")))
    except Exception as e:  # a crash would be a difference too
        return ("raised", type(e).__name__)
    return ("ok",)


def _digits() -> int:
    return sys.get_int_max_str_digits() or 4300


def hostile() -> Iterator[tuple[str, str]]:
    """(label, text): every construct the parse-only path must refuse, or accept, exactly as before."""
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True)
    )
    yield "alias bomb", bomb
    yield "alias loop", "a: &a [1, *a]\n"
    yield "undefined alias", "a: *nowhere\n"
    yield "duplicate anchor", "a: &x 1\nb: &x 2\n"
    yield "alias fine", "a: &x {k: v}\nb: *x\n"
    yield "alias in a quoted string", 'hosts: ["*.example.com", "*"]\ncron: "*/5 * * * *"\n'
    yield "url with & and ?", "url: http://x/a?b=1&c=2\n"
    for depth in (MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 1500):
        yield f"flow depth {depth}", "[" * depth + "]" * depth + "\n"
        yield f"block depth {depth}", "".join(" " * i + f"k{i}:\n" for i in range(depth)) + " " * depth + "v\n"
    for tag in ("!!python/object:os.system x", "!foo x", "!!int abc", "!!int 12", "!!binary ???", "!!binary aGk=",
                "!!timestamp x", "!!set {a: 1}", "!!set {a}", "!!omap [a]", "!!omap [{a: 1}]", "!!pairs [{a: 1}]",
                "!!str 1", "!!float x", "!!null x", "!!bool maybe", "!<tag:yaml.org,2002:str> x", "! x",
                "!e!x y", "!!map [1]", "!!seq {a: 1}"):  # fmt: skip
        yield f"tag {tag}", f"a: {tag}\n"
    yield "%TAG directive", "%TAG !e! tag:example.com,2000:\n---\na: !e!x y\n"
    yield "%YAML 1.2", "%YAML 1.2\n---\na: 1\n"
    yield "%YAML 2.0", "%YAML 2.0\n---\na: 1\n"
    yield "duplicate keys", "a: 1\na: 2\nb: {c: 1, c: 2}\n"
    yield "documents", "---\na: 1\n---\nb: 2\n...\n---\n- 3\n"
    yield "empty", ""
    yield "comment only", "# nothing\n"
    yield "null document", "~\n"
    for key in ("1: a", "1.5: a", "null: a", "~: a", "true: a", "2001-01-01: a", "? [a]\n: b", "[a, b]: c",
                "{a: 1}: c", "{[a]: b}", "[[a]: b]", "[{a: 1}: b]", "? - a\n: b", "? {a: 1}\n: b", "[a]  # c\n: b",
                "{[a]\n : b}", "[a]#: b", "? a\n: b", "{? a : b}", "[? a : b]"):  # fmt: skip
        yield f"key {key!r}", key + "\n"
    for merge in (
        "<<: {a: 1}",
        "<<: [{a: 1}, {b: 2}]",
        "<<: 1",
        "<<: [1]",
        "a: <<",
        "- <<",
        "x: &m {a: 1}\ny:\n  <<: *m",
    ):
        yield f"merge {merge!r}", merge + "\n"
    for value in ("a: =", "- =", "=: a", "[=]", "{=}", "a: = b", "a: x =", "a: =\x85", "a: =  # c", "a: '='",
                  "a: ==", "a: =\t", "a:\n  =\n", "a: b\n  =\n", "{a: =}", "[a, =, b]"):  # fmt: skip
        yield f"value {value!r}", value + "\n"
    for stamp in ("2001-02-30", "2001-02-28", "2001-13-01", "2001-1-1", "2001-12-14 25:00:00", "2001-12-14 21:59:43",
                  "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43 +99", "2001-12-14 21:59:43 +23:59",
                  "2001-12-14 21:59:61", "2001-12-14T21:60:00Z", "'2001-02-30'", "2001-02-30 is not a date",
                  "2001-12-14\n  25:00:00", "2001-12-14\n\n  25:00:00", "[2001-02-30]", "x2001-02-30", "12001-02-30",
                  "2001-12-14 21:59:43.1234567891", "0000-00-00", "9999-12-31 23:59:59.999999 -23:59"):  # fmt: skip
        yield f"timestamp {stamp!r}", f"a: {stamp}\n"
    long = "1" * (_digits() + 1)
    for number in ("0b_", "0x_", "-0b__", "+0x_", "0b1_", "0x_f", "0_", "0o7", "0__7", "00", "-0", "0b", "0x",
                   "190:20:30", "190:20:30.15", "1_000", "1__2", "._", "1._", ".inf", "-.inf", ".NaN", "1e5", "1.e+5",
                   long, "1" * _digits(), "1_" * (_digits() // 2 + 2) + "1", "0x" + "f" * 5000, "0" + "7" * 5000,
                   f"-{long}", f"{long}:00", f"{long}.5", f"'{long}'", f"{long}a"):  # fmt: skip
        yield f"number {number[:20]!r}", f"a: {number}\n"
    yield "binary", "a: \x00\x01\x02\n"
    yield "control", "a: b\x07c\n"
    yield "bom", "\ufeffa: 1\n"
    yield "bom then tag", "\ufeff!!int x\n"
    yield "mid bom", "a: \ufeff1\n"
    yield "nel", "a: 1\x85b: 2\n"
    yield "line separator", "a: 1\u2028b: 2\n"
    yield "non-ascii", "naïve: café ☕\n"
    yield "huge plain scalar", "a: " + "x" * (1 << 20) + "\n"
    yield "huge quoted scalar", 'a: "' + "y" * (1 << 20) + '"\n'
    yield "huge line of keys", "{" + ", ".join(f"k{i}: {i}" for i in range(50_000)) + "}\n"
    yield "many nodes, a '*' in a comment", "# *\n" + "- a\n" * (MAX_NODES + 10)
    yield "many nodes, no '*'", "- a\n" * (MAX_NODES + 10)
    for bad in ("key: [1, 2", "a: b: c", "a:\n\t- b", "@x", "`x", "a: 'unclosed", 'a: "\\q"', "- a\nb: c", "a: |*",
                '"a"!t', '"a"*b', "'a'&x b", "[a]*b", "{a: 1}!t", "- a\n -b\n", "? ? ?", "!", "&", "*", "? ",
                "a: !", "a: &", "a: *", "--- !x\n", "a: &a\n", "&a [*a]", "[&a b, *a]", "a: [b]]"):  # fmt: skip
        yield f"broken {bad!r}", bad + "\n"
    yield "json", '{"a": [1, 2, {"b": null}], "c": "d", "e": 1.5e3, "f": true}\n'
    yield "json, tabs", '{\n\t"a": 1\n}\n'


SEEDS = [
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  labels: {app: y}\ndata:\n  k: 'v'\n  n: 12\n",
    "global:\n  scrape_interval: 15s\nrule_files: ['/etc/rules/*.yml']\nscrape_configs:\n  - job_name: x\n"
    "    static_configs:\n      - targets: [localhost:9090]\n",
    "defaults: &d\n  a: 1\n  when: 2001-12-14\nprod:\n  <<: *d\n  b: !!str 2\n  c: [1, 2.5, 0x1f, ~]\n",
    '- name: "q\\t"\n  items:\n    - |\n      block\n      text\n    - >-\n      folded\n  ? complex\n  : value\n',
]
_NOISE = list("!&*?<=[]{},:#|>-'\"\n\t 0123456789_.eE+xbT\x85\ufeff") + [
    "<<",
    "2001-02-30",
    "0b_",
    ": ",
    "- ",
    "&a ",
    "*a",
]


def mutants(count: int, seed: int = 14) -> Iterator[tuple[str, str]]:
    """Random edits (insert, delete, replace with YAML's indicator characters) of real-looking YAML."""
    rng = random.Random(seed)
    for i in range(count):
        text = list(rng.choice(SEEDS))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(text) + 1)
            action = rng.random()
            if action < 0.5:
                text.insert(at, rng.choice(_NOISE))
            elif action < 0.75 and at < len(text):
                del text[at]
            elif at < len(text):
                text[at] = rng.choice(_NOISE)
        yield f"mutant {i}", "".join(text)


# Not the repository's: git's store, a virtual environment (kubernetes-validate alone ships thousands of
# JSON schemas, which made this test take 23 s), caches.
_NOT_OURS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


def repository_files(root: Path = ROOT) -> Iterator[tuple[str, str]]:
    """Every .yaml/.yml/.json file of the repository under `root` that is UTF-8 (as `validate` decodes it)."""
    for top, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _NOT_OURS)
        for name in sorted(files):
            path = Path(top, name)
            if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
                try:
                    yield str(path.relative_to(root)), path.read_text(encoding="utf-8")
                except (UnicodeDecodeError, OSError):
                    continue


def _disagreements(cases: Iterator[tuple[str, str]]) -> tuple[int, list[str]]:
    n, bad = 0, []
    for label, text in cases:
        n += 1
        before, after = outcome(parse_yaml, text), outcome(check_yaml, text)
        if before != after:
            bad.append(f"{label}: parse_yaml {before} != check_yaml {after}")
    return n, bad


def test_hostile_texts_get_the_same_verdict() -> None:
    n, bad = _disagreements(hostile())
    assert n > 150 and bad == []


def test_mutated_yaml_gets_the_same_verdict() -> None:
    cases = list(mutants(3000))
    n, bad = _disagreements(iter(cases))
    refused = sum(outcome(parse_yaml, t)[0] == "refused" for _, t in cases[:500])
    assert 50 < refused < 450, "the mutants must cover both verdicts"
    assert n == 3000 and bad == []


def test_repository_files_get_the_same_verdict() -> None:
    n, bad = _disagreements(repository_files())
    assert n >= 10 and bad == []


@pytest.mark.parametrize(
    "text",
    ["a: 1\nb: [x, y]\nc: {d: 'e'}\n", "url: http://x/a?b=1&c=2\nwhen: 2001-12-14\n", "- a\n- ~\n- 1.5\n"],
    ids=["plain", "url-and-date", "list"],
)
def test_plain_yaml_builds_nothing(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ordinary YAML with no tag, alias or merge key takes the parser-only path: no node is composed
    (the composer resolves each node's tag) and no value is built."""
    import yaml

    def built(*args: object, **kwargs: object) -> None:
        raise AssertionError("a node was built")

    monkeypatch.setattr(yaml.resolver.BaseResolver, "resolve", built)
    monkeypatch.setattr(yaml.constructor.BaseConstructor, "construct_object", built)
    check_yaml(text)
    with pytest.raises(AssertionError, match="a node was built"):
        parse_yaml(text)
