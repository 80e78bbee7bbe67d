"""The profiles file (`RELOAD_WEBHOOK_PROFILES`): which checks a ConfigMap naming a profile must pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import yaml

from ..checker import program_problem
from ..settings import SettingsError, parse_command, parse_env_names, parse_validators
from ..validate import Checks
from ..validators import ValidatorSpec

__all__ = ["DEFAULT_TIMEOUT_S", "MAX_TIMEOUT_S", "Profile", "load_profiles"]

#: The API server gives a webhook at most 30 s (`timeoutSeconds`, default 10): a profile must finish first.
MAX_TIMEOUT_S = 29.0
DEFAULT_TIMEOUT_S = 5.0
_PROFILE_FIELDS = ("validate", "command", "timeout_s", "env")  # in the order the problems name them
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Profile:
    """One entry of the profiles file: the checks a ConfigMap naming it must pass."""

    name: str
    checks: Checks


def load_profiles(path: Path) -> dict[str, Profile]:
    """Parse the profiles file (format in DESIGN.md); one `SettingsError` lists every problem in it.

    `validate` takes the words of `RELOAD_VALIDATE` (a list or a comma string; a relative `schema:` path
    is relative to the profiles file), `command` follows the rules of `RELOAD_VALIDATE_COMMAND` and its
    program must exist here, `timeout_s` defaults to 5 and must stay under the API server's 30 s.
    """
    where = f"RELOAD_WEBHOOK_PROFILES={str(path)!r}"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError([f"{where}: cannot read: {e}"]) from e
    except yaml.YAMLError as e:
        raise SettingsError([f"{where}: invalid YAML: {e}"]) from e
    if not isinstance(doc, dict) or set(doc) != {"profiles"} or not isinstance(doc["profiles"], dict):
        raise SettingsError([f"{where}: expected a mapping with one key, profiles: {{name: {{validate: [auto]}}}}"])
    if not doc["profiles"]:
        raise SettingsError([f"{where}: no profiles defined"])
    problems: list[str] = []
    profiles: dict[str, Profile] = {}
    for name, body in doc["profiles"].items():
        profile = _profile(str(name), body, path.parent)
        if isinstance(profile, Profile):
            profiles[str(name)] = profile
        else:
            problems.extend(f"{where}: profiles.{name}: {why}" for why in profile)
    if problems:
        raise SettingsError(problems)
    return profiles


def _profile(name: str, body: object, base: Path) -> Profile | list[str]:
    """The profile, or every problem in it (each field is checked whatever the others hold)."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        return ["expected a mapping with validate, command, timeout_s"]
    problems: list[str] = []
    if unknown := set(body) - set(_PROFILE_FIELDS):
        problems.append(
            f"unknown field(s) {', '.join(sorted(map(str, unknown)))}; expected {', '.join(_PROFILE_FIELDS)}"
        )
    validators = _checked(problems, lambda: _validators(body, base))
    command = _checked(problems, lambda: _command(body))
    timeout = _checked(problems, lambda: _timeout(body))
    env = _checked(problems, lambda: _env_names(body))
    if problems or validators is None or command is None or timeout is None or env is None:
        return problems
    return Profile(name, Checks(validators, command, timeout, env=env))


def _checked(problems: list[str], parse: Callable[[], _T]) -> _T | None:
    """`parse()`, or None with its problem added to `problems`."""
    try:
        return parse()
    except ValueError as e:
        problems.append(str(e))
        return None


def _validators(body: dict[object, object], base: Path) -> tuple[ValidatorSpec, ...]:
    words = body.get("validate", "auto")
    if isinstance(words, list) and all(isinstance(w, str) for w in words):
        words = ",".join(words)
    if not isinstance(words, str) or not words.strip():
        raise ValueError(f"validate: expected a list of words such as [auto], got {words!r}")
    try:
        return parse_validators(words, base=base)
    except ValueError as e:
        raise ValueError(f"validate: {e}") from None


def _command(body: dict[object, object]) -> tuple[str, ...]:
    command = body.get("command") or ""
    if not isinstance(command, str):
        raise ValueError(f"command: expected a string such as 'nginx -t -c {{dir}}/nginx.conf', got {command!r}")
    try:
        argv = parse_command(command)
    except ValueError as e:
        raise ValueError(f"command {command!r} {e}") from None
    if argv and (why := program_problem(argv[0])):
        raise ValueError(f"command: {why} (the checker must be in the webhook's image)")
    return argv


def _timeout(body: dict[object, object]) -> float:
    timeout = body.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0.1 <= timeout <= MAX_TIMEOUT_S:
        raise ValueError(f"timeout_s: expected seconds in [0.1, {MAX_TIMEOUT_S:g}], got {timeout!r}")
    return float(timeout)


def _env_names(body: dict[object, object]) -> tuple[str, ...]:
    """A profile's `env`: names of the webhook's variables its checker gets (it gets no others)."""
    env = body.get("env") or []
    if not isinstance(env, list) or not all(isinstance(n, str) for n in env):
        raise ValueError(f"env: expected a list of environment variable names such as [HTTPS_PROXY], got {env!r}")
    try:
        return parse_env_names(",".join(env))
    except ValueError as e:
        raise ValueError(f"env: {e}") from None
