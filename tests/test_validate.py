"""`check_parse`, `validate` and `run_command`: problems with file names and line numbers, bounded work."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar.parsers import MAX_DEPTH
from sidecar.settings import ValidatorSpec
from sidecar.snapshot import Snapshot
from sidecar.validate import Checks, check_parse, run_command, validate
from tests.secret import SECRET, SECRET_SCHEMA

AUTO = (ValidatorSpec("auto"),)
PY = sys.executable

SCHEMA = {
    "type": "object",
    "required": ["server"],
    "properties": {
        "server": {
            "type": "object",
            "properties": {"port": {"type": "integer"}, "host": {"type": "string"}},
        }
    },
}

GOOD_YAML = b"name: web\nserver:\n  host: h\n  port: 80\n"
BAD_PORT_YAML = b"name: web\nserver:\n  host: h\n  port: eighty\n"


def _billion_laughs(levels: int = 9) -> bytes:
    """The classic alias bomb: each level is 9 aliases of the previous one, 9**levels leaves in all."""
    lines = ["a: &a [" + ", ".join(['"lol"'] * 9) + "]"]
    for prev, cur in zip("abcdefghijklmnop", "bcdefghijklmnopq", strict=False):
        if len(lines) == levels:
            break
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return ("\n".join(lines) + "\n").encode()


def _snap(files: dict[str, bytes], version: str = "0123456789abcdef") -> Snapshot:
    return Snapshot(files=files, version=version, sizes={n: len(b) for n, b in files.items()})


async def _eventually(predicate: Callable[[], bool], within_s: float) -> bool:
    """Poll `predicate` every 20 ms until it holds or `within_s` passes; its last value."""
    for _ in range(max(1, int(within_s / 0.02))):
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


def _reaped(pid: int) -> bool:
    """The process is gone for good: not even a zombie."""
    return not os.path.exists(f"/proc/{pid}")


def _gone(pid: int) -> bool:
    """The process no longer runs (reaped, or a zombie nobody reaped yet)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True
    return fields[0] in ("Z", "X")


# --- parsing --------------------------------------------------------------------------------------------


def test_yaml_error_has_file_line_and_column() -> None:
    """A YAML syntax error is reported as `file:line:col: invalid YAML: why`."""
    problems = check_parse({"app.yaml": b"key: value\nlist:\n  - a\n  b: c\n"}, AUTO)
    assert problems == ["app.yaml:4:3: invalid YAML: did not find expected '-' indicator"]


def test_json_error_has_file_line_and_column() -> None:
    """A JSON syntax error is reported as `file:line:col: invalid JSON: why`."""
    problems = check_parse({"conf/app.json": b'{\n  "a": 1,\n  "b": \n}\n'}, AUTO)
    assert problems == ["conf/app.json:4:1: invalid JSON: Expecting value"]


def test_valid_files_give_no_problems() -> None:
    """Well-formed YAML and JSON (including multi-document YAML) pass parsing."""
    files = {"a.yaml": GOOD_YAML, "b.yml": b"---\na: 1\n---\nb: 2\n", "c.json": b'{"a": [1, 2]}'}
    assert check_parse(files, AUTO) == []


@pytest.mark.parametrize("name", ["bad.yaml", "bad.json"])
def test_invalid_utf8_is_reported_with_its_line(name: str) -> None:
    """Bytes that are not UTF-8 are a problem naming the file, the line and column they are on, and the byte."""
    problems = check_parse({name: b"a: 1\nb: 2\nc: \xff\xfe\n"}, AUTO)
    assert problems == [f"{name}:3:4: invalid UTF-8 at byte 13"]


@pytest.mark.timeout(10)
def test_yaml_alias_bomb_is_refused_fast_and_small() -> None:
    """A billion-laughs document (9 levels) is refused in well under a second without building it."""
    bomb = _billion_laughs(9)
    assert len(bomb) < 1000
    tracemalloc.start()
    try:
        start = time.perf_counter()
        problems = check_parse({"bomb.yaml": bomb}, AUTO)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 20 * 1024 * 1024  # expanded, it would be 9**9 list slots: gigabytes
    assert len(problems) == 1
    assert problems[0].startswith("bomb.yaml: YAML alias expansion would build")
    assert "refused" in problems[0]


def test_moderate_alias_use_is_accepted() -> None:
    """Ordinary anchors and aliases (a shared block reused a few times) are fine."""
    doc = b"base: &base {image: nginx, port: 80}\na: *base\nb: *base\nc: {<<: *base, port: 81}\n"
    assert check_parse({"a.yaml": doc}, AUTO) == []


def test_recursive_yaml_alias_is_refused() -> None:
    """A YAML node that contains an alias to itself is refused instead of recursing forever."""
    problems = check_parse({"loop.yaml": b"a: &a [1, *a]\n"}, AUTO)
    assert problems == ["loop.yaml:1:4: YAML alias refers to itself (recursive structure): refused"]


@pytest.mark.timeout(10)
def test_deep_yaml_nesting_is_refused_by_depth() -> None:
    """10000 nested flow sequences are refused at the depth limit, with the position where it was crossed."""
    deep = b"[" * 10_000 + b"]" * 10_000
    start = time.perf_counter()
    problems = check_parse({"deep.yaml": deep}, AUTO)
    assert time.perf_counter() - start < 1.0
    # libyaml >= 0.2.6 (PyYAML >= 6.0.4 wheels) stops flow nesting in its scanner at 1000 levels, which it
    # reads ahead of the events our own depth check counts; older libyaml leaves it all to our check.
    assert problems in (
        [f"deep.yaml:1:{MAX_DEPTH + 1}: YAML nesting deeper than {MAX_DEPTH}: refused"],
        ["deep.yaml:1:1001: invalid YAML: exceeded maximum nesting depth"],
    ), problems


def test_deep_block_yaml_nesting_is_refused() -> None:
    """Block-style nesting past the limit is refused too, with its line."""
    doc = "".join("  " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 5)) + "  " * (MAX_DEPTH + 5) + "v\n"
    problems = check_parse({"deep.yaml": doc.encode()}, AUTO)
    assert len(problems) == 1 and f"YAML nesting deeper than {MAX_DEPTH}" in problems[0]
    assert problems[0].startswith("deep.yaml:")


@pytest.mark.timeout(10)
def test_deep_json_nesting_does_not_crash() -> None:
    """10000 nested JSON arrays give a clear problem, not a RecursionError."""
    problems = check_parse({"deep.json": b"[" * 10_000 + b"]" * 10_000}, AUTO)
    assert problems == ["deep.json: invalid JSON: nesting too deep"]


async def test_deep_json_nesting_in_a_worker_thread() -> None:
    """The same deep JSON through `validate` (parsing in a worker thread) is refused, not crashed."""
    verdict = await validate(_snap({"deep.json": b"[" * 10_000 + b"]" * 10_000}), Checks(AUTO))
    assert verdict.problems == ("deep.json: invalid JSON: nesting too deep",)


# --- which files are parsed, and how ---------------------------------------------------------------------

BROKEN = b"{ not: [valid"


def test_auto_parses_only_yaml_yml_and_json() -> None:
    """`auto` parses .yaml/.yml/.json by extension and leaves every other file alone."""
    files = {"a.yaml": BROKEN, "b.YML": BROKEN, "c.json": BROKEN, "nginx.conf": BROKEN, "Makefile": BROKEN}
    problems = check_parse(files, AUTO)
    assert sorted(p.split(":", 1)[0] for p in problems) == ["a.yaml", "b.YML", "c.json"]
    assert any(p.startswith("c.json:") and "invalid JSON" in p for p in problems)


def test_auto_accepts_a_conf_file_that_is_not_yaml() -> None:
    """A .conf file is not parsed under `auto`, so its own syntax never fails validation."""
    assert check_parse({"nginx.conf": b"server { listen 80; location / { return 200; } }\n"}, AUTO) == []


def test_yaml_parses_every_file_as_yaml() -> None:
    """`yaml` parses every file, whatever its extension, as YAML."""
    problems = check_parse({"app.conf": b"a: [1\n", "ok.txt": b"a: 1\n"}, (ValidatorSpec("yaml"),))
    assert len(problems) == 1 and problems[0].startswith("app.conf:") and "invalid YAML" in problems[0]


def test_json_parses_every_file_as_json() -> None:
    """`json` parses every file as JSON, so YAML syntax in a .yaml file is an error."""
    problems = check_parse({"app.yaml": b"a: 1\n", "ok.cfg": b"[1]"}, (ValidatorSpec("json"),))
    assert problems == ["app.yaml:1:1: invalid JSON: Expecting value"]


@pytest.mark.parametrize("specs", [(), (ValidatorSpec("none"),)], ids=["empty", "none"])
def test_none_parses_nothing(specs: tuple[ValidatorSpec, ...]) -> None:
    """With `none` (no built-in validators) even broken YAML and JSON pass."""
    assert check_parse({"a.yaml": BROKEN, "b.json": BROKEN}, specs) == []


# --- schema ----------------------------------------------------------------------------------------------


@pytest.fixture(params=["json", "yaml"])
def schema_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The same JSON Schema written as a .json and as a .yaml file."""
    import yaml

    path = tmp_path / f"schema.{request.param}"
    path.write_text(json.dumps(SCHEMA) if request.param == "json" else yaml.safe_dump(SCHEMA))
    return path


def test_schema_violation_reports_file_line_and_path(schema_file: Path) -> None:
    """A schema violation in YAML names the file, the line and column of the offending value and its JSON path."""
    problems = check_parse({"app.yaml": BAD_PORT_YAML}, (ValidatorSpec("schema", schema_file),))
    assert problems == ["app.yaml:4:9: schema: at server/port: wrong type (expected integer, got string)"]


def test_schema_missing_required_is_reported_at_root(schema_file: Path) -> None:
    """A missing required key is reported at `(root)`, line 1, by the name the schema gives it."""
    problems = check_parse({"app.yaml": b"name: web\n"}, (ValidatorSpec("schema", schema_file),))
    assert problems == ["app.yaml:1:1: schema: at (root): missing required property 'server'"]


def test_schema_accepts_a_conforming_document(schema_file: Path) -> None:
    """YAML and JSON documents that conform give no problems; a .conf file is not checked."""
    files = {"a.yaml": GOOD_YAML, "b.json": b'{"server": {"port": 1}}', "n.conf": b"not yaml ["}
    assert check_parse(files, (ValidatorSpec("schema", schema_file),)) == []


def test_schema_violation_in_json_names_file_and_path(schema_file: Path) -> None:
    """A schema violation in a JSON file names the file and the JSON path."""
    problems = check_parse({"cfg.json": b'{\n  "server": {"port": "x"}\n}\n'}, (ValidatorSpec("schema", schema_file),))
    assert len(problems) == 1
    assert problems[0].startswith("cfg.json:") and "at server/port: wrong type (expected integer" in problems[0]


def test_schema_violation_in_json_has_a_line_number(schema_file: Path) -> None:
    """A schema violation in a JSON file carries the line and column of the offending value, like YAML does."""
    problems = check_parse({"cfg.json": b'{\n  "server": {"port": "x"}\n}\n'}, (ValidatorSpec("schema", schema_file),))
    assert problems == ["cfg.json:2:22: schema: at server/port: wrong type (expected integer, got string)"]


def test_schema_violation_in_second_yaml_document_has_its_line(schema_file: Path) -> None:
    """A violation in the second document of a YAML stream is reported at that document's line."""
    doc = b"server:\n  port: 80\n---\nserver:\n  port: eighty\n"
    problems = check_parse({"app.yaml": doc}, (ValidatorSpec("schema", schema_file),))
    assert problems == ["app.yaml:5:9: schema: at server/port: wrong type (expected integer, got string)"]


def test_unreadable_schema_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    """A schema file that is not valid JSON gives a problem naming the schema, not an exception."""
    schema = tmp_path / "schema.json"
    schema.write_text("{not json")
    problems = check_parse({"app.yaml": GOOD_YAML}, (ValidatorSpec("schema", schema),))
    assert len(problems) == 1 and str(schema) in problems[0]


# --- problems never quote content ------------------------------------------------------------------------


@pytest.fixture
def secret_schema(tmp_path: Path) -> tuple[ValidatorSpec, ...]:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SECRET_SCHEMA))
    return (ValidatorSpec("schema", path),)


# (file, content carrying the secret, the exact problem): each kind of invalid content refused without it
SECRET_CASES = [
    ("type.yaml", f"port: {SECRET}\n", "type.yaml:1:7: schema: at port: wrong type (expected integer, got string)"),
    ("enum.yaml", f"mode: {SECRET}\n", 'enum.yaml:1:7: schema: at mode: not one of the allowed values: "fast", "safe"'),
    ("re.yaml", f"name: {SECRET}\n", "re.yaml:1:7: schema: at name: does not match the required pattern '^[a-z]+$'"),
    ("const.yaml", f"level: {SECRET}\n", "const.yaml:1:8: schema: at level: not the required value 3"),
    ("len.yaml", f"short: {SECRET}\n", "len.yaml:1:8: schema: at short: longer than 4 characters"),
    (
        "item.json",
        f'{{"ports": [1, "{SECRET}"]}}',
        "item.json:1:15: schema: at ports/1: wrong type (expected integer, got string)",
    ),
    ("extra.yaml", f"token: {SECRET}\n", "extra.yaml:1:1: schema: at (root): property 'token' not allowed"),
    (
        "tag.yaml",
        f"port: !{SECRET} 1\n",
        "tag.yaml:1:7: invalid YAML: unknown tag (only the standard YAML types are read)",
    ),
    (
        "tag2.yaml",
        f"port: !<{SECRET}> 1\n",
        "tag2.yaml:1:7: invalid YAML: unknown tag (only the standard YAML types are read)",
    ),
    ("int.yaml", f"port: !!int {SECRET}\n", "int.yaml:1:7: invalid YAML: not a valid !!int"),
    ("float.yaml", f"port: !!float {SECRET}\n", "float.yaml:1:7: invalid YAML: not a valid !!float"),
    ("date.yaml", "port: 2026-02-30\n", "date.yaml:1:7: invalid YAML: not a valid !!timestamp"),
    ("alias.yaml", f"port: *{SECRET}\n", "alias.yaml:1:7: invalid YAML: found undefined alias"),
    ("anchor.yaml", f"a: &{SECRET} 1\nb: &{SECRET} 2\n", "anchor.yaml:2:4: invalid YAML: duplicate anchor"),
    (
        "indent.yaml",
        f"name: {SECRET}\n  port: {SECRET}\n",
        "indent.yaml:2:7: invalid YAML: mapping values are not allowed in this context",
    ),
    ("quote.yaml", f"name: '{SECRET}\n", "quote.yaml:2:1: invalid YAML: found unexpected end of stream"),
    ("escape.yaml", f'name: "\\q{SECRET}"\n', "escape.yaml:1:8: invalid YAML: found unknown escape character"),
    ("ctrl.yaml", f"name: {SECRET}\x01\n", "ctrl.yaml:1:24: invalid YAML: control or other non-printable character"),
    ("bare.json", f'{{"name": {SECRET}}}', "bare.json:1:10: invalid JSON: Expecting value"),
    ("ctrl.json", f'{{"name": "{SECRET}\x01"}}', "ctrl.json:1:28: invalid JSON: Invalid control character at"),
    ("tail.json", f'{{"name": "x"}} {SECRET}', "tail.json:1:15: invalid JSON: Extra data"),
]


@pytest.mark.parametrize(("name", "content", "expected"), SECRET_CASES, ids=[c[0] for c in SECRET_CASES])
def test_problems_never_quote_the_value(name: str, content: str, expected: str, secret_schema) -> None:
    """Every kind of invalid content is refused with where and what kind of problem, never the value itself."""
    problems = check_parse({name: content.encode()}, secret_schema)
    assert problems == [expected]
    assert not any(part in expected.lower() for part in ("hunter2", "topsecret"))


def test_huge_integers_are_refused_at_their_position_not_raised() -> None:
    """An integer past Python's digit limit is a located problem in YAML and JSON (not a ValueError)."""
    digits = "7" * 5000
    problems = check_parse(
        {"a.yaml": f"a: 1\nb: {digits}\n".encode(), "b.json": f'{{\n "b": {digits}}}'.encode()}, AUTO
    )
    assert problems == [
        f"a.yaml:2:4: invalid YAML: an integer longer than {sys.get_int_max_str_digits()} digits",
        f"b.json:2:7: invalid JSON: an integer longer than {sys.get_int_max_str_digits()} digits",
    ]


@pytest.mark.parametrize(
    "text",
    [
        f"a: *{SECRET}\n",
        f"a: !{SECRET} x\n",
        f"a: !{SECRET}!x 1\n",
        f"%TAG !{SECRET}! a\n%TAG !{SECRET}! b\n---\na: 1\n",
    ],
    ids=["alias", "tag", "tag-handle", "tag-directive"],
)
def test_pure_python_pyyaml_messages_lose_what_they_quote(text: str) -> None:
    """Without libyaml, PyYAML quotes the input in its messages (`found undefined alias 'x'`): the reason drops it."""
    import yaml

    from sidecar.parsers import _yaml_reason

    with pytest.raises(yaml.MarkedYAMLError) as info:
        yaml.load(text, Loader=yaml.SafeLoader)  # noqa: S506 - the safe loader, pure-Python on purpose
    assert SECRET in str(info.value.problem)
    reason = _yaml_reason(info.value)
    assert reason and SECRET not in reason and "''" not in reason, reason


def test_parser_indicators_stay_in_the_reason() -> None:
    """Quoted indicators and token names are kept: `did not find expected '-' indicator` stays useful."""
    import yaml

    from sidecar.parsers import _yaml_reason

    with pytest.raises(yaml.MarkedYAMLError) as info:
        yaml.load("key: value\nlist:\n  - a\n  b: c\n", Loader=yaml.SafeLoader)  # noqa: S506
    assert _yaml_reason(info.value) == "expected <block end>, but found '?'"


SCHEMA_REASONS = [
    ({"required": ["port", "host"]}, {"name": "x"}, "at (root): missing required properties 'port', 'host'"),
    ({"type": ["integer", "null"]}, "x", "at (root): wrong type (expected integer or null, got string)"),
    ({"minimum": 1}, 0, "at (root): less than the minimum 1"),
    ({"maxItems": 1}, [1, 2], "at (root): more than 1 items"),
    ({"uniqueItems": True}, [1, 1], "at (root): has duplicate items"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, 1, "at (root): matches more than one alternative (oneOf)"),
    ({"anyOf": [{"type": "integer"}]}, "x", "at (root): matches none of the alternatives (anyOf)"),
    ({"not": {"type": "string"}}, "x", "at (root): matches a schema it must not match (not)"),
    ({"dependentRequired": {"tls": ["cert"]}}, {"tls": True}, "at (root): property 'tls' requires property 'cert'"),
    ({"propertyNames": {"maxLength": 3}}, {"long": 1}, "at (root): a property name longer than 3 characters"),
    (
        {"properties": {"a": {"properties": {"b/c": {"type": "string"}}}}},
        {"a": {"b/c": 1}},
        "at a/b~1c: wrong type (expected string, got integer)",
    ),
    ({"additionalProperties": False}, {"k" * 65: 1}, "at (root): property '<key of 65 characters>' not allowed"),
    (
        {"minContains": 2, "contains": {"type": "string"}},
        ["x", 1],
        "at (root): fewer than 2 items match the schema of 'contains'",
    ),
]


@pytest.mark.parametrize(
    ("schema", "doc", "expected"), SCHEMA_REASONS, ids=[r[2].split(": ", 1)[1][:30] for r in SCHEMA_REASONS]
)
def test_schema_problems_say_what_the_schema_wanted(
    schema: dict[str, object], doc: object, expected: str, tmp_path: Path
) -> None:
    """Each keyword's problem names what the schema asked for, in the schema's own terms."""
    path = tmp_path / "s.json"
    path.write_text(json.dumps(schema))
    [problem] = check_parse({"d.json": json.dumps(doc).encode()}, (ValidatorSpec("schema", path),))
    assert problem.split(": ", 2)[2] == expected, problem


@pytest.mark.parametrize(
    ("schema", "expected"),
    [({"type": "port"}, "not a valid JSON Schema: at type:"), ({"$ref": "#/nowhere"}, "schema: cannot be applied")],
    ids=["unknown-type", "dangling-ref"],
)
def test_a_broken_schema_is_a_problem_that_never_quotes_the_document(
    schema: dict[str, object], expected: str, tmp_path: Path
) -> None:
    """A schema jsonschema cannot use is reported as such (its own errors quote the document checked)."""
    path = tmp_path / "s.json"
    path.write_text(json.dumps(schema))
    [problem] = check_parse({"d.json": json.dumps({"a": SECRET}).encode()}, (ValidatorSpec("schema", path),))
    assert expected in problem and SECRET not in problem, problem


# --- validate() ------------------------------------------------------------------------------------------


async def test_empty_snapshot_is_refused() -> None:
    """A snapshot with no files is never ok: an empty config is never promoted."""
    verdict = await validate(_snap({}), Checks())
    assert not verdict.ok
    assert verdict.problems == ("no files in the source (an empty config is never promoted)",)


async def test_snapshot_problems_are_the_verdict() -> None:
    """Problems found while reading the source refuse the version without parsing anything."""
    snap = Snapshot(files={"a.yaml": BROKEN}, version="v", problems=("pipe: FIFO, not a regular file; refused",))
    verdict = await validate(snap, Checks())
    assert verdict.problems == ("pipe: FIFO, not a regular file; refused",)
    assert verdict.version == "v"


async def test_good_snapshot_is_ok() -> None:
    """A snapshot whose files all parse gives an ok verdict with no reason."""
    verdict = await validate(_snap({"a.yaml": GOOD_YAML}, "feedfacefeedface"), Checks())
    assert verdict.ok and verdict.reason == "" and verdict.version == "feedfacefeedface"
    assert verdict.duration_s >= 0


async def test_parse_failure_skips_the_checker(tmp_path: Path) -> None:
    """The checker command does not run on a candidate that already failed parsing."""
    marker = tmp_path / "ran"
    cmd = (PY, "-c", "import sys, pathlib; pathlib.Path(sys.argv[1]).touch()", str(marker), "{dir}")
    verdict = await validate(_snap({"a.yaml": BROKEN}), Checks(AUTO, cmd, 5.0, tmp_path))
    assert not verdict.ok and not marker.exists()


async def test_problems_are_capped() -> None:
    """Many broken files give a bounded list of problems, joined into one reason."""
    files = {f"f{i:02}.yaml": BROKEN for i in range(40)}
    verdict = await validate(_snap(files), Checks())
    assert len(verdict.problems) == 20
    assert verdict.reason == "; ".join(verdict.problems)


# --- run_command -----------------------------------------------------------------------------------------


async def test_passing_command(tmp_path: Path) -> None:
    """A checker that exits 0 gives no problems."""
    assert await run_command((PY, "-c", "pass", "{dir}"), {"a": b"1"}, 5.0, tmp_path) == []


async def test_checker_sees_the_staged_candidate(tmp_path: Path) -> None:
    """`{dir}` (alone or inside an argument) becomes a dir holding the candidate's files while the checker runs."""
    marker = tmp_path / "seen-dir"
    script = (
        "import sys, pathlib\n"
        "d = pathlib.Path(sys.argv[1])\n"
        "assert (d / 'app.yaml').read_bytes() == b'a: 1\\n', 'app.yaml'\n"
        "assert (d / 'conf.d' / 'x.conf').read_bytes() == b'x', 'nested'\n"
        "assert sys.argv[2] == '--config=' + str(d) + '/app.yaml', sys.argv[2]\n"
        "pathlib.Path(sys.argv[3]).write_text(str(d))\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    files = {"app.yaml": b"a: 1\n", "conf.d/x.conf": b"x"}
    problems = await run_command((PY, "-c", script, "{dir}", "--config={dir}/app.yaml", str(marker)), files, 5.0, work)
    assert problems == []
    staged = marker.read_text()
    assert os.path.dirname(staged) == str(work) and os.path.basename(staged).startswith("..check-")
    assert list(work.iterdir()) == []  # the staging dir is gone


async def test_failing_command_reports_its_output_with_relative_names(tmp_path: Path) -> None:
    """A failing checker's exit code and output are the reason, with the staging path made relative."""
    script = (
        "import sys\n"
        "print(sys.argv[1] + '/nginx.conf:3: unknown directive \"lisen\"', flush=True)\n"  # no PYTHONUNBUFFERED
        "print('  configuration file ' + sys.argv[1] + ' test failed', file=sys.stderr)\n"
        "sys.exit(1)\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    problems = await run_command((PY, "-c", script, "{dir}"), {"nginx.conf": b"lisen 80;"}, 5.0, work)
    assert problems == [
        f'checker {PY!r} exited 1: nginx.conf:3: unknown directive "lisen" | configuration file <candidate> test failed'
    ]
    assert str(work) not in problems[0] and "..check-" not in problems[0]
    assert list(work.iterdir()) == []


async def test_long_output_is_trimmed(tmp_path: Path) -> None:
    """Long checker output is trimmed to its head and tail so the reason stays short."""
    script = "import sys\nfor i in range(3000): print(f'error line {i}')\nsys.exit(2)\n"  # ~50 KB
    problems = await run_command((PY, "-c", script, "{dir}"), {"a": b"1"}, 5.0, tmp_path)
    assert len(problems) == 1
    reason = problems[0]
    assert reason.startswith(f"checker {PY!r} exited 2: error line 0 | error line 1 |")
    assert reason.endswith("error line 2999")
    assert " … " in reason
    assert len(reason) < 1700


async def test_output_over_the_cap_keeps_its_last_line(tmp_path: Path) -> None:
    """Output longer than the capture cap still ends the reason with the checker's last line."""
    script = "import sys\nfor i in range(6000): print(f'warning line {i}')\nprint('test failed')\nsys.exit(1)\n"
    problems = await run_command((PY, "-c", script, "{dir}"), {"a": b"1"}, 5.0, tmp_path)
    assert problems[0].endswith("test failed")


async def test_missing_executable_is_a_clear_problem(tmp_path: Path) -> None:
    """A checker that does not exist is reported as not startable, and nothing is left behind."""
    work = tmp_path / "work"
    work.mkdir()
    for exe in ("/nonexistent/bin/checker", "reload-sidecar-no-such-checker"):
        problems = await run_command((exe, "-t", "{dir}"), {"a": b"1"}, 5.0, work)
        assert problems == [f"checker {exe!r} cannot be started: No such file or directory"]
    assert list(work.iterdir()) == []


HANG = (  # writes "<checker pid> <grandchild pid>", then hangs; the grandchild holds the output pipe too
    "import os, subprocess, sys, time, pathlib\n"
    "child = subprocess.Popen(['sleep', '60'])\n"
    "pathlib.Path(sys.argv[1]).write_text(f'{os.getpid()} {child.pid}')\n"
    "time.sleep(60)\n"
)


@pytest.mark.timeout(60)
async def test_hanging_command_is_killed_with_its_children(tmp_path: Path) -> None:
    """A checker past its timeout is killed with its whole process group, in time, and refused."""
    pidfile = tmp_path / "grandchild.pid"
    work = tmp_path / "work"
    work.mkdir()
    start = time.monotonic()
    problems = await run_command((PY, "-c", HANG, str(pidfile), "{dir}"), {"a": b"1"}, 0.8, work)
    elapsed = time.monotonic() - start
    assert problems == [f"checker {PY!r} did not finish within 0.8 s (RELOAD_VALIDATE_TIMEOUT_S); killed"]
    assert elapsed < 0.8 + 10  # not the 60 s the checker and its child would take
    checker, grandchild = map(int, pidfile.read_text().split())
    assert await _eventually(lambda: _gone(grandchild), 10.0), f"grandchild {grandchild} survived the timeout"
    assert _reaped(checker)
    assert list(work.iterdir()) == []


@pytest.mark.timeout(60)
async def test_cancelled_check_kills_the_checker(tmp_path: Path) -> None:
    """Cancelling a validation (e.g. at shutdown) kills the checker's process group and removes the staging dir."""
    pidfile = tmp_path / "grandchild.pid"
    work = tmp_path / "work"
    work.mkdir()
    task = asyncio.create_task(run_command((PY, "-c", HANG, str(pidfile), "{dir}"), {"a": b"1"}, 30.0, work))
    assert await _eventually(lambda: pidfile.exists() and bool(pidfile.read_text()), 5.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    checker, grandchild = map(int, pidfile.read_text().split())
    assert await _eventually(lambda: _gone(grandchild), 10.0)
    # run_command re-raises without waiting; the loop's child watcher reaps the killed checker.
    assert await _eventually(lambda: _reaped(checker), 10.0)
    await asyncio.sleep(0.05)  # let the exit and EOF callbacks close the transport before this loop ends
    assert list(work.iterdir()) == []


async def test_checker_runs_in_its_own_session(tmp_path: Path) -> None:
    """The checker is a session leader, so killing its group never reaches the sidecar."""
    marker = tmp_path / "ids"
    script = "import os, sys, pathlib\npathlib.Path(sys.argv[1]).write_text(f'{os.getpid()} {os.getsid(0)}')\n"
    assert await run_command((PY, "-c", script, str(marker), "{dir}"), {"a": b"1"}, 5.0, tmp_path) == []
    pid, sid = marker.read_text().split()
    assert pid == sid and int(sid) != os.getsid(0)


async def test_checker_that_leaves_a_child_holding_its_output_is_judged_by_its_exit(tmp_path: Path) -> None:
    """A checker that exits while a child it started keeps the output pipe open is judged at once by its
    exit status (not reported as hanging), and the child is killed with the checker's process group."""
    pidfile = tmp_path / "child.pid"
    script = (
        "import subprocess, sys\n"
        f"p = subprocess.Popen(['sleep', '30']); open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "print('checked: bad'); sys.exit(1)\n"
    )
    started = time.monotonic()
    problems = await run_command((PY, "-c", script, "{dir}"), {"a": b"1"}, 10.0, tmp_path)
    assert time.monotonic() - started < 10  # judged before its 10 s timeout (the child sleeps 30 s)
    assert problems == [f"checker {PY!r} exited 1: checked: bad"]
    child = int(pidfile.read_text())  # noqa: ASYNC240 - a tiny file the test just made
    for _ in range(200):  # 10 s
        if _gone(child):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the checker's leftover child is still running")


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_files_verdict_is_reused_only_for_the_same_bytes_and_checks(tmp_path: Path) -> None:
    """Unchanged files are not parsed again, but any change of bytes, name or schema is checked afresh."""
    good, bad = b"a: 1\n", b"a: [1\n"
    assert check_parse({"x.yaml": good}, (ValidatorSpec("auto"),)) == []
    assert check_parse({"x.yaml": bad}, (ValidatorSpec("auto"),)) != []
    assert check_parse({"x.yaml": good}, (ValidatorSpec("auto"),)) == []  # served from the cache, still right
    assert check_parse({"x.json": good}, (ValidatorSpec("auto"),)) != []  # same bytes, other format: re-checked
    schema = tmp_path / "s.json"
    schema.write_text('{"type": "object", "properties": {"a": {"type": "string"}}}')
    [problem] = check_parse({"x.yaml": good}, (ValidatorSpec("schema", schema),))
    assert "wrong type (expected string, got integer)" in problem
