"""Reading a run directory back: ``filterlens.load_run(path)``.

``results.json`` follows the JSON Schema shipped with the package (``results.schema.json``,
:func:`schema`); its tables are also CSV files that load straight into pandas.
"""
from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

from .errors import FilterlensError

TABLES = {"layers": "layers.csv", "filters": "filters.csv", "thresholds": "thresholds.csv",
          "bootstrap": "bootstrap.csv", "afcc": "afcc.csv", "afcc_thresholds": "afcc_thresholds.csv",
          "afcc_pruning": "afcc_pruning.csv", "train_log": "train_log.csv", "sweep": "sweep/sweep.csv"}


def schema() -> dict:
    """The JSON Schema of ``results.json``."""
    return json.loads(resources.files("filterlens").joinpath("results.schema.json").read_text())


def _convert(v: str):
    if v == "":
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


class Run:
    """A finished run directory: ``results`` (the parsed results.json), ``config``, and its tables.

    ``run.table("layers")`` is a list of dicts (numbers converted); ``run.frame("layers")`` the same as a
    pandas DataFrame (pandas needed); ``run.tables()`` lists those present.
    """

    def __init__(self, path):
        self.path = Path(path)
        f = self.path / "results.json"
        if not f.exists():
            raise FilterlensError(f"'{self.path}' holds no results.json; run filterlens analyze or filterlens run first")
        try:
            self.results = json.loads(f.read_text())
        except ValueError:
            raise FilterlensError(f"'{f}' is not valid JSON (damaged?)") from None
        if self.results.get("version") != 1:
            raise FilterlensError(f"'{f}' has format version {self.results.get('version')!r}; this filterlens reads 1")
        self.config = self.results.get("config", {})

    def tables(self) -> list[str]:
        return [name for name, file in TABLES.items() if (self.path / file).exists()]

    def table(self, name: str) -> list[dict]:
        if name not in TABLES:
            raise FilterlensError(f"unknown table '{name}'; valid: {', '.join(TABLES)}")
        p = self.path / TABLES[name]
        if not p.exists():
            raise FilterlensError(f"this run has no {name} table ({p.name}); present: {', '.join(self.tables())}")
        with open(p, newline="") as fh:
            return [{k: _convert(v) for k, v in row.items()} for row in csv.DictReader(fh)]

    def frame(self, name: str = "layers"):
        import pandas as pd

        return pd.read_csv(self.path / TABLES[name])

    @property
    def layers(self) -> list[dict]:
        return self.table("layers")

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, tables={self.tables()})"


def load_run(path) -> Run:
    """Open a run directory written by ``filterlens analyze`` / ``filterlens run``."""
    return Run(path)
