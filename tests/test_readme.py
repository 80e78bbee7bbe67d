"""The reference's (docs/reference.md) environment-variable table and `Settings` cannot drift apart.

Every name `Settings.from_env` reads (`ENV_VARS`) has exactly one row in docs/reference.md's "Environment variables"
table, the table names nothing else, and each row's default is the `Settings` field's default as a user
would write it in the environment.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sidecar import settings as settings_module
from sidecar.settings import ENV_VARS, env_defaults

README = Path(__file__).resolve().parent.parent / "docs" / "reference.md"


def _env_table() -> dict[str, list[tuple[str, str]]]:
    """`RELOAD_*` rows of the table under "## Environment variables" in docs/reference.md:
    name -> [(default, meaning)]."""
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


@pytest.mark.parametrize("name", ENV_VARS)
def test_default_matches_settings(name: str) -> None:
    """The README's default for a variable is the Settings field's default, written as the environment would."""
    readme_default = _env_table()[name][0][0].replace("`", "")
    expected = env_defaults()[name]  # also what each command's --help prints
    assert readme_default == expected, f"{name}: README says {readme_default!r}, Settings has {expected!r}"


def test_every_row_has_a_meaning() -> None:
    """No row of the env table leaves its meaning empty."""
    empty = [name for name, entries in _env_table().items() if not entries[0][1]]
    assert not empty, empty
