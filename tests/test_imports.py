"""Imports go downwards: the layer package (`collab_keras`: layers, ops,
initializers, reparametrization, analysis) is the bottom floor, the model
zoo (`collab_keras.models`, the checkout's `models/`) the middle one and the
training package (`collab_keras.training`, `training/`) the top one.

Two checks:
- each subpackage imports alone in a fresh process in which the floors above
  it cannot be imported at all (an import hook raises);
- the import statements of every module, those inside functions included,
  form no circle and point at no upper floor (read from the source, so that
  an upward import at call time is caught too).
"""

import ast
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Source folder -> package name.
_FOLDERS = {
    "collab_keras": "collab_keras",
    "models": "collab_keras.models",
    "training": "collab_keras.training",
}
_UPPER = {
    "collab_keras": ("collab_keras.models", "collab_keras.training"),
    "collab_keras.models": ("collab_keras.training",),
    "collab_keras.training": (),
}
# Upward imports at call time that are part of the design, with the reason.
_ALLOWED_UPWARD = {
    # reparametrize(keras-hub model) converts it into its zoo counterpart
    # first, when the zoo can be imported (see `_zoo_counterpart`).
    ("collab_keras.reparametrization.reparametrize", "collab_keras.models"),
}


def _floor(module):
    for package in ("collab_keras.training", "collab_keras.models"):
        if module == package or module.startswith(package + "."):
            return package
    return "collab_keras"


_SUBPACKAGES = [
    "collab_keras",
    "collab_keras.layers",
    "collab_keras.ops",
    "collab_keras.initializers",
    "collab_keras.reparametrization",
    "collab_keras.analysis",
    "collab_keras.models",
]

_BLOCKING_SCRIPT = """
import importlib.abc
import sys

BLOCKED = {blocked!r}


class UpperFloors(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == p or name.startswith(p + ".") for p in BLOCKED):
            raise ImportError(f"upper floor imported: {{name}}")
        return None


sys.meta_path.insert(0, UpperFloors())
import {package}
loaded = [m for m in sys.modules if any(m == p or m.startswith(p + ".")
          for p in BLOCKED)]
assert not loaded, loaded
"""


@pytest.mark.parametrize(
    "package",
    _SUBPACKAGES,
)
def test_subpackage_imports_alone_with_upper_floors_blocked(package):
    blocked = _UPPER[_floor(package)]
    script = _BLOCKING_SCRIPT.format(blocked=blocked, package=package)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _modules():
    """Module name -> source path, for the three floors."""
    modules = {}
    for folder, package in _FOLDERS.items():
        base = os.path.join(_ROOT, folder)
        for directory, _, files in os.walk(base):
            if "__pycache__" in directory:
                continue
            relative = os.path.relpath(directory, base)
            parts = [] if relative == "." else relative.split(os.sep)
            for name in files:
                if not name.endswith(".py"):
                    continue
                stem = name[:-3]
                module = ".".join(
                    [package, *parts] + ([] if stem == "__init__" else [stem])
                )
                modules[module] = os.path.join(directory, name)
    return modules


def _edges(modules):
    """`(importer, imported, at_module_level)` for imports between the
    project's modules."""
    edges = set()
    for module, path in modules.items():
        tree = ast.parse(open(path, encoding="utf-8").read())
        is_package = path.endswith("__init__.py")
        package = module if is_package else module.rpartition(".")[0]
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [
                    f"{base}.{alias.name}"
                    if f"{base}.{alias.name}" in modules
                    else base
                    for alias in node.names
                ]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != module:
                    edges.add((module, target, id(node) in top_level))
    return edges


def test_import_statements_point_downwards_and_form_no_circle():
    modules = _modules()
    edges = _edges(modules)
    assert len(modules) > 30 and len(edges) > 30  # the parse found them
    upward = sorted(
        (importer, imported, "module level" if top else "inside a function")
        for importer, imported, top in edges
        if _floor(imported) in _UPPER[_floor(importer)]
        and (importer, _floor(imported)) not in _ALLOWED_UPWARD
        and importer != "collab_keras"  # checked below
    )
    assert not upward, upward

    # Circles, the upward allowances aside.
    graph = {}
    for importer, imported, _ in edges:
        if (importer, _floor(imported)) not in _ALLOWED_UPWARD:
            graph.setdefault(importer, set()).add(imported)
    cycles = []

    def visit(node, stack, done):
        for nxt in graph.get(node, ()):
            if nxt in stack:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, stack + [nxt], done)
        done.add(node)

    done = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module], done)
    assert not cycles, cycles


def test_the_layer_package_init_imports_no_upper_floor():
    edges = _edges(_modules())
    upward = [e for e in edges if e[0] == "collab_keras" and e[1] != "collab_keras"
              and _floor(e[1]) != "collab_keras"]
    assert not upward, upward
