"""Every run-file name is written once, in :mod:`filterlens.names` (issue 31, item 3): read from the source (AST).

The names: every public str constant of ``filterlens.names`` (an upper-case module attribute whose value is a
str: ``RESULTS = "results.json"``, ``SWEEP_JSON = "sweep/sweep.json"``, ``SEED_PREFIX = "seed-"``), read from the
module itself, so that a name added there is covered at once. No other module of ``src/filterlens`` (tests and
benchmarks are not in scope) may hold a string constant equal to one of them: it imports the name instead.

What counts and what does not:

* a string constant equal to a name, anywhere in the code (an argument, a tuple element, a default, a dict key or
  value, a comparison): ``rd.file("layers.csv")``, ``("model.pt", "train.json")``, ``p.name == "task.json"``;
* docstrings (of a module, class or function) are prose and are skipped; comments are not in the AST;
* a string that holds a name inside longer text is not the name: an error message ``"no results.json in ..."``,
  the literal parts of an f-string (``f"{run}/results.json"`` has the part ``"/results.json"``) and prefixes
  such as ``"filterlens-cache-"`` are exempt (a part that equals a name on its own still counts);
* a name that is a plain word (``str.isidentifier``: ``"cache"``, ``"heatmaps"``, ``"sweep"``) is also a word of
  other concepts (the folder kind ``cache``, the option ``heatmaps``, the stage ``sweep``), so it counts only
  where it builds or names a path: an operand of ``/``, an argument of ``Path(...)``, ``os.path.join(...)`` or
  ``.joinpath(...)``, or compared with a ``.name`` or a variable called ``name`` (alone or in a tuple:
  ``name in ("cache", "sweep")``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import filterlens.names as names_module

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "filterlens"
NAMES_FILE = PACKAGE / "names.py"

NAMES = {value: key for key, value in vars(names_module).items()
         if key.isupper() and not key.startswith("_") and isinstance(value, str)}
PATH_CALLS = {"Path", "PurePath", "PosixPath", "joinpath", "join"}


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes of a module, its classes and functions."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def _names_a_path(node: ast.AST, parent: ast.AST | None, parents: dict) -> bool:
    """Whether the constant ``node`` builds or names a path where it stands (for the plain-word names)."""
    if isinstance(parent, (ast.Tuple, ast.List, ast.Set)):  # name in ("cache", "sweep")
        node, parent = parent, parents.get(id(parent))
        if not isinstance(parent, ast.Compare):
            return False
    if isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Div):
        return True
    if isinstance(parent, ast.Call) and node in parent.args:
        func = parent.func
        called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        return called in PATH_CALLS
    if isinstance(parent, ast.Compare):
        others = [parent.left, *parent.comparators]
        return any((isinstance(o, ast.Attribute) and o.attr == "name") or (isinstance(o, ast.Name) and o.id == "name")
                   for o in others if o is not node)
    return False


def literal_names(path: Path) -> list[tuple[int, str]]:
    """(line, literal) of every string constant in ``path`` that is a run-file name of filterlens.names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = _docstrings(tree)
    parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
            continue
        if node.value not in NAMES:
            continue
        if node.value.isidentifier() and not _names_a_path(node, parents.get(id(node)), parents):
            continue
        found.append((node.lineno, node.value))
    return sorted(found)


def test_names_are_read_from_names_py():
    # the set is derived from names.py itself: a sanity check that it holds the run directory's files
    for name in ("config.json", "stages.json", "results.json", "layers.csv", "report.html", "sweep/sweep.json"):
        assert name in NAMES


def test_no_run_file_name_outside_names_py():
    flagged = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == NAMES_FILE:
            continue
        rel = path.relative_to(PACKAGE.parent).as_posix()
        flagged += [f"{rel}:{line}: {value!r} (names.{NAMES[value]})" for line, value in literal_names(path)]
    assert not flagged, (f"{len(flagged)} run-file name(s) written outside filterlens/names.py; import the "
                         "name from .names instead:\n" + "\n".join(flagged))


def test_the_check_sees_what_it_should(tmp_path):
    src = tmp_path / "m.py"
    src.write_text('"""Writes results.json."""\n'
                   'from pathlib import Path\n'
                   'def f(d, name):\n'
                   '    """results.json"""\n'
                   '    a = d / "results.json"\n'
                   '    b = f"{d}/results.json"\n'
                   '    c = "no results.json here"\n'
                   '    e = d / "heatmaps"\n'
                   '    g = {"heatmaps": 1}\n'
                   '    h = name == "cache"\n'
                   '    i = stage == "sweep"\n'
                   '    j = name in ("cache", "x") or stage in ("sweep",)\n'
                   '    return Path(d, "sweep"), ("model.pt", "train.json")\n', encoding="utf-8")
    assert literal_names(src) == [(5, "results.json"), (8, "heatmaps"), (10, "cache"), (12, "cache"),
                                  (13, "model.pt"), (13, "sweep"), (13, "train.json")]
