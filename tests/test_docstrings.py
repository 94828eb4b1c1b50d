"""Every public definition of the package has a docstring (AST; nothing is imported or run).

What counts as a public definition, module by module (every ``.py`` file under ``src/filterlens``):

- the module itself (``__init__`` and ``__main__`` included): its module docstring;
- a class or function at module level (also inside a module-level ``if`` or ``try``) whose name does
  not start with ``_``;
- in a public class, every method whose name does not start with ``_`` (so no dunder method and no
  private one), a property, classmethod or staticmethod included, and every public nested class with
  its own public methods. A property's setter or deleter (``@x.setter``) and an ``@overload`` stub are
  not definitions of their own: the getter or the implementation carries the docstring.

Not definitions: assignments (constants, a dataclass's fields, type aliases), functions nested inside
functions, the members of a private class. A private module (a file whose name starts with ``_``,
dunder files aside) would be skipped whole; the package has none.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "filterlens"


def _public(name: str) -> bool:
    return not name.startswith("_")


def _is_accessor_or_overload(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """``@x.setter`` / ``@x.deleter`` of a property, or a ``typing.overload`` stub."""
    for d in node.decorator_list:
        if isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter"):
            return True
        if (isinstance(d, ast.Name) and d.id == "overload") or (isinstance(d, ast.Attribute) and d.attr == "overload"):
            return True
    return False


def _top_level(body: list[ast.stmt]):
    """The module's statements, with those inside module-level ``if`` / ``try`` blocks."""
    for node in body:
        if isinstance(node, ast.If):
            yield from _top_level(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            yield from _top_level(node.body + node.orelse + node.finalbody
                                  + [s for h in node.handlers for s in h.body])
        else:
            yield node


def _class_missing(cls: ast.ClassDef, prefix: str) -> list[str]:
    qual = f"{prefix}{cls.name}"
    out = [qual] if ast.get_docstring(cls) is None else []
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _public(node.name):
            if not _is_accessor_or_overload(node) and ast.get_docstring(node) is None:
                out.append(f"{qual}.{node.name}")
        elif isinstance(node, ast.ClassDef) and _public(node.name):
            out += _class_missing(node, f"{qual}.")
    return out


def missing_docstrings(path: Path) -> list[str]:
    """``qualname`` of every public definition of the module at ``path`` without a docstring ('' for the module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = [""] if ast.get_docstring(tree) is None else []
    for node in _top_level(tree.body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _public(node.name):
            if not _is_accessor_or_overload(node) and ast.get_docstring(node) is None:
                out.append(node.name)
        elif isinstance(node, ast.ClassDef) and _public(node.name):
            out += _class_missing(node, "")
    return out


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> list[Path]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.stem.startswith("_") and not path.stem.startswith("__"):
            continue
        out.append(path)
    return out


def test_the_package_is_found():
    modules = _modules()
    assert len(modules) > 50, modules
    assert PACKAGE / "__init__.py" in modules


def test_every_public_definition_has_a_docstring():
    missing = [f"{_module_name(p)}:{q}" if q else f"{_module_name(p)} (module)"
               for p in _modules() for q in missing_docstrings(p)]
    assert not missing, f"{len(missing)} public definition(s) without a docstring:\n  " + "\n  ".join(missing)


def test_the_check_sees_what_it_should(tmp_path):
    """The rules of the module docstring, on a made-up module."""
    source = '''
class Public:
    """Documented."""
    x: int = 0
    def method(self): pass
    @property
    def prop(self): return 1
    @prop.setter
    def prop(self, v): pass
    def __repr__(self): return ""
    def _private(self): pass
    class Inner:
        def deep(self): pass
class _Private:
    def method(self): pass
def function():
    def nested(): pass
def _helper(): pass
if True:
    def conditional(): pass
CONSTANT = 1
'''
    path = tmp_path / "made_up.py"
    path.write_text(source)
    assert missing_docstrings(path) == ["", "Public.method", "Public.prop", "Public.Inner", "Public.Inner.deep",
                                        "function", "conditional"]
