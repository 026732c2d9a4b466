"""The package's layers point down only, and no import circle exists anywhere in ``beatleader/``.

Read from the source (every import statement, also those inside functions and under
``TYPE_CHECKING``): ``python -m pytest tests/test_layers.py -q`` says what breaks a rule, and
``python -m tests.test_layers`` prints each package's imports of the others (docs/design.md).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "beatleader"

#: Bottom to top; a package may import only from packages of a lower rank (and itself).
RANKS = {
    "_version": 0,
    "config": 0,
    "observe": 1,
    "zk": 2,
    "election": 3,
    "schedules": 3,
    "runs": 3,
    "worker": 4,
    "beat": 5,
    "django": 6,
    "ops": 6,
    "entries": 7,
    "web": 8,
    "cli": 9,
    # the public face: beatleader/__init__.py and the old module paths kept for users
    "": 10,
    "scheduler": 10,
    "dedup": 10,
    "embedded": 10,
}
#: Packages that must not import celery (or kombu) at all.
NO_CELERY = {"_version", "config", "observe", "zk", "election", "runs"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports(path: Path, known: dict[str, Path]) -> Iterator[str]:
    """Every module ``path`` imports, as dotted names (ours resolved to modules)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                yield candidate if candidate in known else node.module


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: {m for m in imports(path, known) if m in known and m != name}
        for name, path in known.items()
        if package_of(name) != "testing"
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_package_imports_only_from_lower_layers() -> None:
    wrong = []
    for module, targets in graph().items():
        here = package_of(module)
        for target in targets:
            there = package_of(target)
            if there != here and RANKS[there] >= RANKS[here]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports that do not point down: " + ", ".join(sorted(wrong))


def test_every_package_has_a_rank() -> None:
    assert {package_of(m) for m in modules()} - {"testing"} <= set(RANKS)


def test_the_lowest_layers_import_nothing_of_celery() -> None:
    known = modules()
    wrong = [
        f"{name} -> {target}"
        for name, path in known.items()
        if package_of(name) in NO_CELERY
        for target in imports(path, known)
        if target.split(".")[0] in {"celery", "kombu"}
    ]
    assert not wrong, wrong


def main() -> None:
    edges = graph()
    by_package: dict[str, set[str]] = {}
    for module, targets in edges.items():
        here = package_of(module) or "(face)"
        by_package.setdefault(here, set()).update(
            package_of(t) or "(face)" for t in targets if package_of(t) != package_of(module)
        )
    for package in sorted(by_package, key=lambda p: (RANKS.get(p, 10), p)):
        print(f"{package:10} -> {', '.join(sorted(by_package[package])) or '-'}")
    print("circles:", cycles(edges) or "none")


if __name__ == "__main__":
    main()
