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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .checker import run_command, stage_files
from .settings import Settings, ValidatorSpec
from .snapshot import Snapshot

__all__ = ["Checks", "Verdict", "check_parse", "run_command", "stage_files", "validate"]

MAX_DEPTH = 64
MAX_NODES = 250_000
_MAX_PROBLEMS = 20

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Format = str  # "yaml" | "json"


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

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def reason(self) -> str:
        return "; ".join(self.problems)


class _Problem(Exception):
    pass


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
        problems = await run_command(
            checks.command, snapshot.files, checks.timeout_s, checks.work_dir, env=checks.env, deadline=deadline
        )
    return Verdict(snapshot.version, tuple(problems[:_MAX_PROBLEMS]), time.perf_counter() - start)


def check_parse(files: dict[str, bytes], specs: Iterable[ValidatorSpec]) -> list[str]:
    """Parse problems for every file that the validators give a format to, plus schema violations."""
    specs = tuple(specs)
    formats = _formats(files, specs)
    try:
        schemas = [_load_schema(s.schema_path) for s in specs if s.kind == "schema" and s.schema_path]
    except _Problem as e:
        return [f"schema:{e}"]
    schema_key = json.dumps(schemas, sort_keys=True, default=str) if schemas else ""
    problems: list[str] = []
    for name, fmt in formats.items():
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


def _check_file(name: str, data: bytes, fmt: _Format, schemas: list[dict[str, Any]]) -> list[str]:
    try:
        docs, locate = _parse(data, fmt)
        return [p for schema in schemas for p in _schema_problems(name, docs, schema, locate)]
    except _Problem as e:
        return [f"{name}:{e}"]


_CACHE_KEY = os.urandom(32)
_VERDICTS: dict[bytes, list[str]] = {}
_CACHE_SIZE = 1024


_CACHE_LOCK = threading.Lock()  # parsing runs in worker threads (and concurrently in the webhook)


def _remember(key: bytes, problems: list[str]) -> None:
    with _CACHE_LOCK:
        _VERDICTS[key] = problems
        while len(_VERDICTS) > _CACHE_SIZE:
            del _VERDICTS[next(iter(_VERDICTS))]


def _formats(files: dict[str, bytes], specs: tuple[ValidatorSpec, ...]) -> dict[str, _Format]:
    formats: dict[str, _Format] = {}
    kinds = {s.kind for s in specs}
    for name in files:
        ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        if "yaml" in kinds:
            formats[name] = "yaml"
        elif "json" in kinds:
            formats[name] = "json"
        elif ("auto" in kinds or "schema" in kinds) and ext in ("yaml", "yml", "json"):
            formats[name] = "json" if ext == "json" else "yaml"
    return formats


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise _Problem(f"{line}: invalid UTF-8 at byte {e.start}") from e


# (document index, JSON path) -> line number as text, or "" when unknown
Locate = Callable[[int, list[Any]], str]


def _parse(data: bytes, fmt: _Format) -> tuple[list[Any], Locate]:
    text = _decode(data)
    if fmt == "json":
        try:
            return [json.loads(text)], lambda index, path: _json_line(text, path)
        except json.JSONDecodeError as e:
            raise _Problem(f"{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from e
        except RecursionError as e:
            raise _Problem(" invalid JSON: nesting too deep") from e
    return _parse_yaml(text)


def _parse_yaml(text: str) -> tuple[list[Any], Locate]:
    try:
        if _depth_bound(text) > MAX_DEPTH:
            _check_depth(text)
        loader = _Loader(text)
        try:
            nodes: list[yaml.Node] = []
            while loader.check_node():
                nodes.append(loader.get_node())
            size = _expanded_size(nodes) if "*" in text else 0  # no alias without a '*'
            if size > MAX_NODES:
                raise _Problem(f" YAML alias expansion would build {size:,}+ nodes (limit {MAX_NODES:,}): refused")
            docs = [loader.construct_document(node) for node in nodes]
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark: Any = e.problem_mark if e.problem_mark is not None else e.context_mark
        where = "" if mark is None else f"{mark.line + 1}:{mark.column + 1}"
        raise _Problem(f"{where}: invalid YAML: {e.problem or e.context}") from e
    except yaml.YAMLError as e:
        raise _Problem(f" invalid YAML: {e}") from e
    return docs, lambda index, path: _yaml_line(nodes, index, path)


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
                raise _Problem(f"{mark.line + 1}:{mark.column + 1}: YAML nesting deeper than {MAX_DEPTH}: refused")
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
            raise _Problem(" YAML alias refers to itself (recursive structure): refused")
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


def _json_line(text: str, path: list[Any]) -> str:
    """Line of a JSON value, found on demand (only for schema problems) by composing the text as YAML."""
    try:
        return _yaml_line([yaml.compose(text, Loader=_Loader)], 0, path)
    except (yaml.YAMLError, RecursionError):
        return ""  # JSON that YAML cannot read (e.g. tabs): the JSON path alone still locates the value


def _yaml_line(nodes: Sequence[yaml.Node | None], index: int, path: list[Any]) -> str:
    if index >= len(nodes) or nodes[index] is None:
        return ""
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
    return str(node.start_mark.line + 1)


def _load_schema(path: Path) -> dict[str, Any]:
    try:
        data = path.read_text(encoding="utf-8")
        schema = json.loads(data) if path.suffix == ".json" else yaml.safe_load(data)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise _Problem(f" schema {path} unreadable: {e}") from e
    if not isinstance(schema, dict):
        raise _Problem(f" schema {path} is not a JSON Schema object")
    return schema


def _schema_problems(name: str, docs: list[Any], schema: dict[str, Any], locate: Locate) -> list[str]:
    import jsonschema  # imported on first use: it costs ~60 ms of start-up the sidecar rarely needs

    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema)
    out: list[str] = []
    try:
        for index, doc in enumerate(docs):
            for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
                path = list(err.absolute_path)
                where = "/".join(str(p) for p in path) or "(root)"
                out.append(f"{name}:{locate(index, path)}: schema: at {where}: {err.message[:300]}")
    except RecursionError:
        out.append(f"{name}: schema: document nested too deep to check")
    return out
