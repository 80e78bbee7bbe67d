"""Session set-up shared by all tests."""

from __future__ import annotations

import compileall
from pathlib import Path

import sidecar


def pytest_sessionstart() -> None:
    # Tests start the sidecar as a process hundreds of times; with PYTHONDONTWRITEBYTECODE set (as on CI
    # machines) each start would recompile the package. Bytecode written once keeps starts realistic.
    compileall.compile_dir(Path(sidecar.__file__).parent, quiet=1)
