"""The package's shape: its layers, read from the source with ast (a lazy import inside a function
counts as much as one at the top).

    entry points   run, report, train, dashboard (python -m hpo.X): may import anything
    runs/          a run of hpo.run: its plan, lifecycle, workers, what it prints
    cli            what the entry points share (arguments, one-line errors, log lines)
    search/        Optuna: studies, the objective, retries, stopping rules
    analysis/      what a study found, from its trials; never opens a store
    training/      the loop, data, nets; nothing of Optuna
    storage/       the store; nothing of training
    errors, config, records   the base every layer may import

Imports only point down this list, never in a cycle; only the entry points and runs/ print
through hpo.cli.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hpo"
BASE = {"errors", "config", "records"}
ENTRY_POINTS = {"run", "report", "train", "dashboard"}
# What each layer may import of hpo, besides itself.
ALLOWED = {
    "errors": set(),
    "config": {"errors"},
    "records": set(),
    "storage": BASE,
    "training": BASE,
    "analysis": BASE,
    "search": BASE | {"storage", "training"},
    "cli": BASE | {"storage"},
    "runs": BASE | {"storage", "training", "search", "analysis", "cli"},
}


def module_name(path: Path) -> str:
    """``runs.workers`` for hpo/runs/workers.py, ``run`` for hpo/run.py."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}


def resolve(dotted: str) -> str | None:
    """The hpo module a dotted name (without the leading ``hpo.``) is, or None for a package."""
    return dotted if dotted in MODULES else None


def tree(module: str) -> ast.AST:
    return ast.parse(MODULES[module].read_text())


def hpo_imports(module: str) -> set[str]:
    """The hpo modules a module imports, anywhere in it."""
    found = set()
    for node in ast.walk(tree(module)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "hpo":
            base = node.module.partition(".")[2]
            names = {f"{base}.{a.name}".lstrip(".") for a in node.names}
            submodules = {n for n in names if resolve(n)}
            found |= submodules if submodules else {base}
        elif isinstance(node, ast.Import):
            found |= {a.name.partition(".")[2] for a in node.names if a.name.startswith("hpo.")}
    return {m for m in found if m} - {module}


def third_party(module: str) -> set[str]:
    """The top-level names of the other packages a module imports."""
    found = set()
    for node in ast.walk(tree(module)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
    return found


def layer(module: str) -> str:
    return module.split(".")[0]


GRAPH = {m: hpo_imports(m) for m in MODULES}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a path that starts and ends at the same module; None when there is none."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            found = visit(nxt, path + [node])
            if found:
                return found
        done.add(node)
        return None

    return next((c for c in (visit(n, []) for n in sorted(graph)) if c), None)


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that point up the layers (or across to a layer not below)."""
    out = []
    for module, imported in sorted(graph.items()):
        if layer(module) in ENTRY_POINTS:
            continue
        allowed = ALLOWED[layer(module)] | {layer(module)}
        out += [f"{module} imports {m}" for m in sorted(imported) if layer(m) not in allowed]
    return out


def test_every_module_belongs_to_a_layer():
    assert {layer(m) for m in MODULES} <= set(ALLOWED) | ENTRY_POINTS


def test_the_entry_points_are_where_python_m_finds_them():
    assert ENTRY_POINTS <= set(MODULES)


def test_the_import_graph_has_no_cycle():
    assert cycle(GRAPH) is None, " -> ".join(cycle(GRAPH))


def test_the_cycle_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_imports_point_down_the_layers():
    assert violations(GRAPH) == []


def test_the_layer_check_finds_an_import_up_the_layers():
    assert violations({"training.loop": {"search.objective", "config"}, "run": {"runs.workers"}}) == [
        "training.loop imports search.objective"
    ]
    assert violations({"analysis.findings": {"storage.store"}, "storage.store": {"cli"}}) == [
        "analysis.findings imports storage.store",
        "storage.store imports cli",
    ]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) == "training"))
def test_training_knows_nothing_of_optuna(module):
    assert "optuna" not in third_party(module)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) == "storage"))
def test_storage_knows_nothing_of_training(module):
    assert not {"torch", "torchvision"} & third_party(module)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) == "analysis"))
def test_analysis_never_opens_a_store(module):
    """It reads the trials it is given; an Optuna study it builds is in memory (no storage)."""
    for node in ast.walk(tree(module)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            assert name not in ("load_study", "get_storage", "RDBStorage", "JournalStorage"), f"{module} calls {name}"
            if name == "create_study":
                assert "storage" not in {k.arg for k in node.keywords}, f"{module} creates a stored study"


def test_config_imports_nothing_of_hpo_but_its_errors():
    assert GRAPH["config"] <= {"errors"}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) not in ENTRY_POINTS | {"runs", "cli"}))
def test_only_entry_points_and_runs_print_through_the_cli_module(module):
    assert "cli" not in GRAPH[module]


def test_the_report_and_the_dashboard_load_no_torch():
    """They only read a store: importing torch and torchvision would cost every report seconds."""
    code = "import sys, hpo.report, hpo.dashboard; print(sorted({'torch', 'torchvision'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
