"""tests/root.py: a test that needs root says so in one line as another user (it was a skip in one place and
PermissionError or assertion tracebacks in others)."""

from __future__ import annotations

import json
import os

import pytest

from tests.root import needs_root

NOBODY = 65534


def _as_another_user() -> dict[str, object]:
    """`needs_root` called as uid 65534: in a forked child when we are root, else right here."""
    if os.geteuid() != 0:
        try:
            needs_root("a test of the helper")
        except pytest.fail.Exception as e:
            return {"msg": e.msg, "pytrace": e.pytrace, "uid": os.geteuid()}
        return {}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become nobody, report what needs_root raised, exit without pytest's clean-up
        out: dict[str, object] = {}
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            needs_root("a test of the helper")
        except pytest.fail.Exception as e:
            out = {"msg": e.msg, "pytrace": e.pytrace, "uid": os.geteuid()}
        finally:
            os.write(write, json.dumps(out).encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        got: dict[str, object] = json.loads(f.read())
    os.waitpid(pid, 0)
    return got


def test_needs_root_fails_in_one_line_as_another_user() -> None:
    """One line naming what needs root and the uid, no traceback (pytrace off); as root it lets the test run."""
    got = _as_another_user()
    assert got == {
        "msg": f"needs root (a test of the helper); this is uid {got.get('uid')}: run the tests as root, as CI "
        "does (README, 'Set-up')",
        "pytrace": False,
        "uid": got.get("uid"),
    }
    assert got["uid"] != 0
    if os.geteuid() == 0:
        needs_root("nothing")  # returns
