"""The package's layers: every import (module-level or inside a function) runs down the stack or stays inside
its own folder, and no chain of imports comes back to where it started."""

from __future__ import annotations

import ast
from pathlib import Path

import kinherit

PACKAGE = Path(kinherit.__file__).parent
# bottom to top; a module may import its own folder and the folders below it
LAYERS = ("core", "data", "models", "inheritance", "training", "commands", "experiment")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """The layer index of a kinherit module: its first folder's place in LAYERS (top-level modules above all)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The kinherit modules a file imports anywhere in it: `from PACKAGE import name` counts the submodule `name`
    where there is one, else the package (whose names it reads)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(paths)) - {name} for name, path in paths.items()}


def test_every_module_is_in_a_layer_folder() -> None:
    loose = [name for name in import_graph() if name.count(".") == 1 and layer(name) == len(LAYERS)
             and name.split(".")[1] not in {"cli", "__main__"}]
    assert loose == []


def test_no_import_runs_upward() -> None:
    upward = sorted(f"{name} -> {target}" for name, targets in import_graph().items() for target in targets
                    if layer(target) > layer(name))
    assert upward == []


def test_no_import_cycle() -> None:
    graph = import_graph()
    done: set[str] = set()
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycles.append(" -> ".join(path[path.index(name):] + [name]))
            return
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert cycles == []


def test_the_checks_see_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "example.py"
    source.write_text("def f():\n    from kinherit.experiment import runner\n    import kinherit.core.errors\n"
                      "    from kinherit.data import load_corpus\n")
    assert imports_of(source, {"kinherit.data", "kinherit.experiment", "kinherit.experiment.runner",
                               "kinherit.core.errors"}) == {"kinherit.experiment.runner", "kinherit.core.errors",
                                                            "kinherit.data"}
    assert layer("kinherit.experiment.runner") > layer("kinherit.commands.pretrain") > layer("kinherit.core.errors")
