"""The conda and pip descriptions of the environment agree, and the pins are importable."""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, spec = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", line).groups()
            pins[name.lower().replace("_", "-")] = spec
    return pins


def test_environment_yml_delegates_to_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip_block = next(d["pip"] for d in deps if isinstance(d, dict))
    assert "-r requirements.txt" in pip_block and "-e ." in pip_block


def test_required_packages_are_pinned():
    pins = _requirements()
    for name in ["jupyter-book", "jupytext", "papermill", "torch", "open-clip-torch", "lightning",
                 "schedulefree", "seaborn", "ipywidgets"]:
        assert name in pins, f"{name} missing from requirements.txt"
    assert pins["jupyter-book"].startswith("==1."), "Jupyter Book v1 builds offline; v2 does not"


def test_installed_versions_match_exact_pins():
    for name, spec in _requirements().items():
        if spec.startswith("=="):
            assert md.version(name) == spec[2:], f"{name}: installed {md.version(name)} != {spec}"


def test_pyproject_runtime_dependencies_are_in_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    deps = [*project["dependencies"], *(dep for group in extras.values() for dep in group)]
    pins = _requirements()
    for dep in deps:
        name = re.match(r"[A-Za-z0-9_.\-]+", dep).group().lower().replace("_", "-")
        assert name in pins, f"{name} is a package dependency but not in requirements.txt"


def test_every_package_the_code_imports_is_declared():
    """`pip install .` (with the extras) gives every third-party package residual_core imports."""
    import ast
    import sys

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    declared = {re.match(r"[A-Za-z0-9_.\-]+", d).group().lower().replace("_", "-")
                for d in [*project["dependencies"], *(d for g in extras.values() for d in g)]}
    distributions = md.packages_distributions()
    missing = {}
    for path in (ROOT / "residual_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module
                and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "residual_core":
                    continue
                dists = {d.lower().replace("_", "-") for d in distributions.get(top, [top])}
                if not dists & declared:
                    missing[top] = str(path.relative_to(ROOT))
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
