"""The package's shape: imports flow one way (no cycle), config depends on nothing of hpo but its
errors, and only the entry points print through hpo.cli. Read from the source with ast, so a
lazy import inside a function counts as much as one at the top."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hpo"
ENTRY_POINTS = {"run", "workers", "report", "dashboard", "train"}  # the modules with a main()


def hpo_imports(path: Path) -> set[str]:
    """The hpo modules a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "hpo":
            if node.module == "hpo":  # from hpo import config, data as data_mod
                found |= {a.name for a in node.names if (PACKAGE / f"{a.name}.py").exists()}
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("hpo.")}
    return found


GRAPH = {p.stem: hpo_imports(p) - {p.stem} for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a path that starts and ends at the same module; None when there is none."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            found = visit(nxt, path + [node])
            if found:
                return found
        done.add(node)
        return None

    return next((c for c in (visit(n, []) for n in sorted(graph)) if c), None)


def test_the_import_graph_has_no_cycle():
    assert cycle(GRAPH) is None, " -> ".join(cycle(GRAPH))


def test_the_cycle_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_config_imports_nothing_of_hpo_but_its_errors():
    assert GRAPH["config"] <= {"errors"}


@pytest.mark.parametrize("module", sorted(set(GRAPH) - ENTRY_POINTS - {"cli"}))
def test_only_entry_points_print_through_the_cli_module(module):
    assert "cli" not in GRAPH[module]
