"""`parsers`: bounds that protect the process itself (a crash here would take the sidecar or the webhook down)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sidecar.parsers import MAX_DEPTH

_PROBE = """
import sys
from sidecar.parsers import check_yaml, parse_yaml
from sidecar.problems import ProblemError
text = sys.stdin.read()
for check in (parse_yaml, check_yaml):
    try:
        check(text)
        print("accepted")
    except ProblemError as e:
        print(e.at("f"))
"""


@pytest.mark.parametrize("brk", ["\r", "\x85", "\u2028", "\u2029", "\r\n"], ids=["CR", "NEL", "LS", "PS", "CRLF"])
def test_block_nesting_behind_any_line_break_is_refused_not_a_crash(brk: str) -> None:
    """A block sequence nested 200,000 deep after a CR (not a LF) used to slip past the cheap depth bound,
    and libyaml's composer then overflowed the C stack: a segfault from a 400 KB ConfigMap."""
    text = f"k:{brk}" + "- " * 200_000 + f"x{brk}"
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], input=text.encode(), capture_output=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr.decode()[-500:]
    refused = f"f:2:{2 * MAX_DEPTH - 1}: YAML nesting deeper than {MAX_DEPTH}: refused"
    assert done.stdout.decode().splitlines() == [refused, refused]
