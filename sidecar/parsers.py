"""YAML and JSON text -> documents, bounded and content-free: a "billion laughs" or a too-deep document is
refused before anything is built, and no problem message quotes the text (it may be a Secret's).

Both parsers return the documents and a `Locate` (document index, JSON path) -> (line, column), used to
place schema problems; both raise `ProblemError` with where and why. `check_yaml` refuses exactly what
`parse_yaml` refuses, with the same problem, without building the documents when it can (no schema
needs them): see its docstring for why that is the same verdict.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import yaml

from .problems import Parsed
from .problems import ProblemError as _Problem

__all__ = ["MAX_DEPTH", "MAX_NODES", "check_yaml", "parse_json", "parse_yaml", "position"]

MAX_DEPTH = 64
MAX_NODES = 250_000

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def position(before: str) -> tuple[int, int]:
    """(line, column) of the character that follows `before`."""
    return before.count("\n") + 1, len(before) - before.rfind("\n")


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
    return sys.get_int_max_str_digits()


def _too_many_digits(text: str, fmt: str) -> _Problem:
    limit = _digit_limit()
    found = re.search(rf"\d{{{limit + 1}}}", text)
    line, column = position(text[: found.start()]) if found else (0, 0)
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
        if _maybe_too_deep(text):
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
    except yaml.YAMLError as e:
        raise _yaml_problem(e, text) from e
    return docs, lambda index, path: _yaml_position(nodes, index, path)


def _yaml_problem(e: yaml.YAMLError, text: str) -> _Problem:
    if isinstance(e, yaml.MarkedYAMLError):
        mark: Any = e.problem_mark if e.problem_mark is not None else e.context_mark
        line, column = (0, 0) if mark is None else (mark.line + 1, mark.column + 1)
        return _Problem(f"invalid YAML: {_yaml_reason(e)}", line, column)
    if isinstance(e, yaml.reader.ReaderError):
        # libyaml counts the position in bytes of the UTF-8 text, the pure-Python reader in characters
        before = text.encode()[: e.position].decode("utf-8", "replace") if _C_YAML else text[: e.position]
        return _Problem("invalid YAML: control or other non-printable character", *position(before))
    return _Problem(f"invalid YAML ({type(e).__name__})")


_C_YAML = _Loader is not yaml.SafeLoader


def check_yaml(text: str) -> None:
    """`parse_yaml`'s verdict without its documents: raises the same `ProblemError`, or returns.

    When no part of the text could fail after parsing (`_needs_building` is False), libyaml's parser alone
    decides, in C, building no Python object (`raw_parse`: 10-50x faster than building the documents).
    That is the same verdict because `parse_yaml` refuses in this order, and each step past parsing needs
    something this text cannot have:
      1. depth: the same check, run first here too;
      2. syntax and characters: the same libyaml parser, so the same error at the same place;
      3. anchors and aliases (undefined, duplicate, self-referring, expanding past `MAX_NODES`): need an
         anchor or alias token; the expansion check also counts the nodes of any text with a '*', which
         is at most the parser's event count;
      4. building the values: only a tag, a merge key (`<<`), a `=` value, a collection as a mapping key,
         an integer past Python's digit limit, `0b_`/`0x_`, or an impossible date or time can fail.
    A text with any of these, or what might be one, gets `parse_yaml` itself.
    """
    if _CParser is None or _needs_building(text):
        parse_yaml(text)
        return
    try:
        if _maybe_too_deep(text):
            _check_depth(text)
        parser = _CParser(text)
        try:
            events = parser.raw_parse()
        finally:
            parser.dispose()
    except yaml.YAMLError as e:
        raise _yaml_problem(e, text) from e
    if events > MAX_NODES and "*" in text:
        parse_yaml(text)  # rare: let its node count decide


_CParser: Any = getattr(getattr(yaml, "cyaml", None), "CParser", None)
# What may come right before a tag, anchor, alias or explicit key (or a plain `=`) that is not already
# a syntax error: a blank or line break (libyaml's, the BOM too), a flow indicator, ':' or '?'. The
# patterns below start with a literal character, so the regex engine skips to its occurrences (a
# pattern starting with a class or a look-behind costs ~10 ms/MiB, ten times the parser's share).
_BEFORE = r"[^\s\ufeff\[\]{},:?]"
_RISKY = tuple(
    re.compile(pattern)
    for pattern in (
        *(rf"{c}(?<!{_BEFORE}{c})" for c in (r"!", r"&", r"\*", r"\?")),  # tag, anchor, alias, explicit key
        rf"=(?<!{_BEFORE}=)(?=[ \t]*(?:[\]}},:#]|[^\S \t]|\Z))",  # a plain `=`: the `value` tag, no constructor
        # a flow collection as a mapping key (unhashable); possessive: no backtracking on hostile text
        *(rf"{c}(?:\s|#[^\n\r\x85\u2028\u2029]*+)*+:" for c in (r"\]", r"\}")),
        r"<<",  # a merge key, or a `<<` value (no constructor)
        r"0[bx]_",  # `0b_`, `0x_`: an int with no digits (a regex: `"0x_" in text` is slow on text full of x)
    )
)
# The plain scalars the timestamp resolver may take, from their first '-' (with what may follow them,
# folded lines included): each one found is built to see whether it is a real date and time.
_TIMESTAMP = re.compile(
    r"-(?<=(?<![0-9])[0-9]{4}-)[0-9][0-9]?-[0-9][0-9]?"
    r"(?:(?:[Tt]|\s+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?(?:\s*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)?"
)
_BUILDER = yaml.constructor.SafeConstructor()
_DIGIT_RUNS = bytes(1 if chr(b) in "0123456789_" else 0 for b in range(256))


def _needs_building(text: str) -> bool:
    """Could building `text`'s documents fail where parsing it did not? (True when unsure.)"""
    if any(r.search(text) for r in _RISKY):
        return True
    limit = _digit_limit()  # an integer longer than this cannot be built; counted on bytes, in C
    if limit and len(text) > limit and b"\1" * (limit + 1) in text.encode().translate(_DIGIT_RUNS):
        return True
    for value in {" ".join(text[m.start() - 4 : m.end()].split()) for m in _TIMESTAMP.finditer(text)}:
        try:
            _BUILDER.construct_yaml_timestamp(yaml.ScalarNode("tag:yaml.org,2002:timestamp", value))
        except Exception:
            return True
    return False


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


_OTHER_BREAKS = re.compile("[\r\x85\u2028\u2029]")


def _maybe_too_deep(text: str) -> bool:
    """Could `text` nest deeper than `MAX_DEPTH`? A cheap over-estimate (string scans in C, no parsing).

    A flow level takes one '[' or '{'; two block levels take at least one more character of a line's
    leading run of spaces, '-' and '?' (a compact sequence can sit at its key's indentation, but what
    nests in it cannot): the bound is 2 x the longest run + the flow levels + 2. Only when that is over
    the limit is the exact, slower scan needed. A line starts after any of libyaml's line breaks (CR,
    NEL, LS, PS too): a text broken by CRs alone must not hide its block nesting from the bound.
    """
    flow = text.count("[") + text.count("{")
    if flow > MAX_DEPTH:
        return True
    run = max(0, (MAX_DEPTH - flow - 2) // 2 + 1)  # the shortest leading run that puts the bound over
    if any(c in text for c in "\r\x85\u2028\u2029"):  # four scans in C: faster than one class search
        text = _OTHER_BREAKS.sub("\n", text)
    first, other = _leading_runs(run)
    return first.match(text) is not None or other.search(text) is not None


@functools.cache
def _leading_runs(length: int) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """A leading run of `length` on the first line, and on any other line (found from its line feed: fast)."""
    return re.compile(f"[ \t?-]{{{length}}}"), re.compile(f"\n[ \t?-]{{{length}}}")


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
