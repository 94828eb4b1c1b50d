"""The HTML pages' templates: report.html and compare.html are rendered by Jinja2 from the package files in
``report/templates/`` (``report.html.j2``, ``compare.html.j2``, their shared ``base.html.j2`` and
``macros.html.j2``; the style sheets and scripts as ``.css`` and ``.js`` files).

The Python side computes the values (tables as text cells, figures as data URIs, the explorer's data) and the
templates lay them out. Autoescaping is on: every value a page shows (label, layer and run names, notes,
settings) is escaped by the engine. The only text marked safe is filterlens' own: a style sheet or script of
``report/templates/`` inlined by :func:`asset` (every page stays one self-contained file) and the explorer's
JSON, written by Jinja2's ``tojson`` (``<``, ``>``, ``&`` and ``'`` as ``\\u`` escapes).
"""
from __future__ import annotations

import base64
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..claims import general_rule, metric_label

# the columns a table aligns left (text); the others are numbers, aligned right
LEFT = ("layer", "clusters", "labels", "metric", "kind", "preferred_label")


def asset(name: str):
    """The text of ``report/templates/NAME`` (a style sheet or a script), marked safe to inline into a page: a file
    of the package, never a value of a run."""
    from markupsafe import Markup

    return Markup((resources.files(__package__) / "templates" / name).read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def environment():
    """The Jinja2 environment of the pages: templates from the package, autoescape on, an undefined name an error,
    ``tojson`` compact (the explorer's data, thousands of rows, stays small; its keys keep their order)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("filterlens.report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.policies["json.dumps_kwargs"] = {"separators": (",", ":")}
    env.globals["asset"] = asset
    return env


def render(template: str, **values) -> str:
    """The page ``template`` (a file of ``report/templates/``) filled with ``values``."""
    return environment().get_template(template).render(**values)


def cell(v) -> str:
    """A table cell's text: numbers to four significant digits (integers whole), nan and inf named, empty for
    None; the template escapes it."""
    if v is None or v == "":
        return ""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if isinstance(v, str) and not any(c in v for c in ".eE") and v.lstrip("-").isdigit():
        return v
    if f != f:
        return "nan"
    if f in (float("inf"), float("-inf")):
        return "inf" if f > 0 else "-inf"
    if float(f).is_integer() and abs(f) < 1e9:
        return str(int(f))
    return f"{f:.4g}"


def table(rows: list[dict], columns: list[str] | None = None, left: tuple = LEFT) -> dict:
    """A table for the templates' ``table`` macro: its columns (default: the first row's keys), those aligned
    left, and one list of cell texts (:func:`cell`) per row. No rows: the page says ``(none)``."""
    columns = list(columns or (rows[0].keys() if rows else []))
    return {"columns": columns, "left": [c for c in columns if c in left],
            "rows": [[cell(r.get(c)) for c in columns] for r in rows]}


def claims(rows: list[dict], columns: list[str]) -> dict:
    """The claims for the templates' ``claims`` macro: their table, then each claim's text and each rule once."""
    rules = list(dict.fromkeys(general_rule(str(r.get("rule", ""))) for r in rows))
    text = {r.get("claim"): r.get("text", "") for r in rows}
    rows = [{**r, "metric": metric_label(r, rows)} if r.get("metric") is not None else r for r in rows]
    return {"table": table(rows, columns, left=("run", "metric", "statistic", "verdict", "detail")),
            "texts": sorted(text.items()), "rules": [r for r in rules if r]}


def image(path: Path, alt: str) -> dict:
    """A PNG figure for the templates' ``img`` macro: its alt text and its data URI (the page embeds it)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return {"alt": alt, "src": f"data:image/png;base64,{data}"}
