"""The reference's (docs/reference.md) environment-variable table and `Settings` cannot drift apart.

Every name `Settings.from_env` reads (`ENV_VARS`) has exactly one row in docs/reference.md's "Environment variables"
table, the table names nothing else, and each row's default is the `Settings` field's default as a user
would write it in the environment.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from sidecar import settings as settings_module
from sidecar.settings import ENV_VARS, Expect, Settings, Stagger, ValidatorSpec

README = Path(__file__).resolve().parent.parent / "docs" / "reference.md"

# Rows whose default the sidecar fills in at run time rather than in `Settings`: name -> what README says.
RUNTIME_DEFAULTS = {
    "RELOAD_POD_NAME": "(host name)",  # run.serve_sidecar falls back to os.uname().nodename
    # stagger.make_gate derives them from RELOAD_BAKE_S and the fleet size (docs/stagger.md)
    "RELOAD_PEER_TIMEOUT_S": "(derived)",
    "RELOAD_PEER_FORGET_S": "(derived)",
}


def _env_table() -> dict[str, list[tuple[str, str]]]:
    """`RELOAD_*` rows of the table under "## Environment variables" in docs/reference.md: name -> [(default, meaning)]."""
    text = README.read_text()
    section = re.search(r"^## Environment variables\n(.*?)(?=^#)", text, re.S | re.M)
    assert section, "README docs/reference.md has no '## Environment variables' section"
    rows: dict[str, list[tuple[str, str]]] = {}
    for line in section[1].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells and re.fullmatch(r"`RELOAD_\w+`", cells[0]):
            assert len(cells) >= 3, line
            rows.setdefault(cells[0].strip("`"), []).append((cells[1], cells[2]))
    return rows


def _field_names() -> dict[str, str]:
    """Environment variable -> `Settings` field, from the same table `from_env` parses with."""
    return {name: key for name, key, _ in settings_module._FIELDS}


def _as_written(value: object) -> str:
    """A `Settings` default as a user writes it in the environment, `(none)` when unset."""
    if value is None or value == "" or value == ():
        return "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Expect):
        return str(value)
    if isinstance(value, Stagger):
        return value.mode if value.mode in ("none", "waves") else f"{value.mode}:{value.seconds:g}"
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):  # (host, port)
        return f"{value[0]}:{value[1]}"
    if isinstance(value, tuple) and all(isinstance(v, ValidatorSpec) for v in value):
        return ",".join(v.kind for v in value)
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _default(field: dataclasses.Field[object]) -> str:
    if field.default is not dataclasses.MISSING:
        return _as_written(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return _as_written(field.default_factory())
    return "(required)"


def test_every_setting_has_exactly_one_row() -> None:
    """Each variable Settings reads is a row of README's table, once."""
    rows = _env_table()
    missing = [name for name in ENV_VARS if name not in rows]
    assert not missing, f"README's env table lacks {missing}"
    doubled = [name for name, entries in rows.items() if len(entries) > 1]
    assert not doubled, f"README's env table repeats {doubled}"


def test_no_row_names_an_unknown_variable() -> None:
    """README documents no RELOAD_* variable that Settings does not read."""
    unknown = sorted(set(_env_table()) - set(ENV_VARS))
    assert not unknown, f"README's env table names variables Settings ignores: {unknown}"


def test_every_name_has_a_field() -> None:
    """ENV_VARS and the Settings fields they fill are one-to-one (the default check below relies on it)."""
    fields = {f.name for f in dataclasses.fields(Settings)}
    names = _field_names()
    assert list(names) == list(ENV_VARS)
    assert set(names.values()) <= fields


@pytest.mark.parametrize("name", ENV_VARS)
def test_default_matches_settings(name: str) -> None:
    """The README's default for a variable is the Settings field's default, written as the environment would."""
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    readme_default = _env_table()[name][0][0].replace("`", "")
    expected = RUNTIME_DEFAULTS.get(name) or _default(fields[_field_names()[name]])
    assert readme_default == expected, f"{name}: README says {readme_default!r}, Settings has {expected!r}"


def test_every_row_has_a_meaning() -> None:
    """No row of the env table leaves its meaning empty."""
    empty = [name for name, entries in _env_table().items() if not entries[0][1]]
    assert not empty, empty
