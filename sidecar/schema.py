"""JSON Schema errors as text that never holds the checked document's values.

jsonschema's own messages quote the offending value (`'hunter2' is not of type 'integer'`); these say
what the schema wanted, from its side only (`wrong type (expected integer, got string)`, the pattern,
the allowed values, the names of required properties). Mapping keys are structure and shown in paths
and in "not allowed" lists; a key longer than 64 characters or with control characters is not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

__all__ = ["describe", "json_path", "path_order"]


def path_order(err: ValidationError) -> list[tuple[int, float, str]]:
    """A sort key for errors by where they are: paths mix list indices and mapping keys of any type
    (YAML allows `1: a` next to `b: c`), which do not compare with each other."""
    return [(0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in err.absolute_path]


def json_path(path: list[Any]) -> str:
    """`spec/ports/0/name`: mapping keys are structure and shown (JSON Pointer escaped), not values."""
    return "/".join(_key(p) for p in path) or "(root)"


def _key(part: object) -> str:
    if isinstance(part, int | float) or part is None:
        return str(part)
    if isinstance(part, str) and len(part) <= _KEY_CHARS and part.isprintable():
        return part.replace("~", "~0").replace("/", "~1")
    if isinstance(part, str):  # a key this long or with control characters could be a value used as a key
        return f"<key of {len(part)} characters>"
    return f"<{type(part).__name__} key>"


_KEY_CHARS = 64


def describe(err: ValidationError) -> str:
    """What is wrong, from the schema's side only: the keyword and its value, never the instance's value."""
    kind = err.validator
    if kind in _REASONS:
        reason = _REASONS[kind](err)
    elif kind in _TEMPLATES:
        reason = _TEMPLATES[kind].format(want=_shown(err.validator_value))
    elif kind is None:  # a `false` subschema
        reason = "not allowed here (its schema is false)"
    else:
        reason = f"fails the schema's {kind!r} keyword"
    return f"a property name {reason}" if "propertyNames" in err.relative_schema_path else reason


def _shown(value: object) -> str:
    """A value from the schema (an enum, a const, a pattern), shortened."""
    text = value if isinstance(value, str) else _json(value)
    return text if len(text) <= 100 else text[:99] + "…"


def _json_type(value: object) -> str:
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string")):
        if isinstance(value, kind):
            return name
    if value is None:
        return "null"
    if isinstance(value, dict | list):
        return "object" if isinstance(value, dict) else "array"
    return type(value).__name__  # e.g. a YAML timestamp: date


def _names(names: Sequence[object], one: str, many: str) -> str:
    shown = [f"'{_key(n)}'" for n in names[:5]] + ([f"and {len(names) - 5} more"] if len(names) > 5 else [])
    return f"{one if len(names) == 1 else many} {', '.join(shown)}"


def _wrong_type(err: ValidationError) -> str:
    want = err.validator_value
    expected = " or ".join(map(str, want)) if isinstance(want, list) else str(want)
    return f"wrong type (expected {expected}, got {_json_type(err.instance)})"


def _missing(err: ValidationError) -> str:
    want, instance = err.validator_value, err.instance
    missing = [p for p in want if p not in instance] if isinstance(want, list) and isinstance(instance, dict) else []
    return f"missing required {_names(missing, 'property', 'properties')}" if missing else "missing a required property"


def _not_allowed(err: ValidationError) -> str:
    # additionalProperties: false -> every key that neither `properties` nor `patternProperties` names.
    schema, instance = err.schema, err.instance
    if not isinstance(instance, dict) or not isinstance(schema, dict):
        return "has properties the schema does not allow"
    named, patterns = schema.get("properties", {}), list(schema.get("patternProperties", {}))
    extra = [k for k in instance if k not in named and not any(re.search(p, str(k)) for p in patterns)]
    return (
        f"{_names(extra, 'property', 'properties')} not allowed"
        if extra
        else "has properties the schema does not allow"
    )


def _depends(err: ValidationError) -> str:
    # dependentRequired (and draft 4-7 `dependencies` in its list form): {present: [also required]}
    want, instance = err.validator_value, err.instance
    if isinstance(want, dict) and isinstance(instance, dict):
        for present, needed in want.items():
            missing = (
                [n for n in needed if n not in instance] if present in instance and isinstance(needed, list) else []
            )
            if missing:
                return f"property '{_key(present)}' requires {_names(missing, 'property', 'properties')}"
    return "a property requires another that is missing"


def _not_listed(err: ValidationError) -> str:
    want = err.validator_value
    values = want if isinstance(want, list) else [want]
    return "not one of the allowed values: " + _shown(", ".join(_json(v) for v in values))


def _not_const(err: ValidationError) -> str:
    return f"not the required value {_shown(_json(err.validator_value))}"


def _json(value: object) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def _one_of(err: ValidationError) -> str:
    # jsonschema gives the failing branches as context when none matched, none when several did.
    return "matches none of the alternatives (oneOf)" if err.context else "matches more than one alternative (oneOf)"


_REASONS: dict[str, Callable[[ValidationError], str]] = {
    "type": _wrong_type,
    "required": _missing,
    "additionalProperties": _not_allowed,
    "dependentRequired": _depends,
    "dependencies": _depends,
    "oneOf": _one_of,
    "enum": _not_listed,
    "const": _not_const,
}
_TEMPLATES = {
    "pattern": "does not match the required pattern '{want}'",
    "format": "not a valid {want}",
    "minLength": "shorter than {want} characters",
    "maxLength": "longer than {want} characters",
    "minimum": "less than the minimum {want}",
    "maximum": "greater than the maximum {want}",
    "exclusiveMinimum": "not greater than {want}",
    "exclusiveMaximum": "not less than {want}",
    "multipleOf": "not a multiple of {want}",
    "minItems": "fewer than {want} items",
    "maxItems": "more than {want} items",
    "uniqueItems": "has duplicate items",
    "minProperties": "fewer than {want} properties",
    "maxProperties": "more than {want} properties",
    "contains": "no item matches the schema of 'contains'",
    "minContains": "fewer than {want} items match the schema of 'contains'",
    "maxContains": "more than {want} items match the schema of 'contains'",
    "anyOf": "matches none of the alternatives (anyOf)",
    "not": "matches a schema it must not match (not)",
    "items": "more items than the schema allows",
    "additionalItems": "more items than the schema allows",
    "unevaluatedItems": "more items than the schema allows (unevaluatedItems)",
    "unevaluatedProperties": "has properties the schema does not allow (unevaluatedProperties)",
}
