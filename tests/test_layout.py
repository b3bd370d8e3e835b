"""The layout's dependency rule, read from the source with `ast` (every import, also those inside functions).

    __main__ -> commands -> {tune, train, eval, data};  tune -> train;  train -> eval;
    {train, eval, tune} -> runtime -> {model, data, config}
Never: anything -> commands but the `python -m lam` entry point; eval -> train; model -> anything
but model, config and errors; data -> model, train, eval, tune or runtime. Every module counts,
`__main__.py` included. And no import cycle between modules at all, so no import is hidden in a
function to dodge one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lam"

# What each part of lam/ may import, besides itself. recipes, config and errors are the torch-free
# base every part may use; only the commands read flags, and only the entry point imports them.
BASE = {"lam.config", "lam.errors"}
ALLOWED = {
    "lam.errors": set(),
    "lam.config": {"lam.errors"},
    "lam.recipes": BASE,
    "lam.model": BASE,
    "lam.data": BASE,
    "lam.runtime": BASE | {"lam.model", "lam.data"},
    "lam.eval": BASE | {"lam.runtime", "lam.model", "lam.data"},
    "lam.train": BASE | {"lam.recipes", "lam.runtime", "lam.model", "lam.data", "lam.eval"},
    "lam.tune": BASE | {"lam.recipes", "lam.runtime", "lam.model", "lam.data", "lam.train"},
    "lam.commands": BASE | {"lam.recipes", "lam.runtime", "lam.data", "lam.eval", "lam.train", "lam.tune"},
    "lam.__main__": {"lam.commands"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every `lam...` module that `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from lam.model import quantize`
    return {name for name in found if name == "lam" or name.startswith("lam.")}


def modules() -> dict[str, set[str]]:
    """Module -> the lam modules it imports (only names that are modules: files or packages)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path) if m in files} - {name} for name, path in files.items()}


def part(module: str) -> str:
    """lam.model.quantize.vq -> lam.model; lam.config -> lam.config."""
    return ".".join(module.split(".")[:2])


def test_every_import_follows_the_dependency_rule():
    wrong = [f"{m} imports {dep}" for m, deps in sorted(modules().items()) for dep in sorted(deps)
             if part(dep) != part(m) and part(dep) not in ALLOWED[part(m)]]
    assert wrong == []


def test_every_part_of_the_package_has_a_rule():
    assert {part(m) for m in modules()} - {"lam"} == set(ALLOWED)


def test_no_import_cycle_between_modules():
    graph = modules()
    for name, deps in graph.items():  # a package's __init__ may hand on its own modules' names
        if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists():
            graph[name] = {d for d in deps if not d.startswith(name + ".")}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


@pytest.mark.parametrize("module", ["lam.config", "lam.recipes", "lam.commands.flags", "lam.commands"])
def test_the_config_layer_does_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_no_module_is_over_400_lines():
    assert {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400} == {}
