"""A made-up Secret value and a schema that every kind of refusal can be provoked against: the tests that
prove no refusal reason, log line or `/status` field ever shows a value use these."""

from __future__ import annotations

from typing import Any

SECRET = "hunter2-TOPSECRET"  # noqa: S105 - a made-up Secret value that must never be shown
SECRET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "port": {"type": "integer"},
        "mode": {"enum": ["fast", "safe"]},
        "name": {"pattern": "^[a-z]+$"},
        "level": {"const": 3},
        "short": {"maxLength": 4},
        "ports": {"type": "array", "items": {"type": "integer"}},
    },
}
