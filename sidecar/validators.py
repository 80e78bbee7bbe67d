"""Validator kinds: the words of `RELOAD_VALIDATE` (and of a webhook profile's `validate`), one registry.

A kind says how it is written, which files it reads and in which format, and whether its path is a JSON
Schema applied to what was parsed. `validate.check_parse` and `parse_validators` only consult `KINDS`
and `FORMATS`: a new kind is one class here, one line in `KINDS` (and a format in `FORMATS` if it
parses something new), plus its test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .problems import Locate, Parsed, Problem, ProblemError

__all__ = [
    "FORMATS",
    "KINDS",
    "Locate",
    "Parsed",
    "Problem",
    "ProblemError",
    "ValidatorKind",
    "ValidatorSpec",
    "formats",
    "parse_validators",
    "schema_paths",
]


@dataclass(frozen=True, slots=True)
class ValidatorSpec:
    """One word of `RELOAD_VALIDATE`: a kind of `KINDS`, with its path when the kind takes one."""

    kind: str
    path: Path | None = None


class ValidatorKind(Protocol):
    """One validator kind; instances are stateless, registered once in `KINDS`."""

    # The word, and how it is written in the list of expected words (`schema:<path>`).
    name: str
    usage: str
    # Written `name:<path>`; the path must be an existing file (a relative one is resolved against a base).
    takes_path: bool
    # A file gets the format of the first kind (by rank, then `KINDS` order) that reads it:
    # rank 0 reads every file, rank 1 picks files by extension.
    rank: int
    # Its path is a JSON Schema applied to every parsed document.
    schema: bool
    # It cannot be combined with other words (and checks nothing).
    alone: bool

    def format_of(self, file: str) -> str | None:
        """The format (a key of `FORMATS`) this kind reads `file` as, None when it leaves the file alone."""
        ...


def _extension(file: str) -> str:
    return file.rsplit(".", 1)[-1].lower() if "." in file else ""


_BY_EXTENSION = {"yaml": "yaml", "yml": "yaml", "json": "json"}


class _Kind:
    takes_path: bool = False
    rank: int = 1
    schema: bool = False
    alone: bool = False


class _Auto(_Kind):
    name = usage = "auto"

    def format_of(self, file: str) -> str | None:
        return _BY_EXTENSION.get(_extension(file))


class _Every(_Kind):
    """Reads every file in one format, whatever its name (`yaml`, `json`)."""

    rank = 0

    def __init__(self, fmt: str) -> None:
        self.name = self.usage = fmt

    def format_of(self, file: str) -> str | None:
        return self.name


class _Schema(_Auto):
    name, usage = "schema", "schema:<path>"
    takes_path = True
    schema = True


class _None(_Kind):
    name = usage = "none"
    alone = True

    def format_of(self, file: str) -> str | None:
        return None


#: Every kind by its word, in the order precedence ties are broken and the words are listed.
KINDS: dict[str, ValidatorKind] = {
    kind.name: kind
    for kind in (
        _Auto(),
        _Every("yaml"),
        _Every("json"),
        _Schema(),
        _None(),
    )
}


def _yaml(text: str) -> Parsed:
    from .parsers import parse_yaml  # imported on first use: settings need the words, not PyYAML

    return parse_yaml(text)


def _json(text: str) -> Parsed:
    from .parsers import parse_json

    return parse_json(text)


#: Format -> parser of a file's (UTF-8) text.
FORMATS: Mapping[str, Callable[[str], Parsed]] = {
    "yaml": _yaml,
    "json": _json,
}


def _expected() -> str:
    usages = [k.usage for k in KINDS.values()]
    return ", ".join(usages[:-1]) + " or " + usages[-1]


def _spec(word: str, base: Path | None) -> ValidatorSpec:
    name, sep, arg = word.partition(":")
    kind = KINDS.get(name)
    if kind is None or bool(sep) != kind.takes_path or (kind.takes_path and not arg):
        raise ValueError(f"unknown validator {word!r}; expected {_expected()}")
    if not kind.takes_path:
        return ValidatorSpec(name)
    path = Path(arg)
    if base is not None and not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise ValueError(f"{name} file {path} does not exist")
    return ValidatorSpec(name, path)


def parse_validators(raw: str, base: Path | None = None) -> tuple[ValidatorSpec, ...]:
    """The words of `RELOAD_VALIDATE` (also a webhook profile's `validate`, whose relative paths are
    resolved against `base`, the profiles file's directory); `ValueError` says what is wrong."""
    specs = [_spec(word.strip(), base) for word in raw.split(",")]
    alone = [s.kind for s in specs if KINDS[s.kind].alone]
    if alone and len(specs) > 1:
        raise ValueError(f"{alone[0]!r} cannot be combined with other validators")
    return tuple(s for s in specs if not KINDS[s.kind].alone)


def formats(files: Mapping[str, bytes], specs: tuple[ValidatorSpec, ...]) -> dict[str, str]:
    """File -> the format it is parsed in; files no validator reads are left out."""
    order = list(KINDS)
    kinds = sorted({KINDS[s.kind] for s in specs}, key=lambda k: (k.rank, order.index(k.name)))
    out: dict[str, str] = {}
    for file in files:
        fmt = next((f for k in kinds if (f := k.format_of(file)) is not None), None)
        if fmt is not None:
            out[file] = fmt
    return out


def schema_paths(specs: tuple[ValidatorSpec, ...]) -> list[Path]:
    """The JSON Schemas to apply to every parsed document, in the order given."""
    return [s.path for s in specs if KINDS[s.kind].schema and s.path is not None]
