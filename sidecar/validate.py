"""`Snapshot` -> `Verdict`: parse (YAML/JSON), JSON Schema, then the app's own checker on a staged copy.

Parsing is pure and bounded: YAML is pre-scanned for nesting depth and alias expansion before anything
is built, so a "billion laughs" document is refused in milliseconds without allocating it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .checker import StagingError, run_command, stage_files
from .settings import Settings
from .snapshot import Snapshot
from .validators import FORMATS, Locate, Parsed, Problem, ValidatorSpec, formats, schema_paths
from .validators import ProblemError as _Problem

__all__ = [
    "Checks",
    "Verdict",
    "check_parse",
    "find_problems",
    "parse_json",
    "parse_yaml",
    "run_command",
    "stage_files",
    "validate",
]

MAX_DEPTH = 64
MAX_NODES = 250_000
_MAX_PROBLEMS = 20

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class Checks:
    """What to run on a candidate: built-in validators, then an optional checker command."""

    validators: tuple[ValidatorSpec, ...] = (ValidatorSpec("auto"),)
    command: tuple[str, ...] = ()
    timeout_s: float = 10.0
    # Where staged copies for the checker are made (the sidecar uses its target dir: same filesystem).
    work_dir: Path | None = None
    # Variables of our environment the checker gets besides PATH, HOME and TMPDIR (RELOAD_VALIDATE_ENV).
    env: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings, work_dir: Path | None = None) -> Checks:
        return cls(
            settings.validators,
            settings.validate_command,
            settings.validate_timeout_s,
            work_dir,
            settings.validate_env,
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome for one version: `ok`, or the problems (file:line: why) that refused it."""

    version: str
    problems: tuple[str, ...]
    duration_s: float
    # The checks could not run (the checker's work dir is full or broken): no verdict on the content,
    # so the version must not be remembered as refused; it is checked again later.
    transient: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def reason(self) -> str:
        return "; ".join(self.problems)


async def validate(snapshot: Snapshot, checks: Checks) -> Verdict:
    """Run every check on `snapshot`; parsing happens in a worker thread, the command as a subprocess."""
    start = time.perf_counter()
    deadline = time.monotonic() + checks.timeout_s  # one budget: parsing, staging and the checker
    problems = list(snapshot.problems)
    if not snapshot.files and not problems:
        problems.append("no files in the source (an empty config is never promoted)")
    if not problems:
        if snapshot.small:  # a thread hand-off would cost more than parsing a few KiB
            problems = check_parse(snapshot.files, checks.validators)
        else:
            problems = await asyncio.to_thread(check_parse, snapshot.files, checks.validators)
    if not problems and checks.command:
        try:
            problems = await run_command(
                checks.command, snapshot.files, checks.timeout_s, checks.work_dir, env=checks.env, deadline=deadline
            )
        except StagingError as e:
            return Verdict(snapshot.version, (str(e),), time.perf_counter() - start, transient=True)
    return Verdict(snapshot.version, tuple(problems[:_MAX_PROBLEMS]), time.perf_counter() - start)


def check_parse(files: dict[str, bytes], specs: Iterable[ValidatorSpec]) -> list[str]:
    """`find_problems` as text: each `file:line:column: what`, never quoting the file's content."""
    return [str(p) for p in find_problems(files, specs)]


def find_problems(files: dict[str, bytes], specs: Iterable[ValidatorSpec]) -> list[Problem]:
    """Parse problems for every file that the validators give a format to, plus schema violations."""
    specs = tuple(specs)
    try:
        schemas = [_load_schema(path) for path in schema_paths(specs)]
    except _Problem as e:
        return [e.at("")]
    schema_key = json.dumps(schemas, sort_keys=True, default=str) if schemas else ""
    problems: list[Problem] = []
    for name, fmt in formats(files, specs).items():
        # Most versions change a few files: a file's verdict is reused while its bytes, name, format and
        # schemas are the same (a digest keyed with a per-process secret: crafted content cannot collide).
        digest = hashlib.blake2b(key=_CACHE_KEY, digest_size=16)
        digest.update(f"{name}\0{fmt}\0{schema_key}\0".encode())
        digest.update(files[name])
        key = digest.digest()
        cached = _VERDICTS.get(key)
        if cached is None:
            cached = _check_file(name, files[name], fmt, schemas)
            _remember(key, cached)
        problems += cached
    return problems


def _check_file(name: str, data: bytes, fmt: str, schemas: list[dict[str, Any]]) -> tuple[Problem, ...]:
    try:
        docs, locate = _parse(data, fmt)
    except _Problem as e:
        return (e.at(name),)
    return tuple(p for schema in schemas for p in _schema_problems(name, docs, schema, locate))


_CACHE_KEY = os.urandom(32)
_VERDICTS: dict[bytes, tuple[Problem, ...]] = {}
_CACHE_SIZE = 1024


_CACHE_LOCK = threading.Lock()  # parsing runs in worker threads (and concurrently in the webhook)


def _remember(key: bytes, problems: tuple[Problem, ...]) -> None:
    with _CACHE_LOCK:
        _VERDICTS[key] = problems
        while len(_VERDICTS) > _CACHE_SIZE:
            del _VERDICTS[next(iter(_VERDICTS))]


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, column = _position(data[: e.start].decode("utf-8"))
        raise _Problem(f"invalid UTF-8 at byte {e.start}", line, column) from e


def _position(before: str) -> tuple[int, int]:
    """(line, column) of the character that follows `before`."""
    return before.count("\n") + 1, len(before) - before.rfind("\n")


def _parse(data: bytes, fmt: str) -> Parsed:
    return FORMATS[fmt](_decode(data))


def parse_json(text: str) -> Parsed:
    """One JSON document; raises `ProblemError` with where and why, never quoting the text."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise _Problem(f"invalid JSON: {_unquoted(e.msg)}", e.lineno, e.colno) from e
    except RecursionError as e:
        raise _Problem("invalid JSON: nesting too deep") from e
    except ValueError as e:  # the only other one: an integer past sys.get_int_max_str_digits()
        raise _too_many_digits(text, "JSON") from e
    return [doc], lambda index, path: _json_position(text, path)


def _digit_limit() -> int:
    import sys  # only this rare path needs it

    return sys.get_int_max_str_digits()


def _too_many_digits(text: str, fmt: str) -> _Problem:
    limit = _digit_limit()
    found = re.search(rf"\d{{{limit + 1}}}", text)
    line, column = _position(text[: found.start()]) if found else (0, 0)
    return _Problem(f"invalid {fmt}: an integer longer than {limit} digits", line, column)


class _SafeLoader(_Loader):  # type: ignore[misc]  # _Loader is the C loader when libyaml is there
    """The safe loader; a value its type cannot be built from (`!!int abc`, `2001-02-30`, a 5000-digit
    integer) is a `ConstructorError` at that value, not a bare ValueError that quotes it."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as e:  # any conversion error: its text may quote the value
            raise yaml.constructor.ConstructorError(None, None, _unbuildable(node, e), node.start_mark) from e


_STANDARD_TAG = re.compile(r"tag:yaml\.org,2002:(\w+)")


def _unbuildable(node: yaml.Node, error: Exception) -> str:
    if isinstance(error, ValueError) and "int_max_str_digits" in str(error):
        return f"an integer longer than {_digit_limit()} digits"
    tag = _STANDARD_TAG.fullmatch(node.tag or "")
    return f"not a valid !!{tag[1]}" if tag else "a value that cannot be built"


def parse_yaml(text: str) -> Parsed:
    """YAML documents, bounded in depth and alias expansion; raises `ProblemError` like `parse_json`."""
    try:
        if _depth_bound(text) > MAX_DEPTH:
            _check_depth(text)
        loader = _SafeLoader(text)
        try:
            nodes: list[yaml.Node] = []
            while loader.check_node():
                nodes.append(loader.get_node())
            size = _expanded_size(nodes) if "*" in text else 0  # no alias without a '*'
            if size > MAX_NODES:
                raise _Problem(f"YAML alias expansion would build {size:,}+ nodes (limit {MAX_NODES:,}): refused")
            docs = [_construct(loader, node) for node in nodes]
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark: Any = e.problem_mark if e.problem_mark is not None else e.context_mark
        line, column = (0, 0) if mark is None else (mark.line + 1, mark.column + 1)
        raise _Problem(f"invalid YAML: {_yaml_reason(e)}", line, column) from e
    except yaml.reader.ReaderError as e:
        # libyaml counts the position in bytes of the UTF-8 text, the pure-Python reader in characters
        before = text.encode()[: e.position].decode("utf-8", "replace") if _C_YAML else text[: e.position]
        raise _Problem("invalid YAML: control or other non-printable character", *_position(before)) from e
    except yaml.YAMLError as e:
        raise _Problem(f"invalid YAML ({type(e).__name__})") from e
    return docs, lambda index, path: _yaml_position(nodes, index, path)


_C_YAML = _Loader is not yaml.SafeLoader


def _construct(loader: Any, node: yaml.Node) -> Any:
    try:
        return loader.construct_document(node)
    except (yaml.YAMLError, _Problem):
        raise
    except Exception as e:  # any other construction error, without its text (see _SafeLoader)
        raise _Problem("invalid YAML: a value in this document cannot be built", node.start_mark.line + 1) from e


def _yaml_reason(e: yaml.MarkedYAMLError) -> str:
    problem = e.problem or e.context or ""
    if problem.startswith("could not determine a constructor for the tag"):
        return "unknown tag (only the standard YAML types are read)"
    if problem == "second occurrence":  # its context names the anchor
        return "duplicate anchor"
    return _unquoted(problem) or type(e).__name__


# A quoted part of a parser message (Python's repr of a str). Kept when it is an indicator such as
# '-' or ':' or a token name such as '<block end>'; any other quotes a piece of the input.
_QUOTED = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\"""")
_INDICATOR = re.compile(r"""['"](?:[^\w\s'"]{1,3}|<[a-z ]+>)['"]""")


def _unquoted(message: str) -> str:
    """`message` without any quoted piece of the input (pure-Python PyYAML quotes the characters it
    stopped at; libyaml and the JSON decoder do not, but this is the one place that guarantees it)."""
    kept = _QUOTED.sub(lambda m: m[0] if _INDICATOR.fullmatch(m[0]) else "", message)
    return " ".join(kept.replace(" ,", ",").split())


_LEADING = re.compile(r"^[ \t?-]*", re.MULTILINE)


def _depth_bound(text: str) -> int:
    """A cheap upper bound on the nesting depth (string scans in C, no parsing).

    A flow level takes one '[' or '{'; two block levels take at least one more character of a line's
    leading run of spaces, '-' and '?' (a compact sequence can sit at its key's indentation, but what
    nests in it cannot). Only when this bound is over the limit is the exact, slower scan needed.
    """
    flow = text.count("[") + text.count("{")
    if flow > MAX_DEPTH:
        return flow
    lead = max(map(len, _LEADING.findall(text)), default=0)
    return 2 * lead + flow + 2


def _check_depth(text: str) -> None:
    # Exact, on parser events (a flat stream). It must run before composing: libyaml's composer (the C
    # loader) recurses once per nesting level without any limit, and a deep enough document crashes
    # the process with a stack overflow.
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark: Any = event.start_mark
                raise _Problem(f"YAML nesting deeper than {MAX_DEPTH}: refused", mark.line + 1, mark.column + 1)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _expanded_size(nodes: list[yaml.Node]) -> int:
    """Nodes the documents would have with every alias copied out, stopping early past the limit."""
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in memo:
            return memo[key]
        if key in active:
            mark = node.start_mark
            raise _Problem("YAML alias refers to itself (recursive structure): refused", mark.line + 1, mark.column + 1)
        active.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            children: Iterable[yaml.Node] = (n for pair in node.value for n in pair)
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = ()
        for child in children:
            total += size(child)
            if total > MAX_NODES:
                break
        active.discard(key)
        memo[key] = total
        return total

    total = 0
    for node in nodes:
        total += size(node)
        if total > MAX_NODES:
            break
    return total


def _json_position(text: str, path: list[Any]) -> tuple[int, int]:
    """Where a JSON value is, found on demand (only for schema problems) by composing the text as YAML."""
    try:
        return _yaml_position([yaml.compose(text, Loader=_Loader)], 0, path)
    except (yaml.YAMLError, RecursionError):
        return 0, 0  # JSON that YAML cannot read (e.g. tabs): the JSON path alone still locates the value


def _yaml_position(nodes: Sequence[yaml.Node | None], index: int, path: list[Any]) -> tuple[int, int]:
    if index >= len(nodes) or nodes[index] is None:
        return 0, 0
    node: Any = nodes[index]
    for part in path:
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if str(k.value) == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            found = node.value[part]
        else:
            found = None
        if found is None:
            break
        node = found
    return node.start_mark.line + 1, node.start_mark.column + 1


_SCHEMAS: dict[tuple[Path, bytes], dict[str, Any]] = {}


def _load_schema(path: Path) -> dict[str, Any]:
    """The schema at `path`, checked against its metaschema (a broken schema would raise mid-check)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _Problem(f"schema {path}: cannot read: {e.strerror or e}") from e
    if (cached := _SCHEMAS.get((path, data))) is not None:
        return cached
    try:
        docs, _ = _parse(data, "json" if path.suffix == ".json" else "yaml")
    except _Problem as e:
        raise _Problem(f"schema {e.at(str(path))}") from e
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise _Problem(f"schema {path}: not a JSON Schema object")
    import jsonschema

    schema: dict[str, Any] = docs[0]
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:  # its text quotes the schema (the operator's file), never a config
        where = "/".join(map(str, e.absolute_path)) or "(root)"
        raise _Problem(f"schema {path}: not a valid JSON Schema: at {where}: {e.message[:200]}") from e
    with _CACHE_LOCK:
        if len(_SCHEMAS) >= 16:
            _SCHEMAS.clear()
        _SCHEMAS[path, data] = schema
    return schema


def _schema_errors(validator: Any, doc: Any) -> list[Any]:
    """The schema's errors for one document, in path order."""
    from .schema import path_order

    try:
        return sorted(validator.iter_errors(doc), key=path_order)
    except RecursionError:
        raise
    except Exception as e:  # e.g. an unresolvable $ref: its text may quote the document
        raise _Problem(f"schema: cannot be applied ({type(e).__name__}); check the schema") from e


def _schema_problems(name: str, docs: list[Any], schema: dict[str, Any], locate: Locate) -> list[Problem]:
    import jsonschema  # imported on first use: it costs ~60 ms of start-up the sidecar rarely needs

    from .schema import describe, json_path

    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema)
    out: list[Problem] = []
    try:
        for index, doc in enumerate(docs):
            for err in _schema_errors(validator, doc):
                path = list(err.absolute_path)
                problem = Problem(name, f"schema: at {json_path(path)}: {describe(err)}", *locate(index, path))
                if problem not in out:  # `required` repeats its message per missing key
                    out.append(problem)
    except _Problem as e:
        out.append(e.at(name))
    except RecursionError:
        out.append(Problem(name, "schema: document nested too deep to check"))
    return out
