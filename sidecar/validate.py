"""`Snapshot` -> `Verdict`: parse (YAML/JSON), JSON Schema, then the app's own checker on a staged copy.

Parsing is pure and bounded: YAML is pre-scanned for nesting depth and alias expansion before anything
is built, so a "billion laughs" document is refused in milliseconds without allocating it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .checker import StagingError, run_command, stage_files
from .parsers import check_yaml, position
from .snapshot import Snapshot
from .validators import FORMATS, Locate, Parsed, Problem, ValidatorSpec, formats, schema_paths
from .validators import ProblemError as _Problem

__all__ = [
    "Checks",
    "Verdict",
    "check_parse",
    "find_problems",
    "run_command",
    "stage_files",
    "validate",
]

_MAX_PROBLEMS = 20


class CheckSettings(Protocol):
    """The part of `Settings` the checks are built from (a protocol: validate.py does not import settings,
    which imports the validator registry, which parses with this module)."""

    @property
    def validators(self) -> tuple[ValidatorSpec, ...]: ...
    @property
    def validate_command(self) -> tuple[str, ...]: ...
    @property
    def validate_timeout_s(self) -> float: ...
    @property
    def validate_env(self) -> tuple[str, ...]: ...


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
    def from_settings(cls, settings: CheckSettings, work_dir: Path | None = None) -> Checks:
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
        digest = hashlib.sha256(_CACHE_KEY)  # sha256: about twice blake2b's speed where the CPU has SHA-NI
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
        if not schemas and fmt == "yaml":  # nothing needs the documents: the same verdict, not built
            check_yaml(_decode(data))
            return ()
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
        line, column = position(data[: e.start].decode("utf-8"))
        raise _Problem(f"invalid UTF-8 at byte {e.start}", line, column) from e


def _parse(data: bytes, fmt: str) -> Parsed:
    return FORMATS[fmt](_decode(data))


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
