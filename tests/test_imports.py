"""The import graph of `sidecar/`: no cycle, and no pipeline stage imports a later one.

Read from the source with `ast` (function-level imports included), not by importing anything.
Run as a script to print the graph: `python3 tests/test_imports.py`.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sidecar"

# The pipeline order; a module (or package) may import earlier stages only. Names that a stage may
# be renamed or split into share its rank.
STAGES = {
    "watch": 0,
    "snapshot": 1,
    "validate": 2,
    "validators": 2,
    "stagger": 3,
    "promote": 4,
    "target": 4,
    "trigger": 5,
    "triggers": 5,
    "verify": 6,
    "proof": 6,
    "reloader": 7,
}


def _module(path: Path) -> str:
    parts = ["sidecar", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    """`sidecar.x` -> the `sidecar` modules it imports, anywhere in its source."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "sidecar"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                if base.split(".")[0] != "sidecar":
                    continue
                for alias in node.names:  # `from . import promote` imports the module sidecar.promote
                    deps.add(f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base)
        graph[name] = deps - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path (first == last), or [] when there is none."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str]:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return []
        for dep in sorted(graph.get(node, ())):
            if found := visit(dep, [*path, node]):
                return found
        done.add(node)
        return []

    for start in sorted(graph):
        if found := visit(start, []):
            return found
    return []


def _stage(module: str) -> int | None:
    parts = module.split(".")
    return STAGES.get(parts[1]) if len(parts) > 1 else None


def test_the_graph_is_read_from_the_source() -> None:
    """The graph sees relative, `from . import x` and function-level imports (the checks below rely on it)."""
    graph = import_graph()
    assert "sidecar.promote" in graph["sidecar.reloader"]  # `from . import promote as _promote`
    assert "sidecar.reloader" in graph["sidecar.cli"]  # imported inside main()
    assert "sidecar.webhook.review" in graph["sidecar.webhook.server"]  # sibling in a subpackage


def test_no_import_cycle() -> None:
    """No module of `sidecar/` imports itself through others."""
    assert _cycle(import_graph()) == []


def test_cycle_detection_finds_a_cycle() -> None:
    """The cycle check itself: it reports a two-module loop like the old cli <-> demo one."""
    assert _cycle({"sidecar.cli": {"sidecar.demo"}, "sidecar.demo": {"sidecar.cli"}}) == [
        "sidecar.cli",
        "sidecar.demo",
        "sidecar.cli",
    ]


def test_no_stage_imports_a_later_stage() -> None:
    """Imports go back along watch, snapshot, validate, stagger, promote, signal/trigger, verify, reloader."""
    bad = [
        f"{module} imports {dep}"
        for module, deps in import_graph().items()
        for dep in deps
        if (rank := _stage(module)) is not None and (later := _stage(dep)) is not None and later > rank
    ]
    assert bad == []


if __name__ == "__main__":
    graph = import_graph()
    for module in sorted(graph):
        print(f"{module} -> {', '.join(sorted(d.removeprefix('sidecar.') for d in graph[module])) or '-'}")
    print("cycle:", " -> ".join(_cycle(graph)) or "none")
