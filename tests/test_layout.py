"""The package layout the README's "Architecture" section describes: a subpackage per
stage, no import cycles (imports inside functions count), no stage importing a later one,
and no function shadowing a subpackage."""

from __future__ import annotations

import ast
import importlib
import types
from pathlib import Path

import papertag

SRC = Path(papertag.__file__).parent
#: Stages in the order data flows (the database first: every stage reads or writes it); a
#: module may import its own stage or an earlier one.
STAGES = ["db", "ingest", "annotators", "annotate", "review", "query", "daily", "cli"]
#: Shared modules any stage may import.
SHARED = {"errors", "taxonomy", "schema", "scoring", "files", "retry_after"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """papertag module -> the papertag modules it imports, anywhere in its body."""
    files = {module_name(f): f for f in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            graph[mod] |= {n for n in names if n in files and n != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def stage(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_no_stage_imports_a_later_stage() -> None:
    wrong = []
    for mod, targets in import_graph().items():
        here = stage(mod)
        if here not in STAGES:
            continue
        for target in targets:
            there = stage(target)
            if there in STAGES and STAGES.index(there) > STAGES.index(here):
                wrong.append(f"{mod} -> {target}")
    assert wrong == []


def test_every_module_belongs_to_a_stage_or_is_shared() -> None:
    top = {stage(m) for m in import_graph()} - {None}
    assert top <= set(STAGES) | SHARED


def test_subpackages_are_not_shadowed_by_functions() -> None:
    for name in ("ingest", "db", "annotators", "annotate", "review", "query", "cli"):
        importlib.import_module(f"papertag.{name}")
        assert isinstance(getattr(papertag, name), types.ModuleType), name
