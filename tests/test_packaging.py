"""Packaging: one version source, every runtime dependency pinned for the images, and nothing declared unused."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import sidecar

ROOT = Path(__file__).parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _imported_top_level_names() -> set[str]:
    names = set()
    for path in (ROOT / "sidecar").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.partition(".")[0])
    return names


def test_the_version_is_written_once() -> None:
    """pyproject reads the version from sidecar.__version__ instead of repeating it."""
    assert "version" not in PYPROJECT["project"]
    assert "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "sidecar.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", sidecar.__version__)


def test_every_runtime_dependency_is_pinned_in_the_constraints() -> None:
    """The images install with constraints.txt: each runtime dependency has an exact version there that
    satisfies pyproject's range."""
    pins = _constraints()
    for spec in PYPROJECT["project"]["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name]), f"{req.name}=={pins[name]} is outside {req.specifier}"


def test_every_runtime_dependency_is_imported() -> None:
    """A dependency the package never imports is not declared (aiofiles was, unused)."""
    import_names = {"pyyaml": "yaml"}
    imported = _imported_top_level_names()
    for spec in PYPROJECT["project"]["dependencies"]:
        name = canonicalize_name(Requirement(spec).name)
        assert import_names.get(name, name.replace("-", "_")) in imported, f"{name} is declared but never imported"


def test_the_images_build_with_the_constraints() -> None:
    """Each Dockerfile that resolves dependencies copies constraints.txt and passes it to pip."""
    for name in ("Dockerfile", "Dockerfile.nginx"):
        text = (ROOT / name).read_text()
        assert re.search(r"^COPY [^\n]*\bconstraints\.txt\b", text, re.M), name
        assert all(
            "-c constraints.txt" in line
            for line in text.splitlines()
            if re.search(r"pip (wheel|install)", line) and "--no-index" not in line
        ), name


def test_every_package_is_in_the_wheel() -> None:
    """Each directory of sidecar/ with an __init__.py is a package the build includes (the images run the
    wheel, not the source tree: sidecar.webhook was once missing from it)."""
    import fnmatch

    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "sidecar").rglob("__init__.py")}
    assert "sidecar.webhook" in packages
    config = PYPROJECT["tool"]["setuptools"]
    if "packages" in config and isinstance(config["packages"], list):
        included = set(config["packages"])
    else:
        patterns = config["packages"]["find"]["include"]
        included = {p for p in packages if any(fnmatch.fnmatchcase(p, pattern) for pattern in patterns)}
    assert packages <= included, sorted(packages - included)
