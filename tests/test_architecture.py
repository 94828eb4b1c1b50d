"""The shape of the package, read from its source (AST; nothing is imported or run).

Imports run downhill only: every module belongs to one floor of ``FLOORS`` (the layer order,
written here once) and may import modules of its own floor or of lower floors, never of a
higher one; inside a subpackage the same holds for its own floors (``SUBFLOORS``). No import
circle anywhere. Imports inside functions count too: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "filterlens"

# The layer order, from the ground up. A floor may import from itself and from the floors below.
FLOORS = [
    ["errors", "version", "names", "checks"],
    ["distributed"],
    ["files", "config", "progress", "utils", "hooks", "folders", "precision", "fingerprint", "output", "records",
     "memory"],
    ["rundir", "glyphs"],
    ["data", "models", "inputs", "loaders"],
    ["capture", "engine"],
    ["probes", "sfp", "probe_results", "claims"],
    ["train"],
    ["report"],
    ["analysis", "results"],
    ["afcc"],
    ["sweep"],
    ["pipeline"],
    ["demo"],
    ["cli", "__main__"],
]
# Inside a subpackage: its modules from the ground up (its __init__, the face, is on top).
SUBFLOORS = {
    "models": [["vgg", "resnet_cifar", "vit_tiny", "user"], ["units", "nodes"], ["families"], ["layers"],
               ["build", "checkpoints", "contract"]],
    "afcc": [["masks"], ["diluted"], ["retrain", "cost"], ["removal"], ["export"], ["result"], ["apply"], ["stage"]],
    "report": [["plots", "pages"], ["explorer"], ["html", "compare"]],
    "sfp": [["matrices"], ["clusters"], ["stats"], ["layer"], ["bootstrap"]],
}


def _modules() -> dict[str, Path]:
    """Dotted name (relative to the package, '' for its __init__) -> file."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, is_package: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The package modules a node imports (dotted, relative to the package)."""
    targets = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == "filterlens" or alias.name.startswith("filterlens."):
                targets.append(alias.name.removeprefix("filterlens").lstrip("."))
        return targets
    if node.level:
        here = module.split(".") if module else []
        base = here if is_package else here[:-1]
        up = node.level - 1
        if up > len(base):
            raise AssertionError(f"{module}: relative import above the package")
        base = base[: len(base) - up]
        stem = ".".join(base + ([node.module] if node.module else []))
    elif node.module and (node.module == "filterlens" or node.module.startswith("filterlens.")):
        stem = node.module.removeprefix("filterlens").lstrip(".")
    else:
        return []
    for alias in node.names:  # `from . import sfp` imports the module sfp, not the package
        sub = f"{stem}.{alias.name}" if stem else alias.name
        targets.append(sub if sub in MODULES else stem)
    return targets


def _imports() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in _resolve(module, path.name == "__init__.py", node):
                    while t not in MODULES and "." in t:
                        t = t.rsplit(".", 1)[0]
                    if t in MODULES and t != module:
                        deps.add(t)
        graph[module] = deps
    return graph


def _floor(module: str) -> tuple[int, int]:
    """(floor, subfloor) of a module; the package's own __init__ stands above every floor."""
    if module == "":
        return len(FLOORS), 0
    top, _, rest = module.partition(".")
    floor = next((i for i, names in enumerate(FLOORS) if top in names), None)
    if floor is None:
        raise AssertionError(f"module filterlens.{module} is on no floor of FLOORS; add it where it belongs")
    if not rest and top not in SUBFLOORS:
        return floor, 0
    subs = SUBFLOORS.get(top)
    if subs is None:
        raise AssertionError(f"filterlens.{top} is a subpackage without SUBFLOORS")
    if not rest:  # the subpackage's face
        return floor, len(subs)
    sub = next((i for i, names in enumerate(subs) if rest.split(".")[0] in names), None)
    if sub is None:
        raise AssertionError(f"module filterlens.{module} is on no floor of SUBFLOORS['{top}']")
    return floor, sub


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, or None (depth-first search with colours)."""
    colour = dict.fromkeys(graph, 0)
    stack: list[str] = []

    def visit(m):
        colour[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if colour[d] == 1:
                return stack[stack.index(d):] + [d]
            if colour[d] == 0:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        colour[m] = 2
        return None

    for m in sorted(graph):
        if colour[m] == 0:
            found = visit(m)
            if found:
                return found
    return None


def _name(m: str) -> str:
    return "filterlens" + (f".{m}" if m else "")


def test_every_module_is_on_a_floor():
    for module in MODULES:
        _floor(module)


def test_no_import_circle():
    cycle = _cycle(_imports())
    assert cycle is None, "import circle: " + " -> ".join(_name(m) for m in cycle)


def test_imports_run_downhill():
    uphill = []
    for module, deps in _imports().items():
        here = _floor(module)
        for dep in deps:
            there = _floor(dep)
            same_subpackage = (module.partition(".")[0] == dep.partition(".")[0]
                               and module.partition(".")[0] in SUBFLOORS)
            if (there[0] > here[0]) or (same_subpackage and there[0] == here[0] and there[1] > here[1]):
                uphill.append(f"{_name(module)} -> {_name(dep)}")
    assert not uphill, "imports from a lower floor to a higher one: " + "; ".join(sorted(uphill))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_700_lines(module):
    lines = MODULES[module].read_text(encoding="utf-8").count("\n")
    assert lines <= 700, f"{_name(module)} has {lines} lines; split it by concern"


def test_the_checker_sees_uphill_imports_and_circles(tmp_path):
    """The helpers catch what they should (so a pass means something)."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    assert _floor("errors")[0] < _floor("cli")[0]
    node = ast.parse("from . import sfp").body[0]
    assert _resolve("analysis", False, node) == ["sfp"]
    node = ast.parse("from ..errors import FilterlensError").body[0]
    assert _resolve("afcc.masks", False, node) == ["errors"]
