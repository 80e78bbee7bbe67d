"""The one check of every test that needs root: as another user it fails with one line saying so.

Not a skip (a skipped test looks like a passed one in a summary): the README's test command, run as
non-root, lists each such test once, `Failed: needs root (...)`, with no traceback. CI runs as root.
"""

from __future__ import annotations

import os

import pytest

__all__ = ["needs_root"]


def needs_root(why: str) -> None:
    """Fail the calling test at once, in one line, unless running as root; `why` names what needs it."""
    if os.geteuid() != 0:
        pytest.fail(
            f"needs root ({why}); this is uid {os.geteuid()}: run the tests as root, as CI does (README, 'Set-up')",
            pytrace=False,
        )
