"""The package's layers import one way only, and no module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "residual_core"

# Each layer and the layers it may import (its own included). The tutorial's world, model and
# tokenizer are assets at the bottom; its training script is a program on top, like the runner.
ALLOWED = {
    "core": {"core"},
    "tutorial": {"tutorial"},
    "models": {"models", "core", "tutorial"},
    "data": {"data", "core", "tutorial"},
    "analysis": {"analysis", "data", "models", "core", "tutorial"},
    "plots": {"plots", "analysis", "core"},
    "runner": {"runner", "plots", "analysis", "data", "models", "core", "tutorial"},
    "scripts": {"runner", "plots", "analysis", "data", "models", "core", "tutorial"},
    "facade": set(),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "facade"
    if parts[1:] == ["tutorial", "train"]:
        return "scripts"
    return parts[1]


def imports(path: Path) -> set[str]:
    """Every residual_core module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("residual_core")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "residual_core" or node.module.startswith("residual_core."):
                # `from package import module` imports that module; `from module import name`
                # the module (resolved in graph()).
                found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    out = {}
    for name, path in modules.items():
        targets = set()
        for target in imports(path):
            targets.add(target if target in modules else target.rpartition(".")[0])
        out[name] = {t for t in targets if t in modules and t != name}
    return out


def test_every_import_goes_down_the_layers():
    wrong = []
    for module, targets in graph().items():
        allowed = ALLOWED[layer_of(module)]
        for target in sorted(targets):
            if layer_of(target) not in allowed and not target.endswith("__init__"):
                wrong.append(f"{module} ({layer_of(module)}) imports {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_facade_is_lazy():
    import subprocess
    import sys

    code = ("import sys, residual_core as rc; "
            "heavy = [m for m in ('torch', 'open_clip', 'pandas') if m in sys.modules]; "
            "print(heavy); rc.Units; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PACKAGE.parent, check=True).stdout.split()
    assert out == ["[]", "True"], out
