"""Session set-up shared by all tests."""

from __future__ import annotations

import compileall
from pathlib import Path

import pytest

import sidecar

_E2E_DIR = Path(__file__).parent / "e2e"
_CONTAINERS_DIR = Path(__file__).parent / "containers"


def pytest_sessionstart() -> None:
    # Tests start the sidecar as a process hundreds of times; with PYTHONDONTWRITEBYTECODE set (as on CI
    # machines) each start would recompile the package. Bytecode written once keeps starts realistic.
    compileall.compile_dir(Path(sidecar.__file__).parent, quiet=1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/e2e/ starts real processes: marked here, so no file can forget the marker and
    # `-m "not e2e"` is the fast in-process run.
    # tests/containers/ builds and runs the images (podman): `container`, and `e2e` too, so that the unit
    # run skips them; `-m "e2e and not container"` is the process-level run without them.
    for item in items:
        if item.path.is_relative_to(_E2E_DIR):
            item.add_marker(pytest.mark.e2e)
        elif item.path.is_relative_to(_CONTAINERS_DIR):
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.container)
            # Hang protection only, but the first of them also waits for the session's image builds
            # (debootstrap, stand-ins, three images: minutes), which the default 120 s does not cover.
            item.add_marker(pytest.mark.timeout(1200))
