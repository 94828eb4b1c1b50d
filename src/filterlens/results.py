"""The checked files of a run directory (:class:`RunFiles`), read back by ``filterlens.load_run(path)``, which
returns the run's :class:`~filterlens.analysis.Analysis`; one unit's view (:class:`UnitView`).

``results.json`` follows the JSON Schema shipped with the package (``results.schema.json``,
:func:`schema`); its tables are also CSV files that load straight into pandas.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .config import DEFAULT_THRESHOLD
from .errors import FilterlensError
from .names import TABLES


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


class RunFiles:
    """The files of a finished run directory: ``results`` (the parsed results.json), ``config`` (its settings, a
    dict) and its tables (``table(name)``: a list of dicts, numbers converted; ``tables()``: those present).
    Every file is read through the checks of ``filterlens report``: a file whose content changed since its stage
    recorded it (``stages.json``), or of the wrong shape, is refused with one line (FilterlensError). Readers use
    ``filterlens.load_run``, which builds the run's Analysis on this.
    """

    def __init__(self, path):
        from .checks import path_arg
        from .rundir import RunDir

        self.path = path_arg(path, "run directory")
        if not self.path.is_dir():
            what = "does not exist" if not self.path.exists() else "is not a directory"
            raise FilterlensError(f"run directory '{self.path}' {what}; give a run directory written by filterlens "
                                  "analyze or filterlens run")
        self._rd = RunDir(self.path)
        self.results = self._rd.read_results()
        self.config = self.results.get("config", {})

    def tables(self) -> list[str]:
        """The names of the tables (``layers``, ``filters``, ``afcc``, ...) whose files this run has."""
        return [name for name, file in TABLES.items() if (self.path / file).exists()]

    def read_tables(self) -> dict[str, list[dict]]:
        """Every table file the run has, read once through :meth:`table`'s checks: the checksum its stage recorded
        and the rows' shape (one line when a file changed or is damaged)."""
        return {name: self.table(name) for name in self.tables()}

    def _table_file(self, name) -> Path:
        """The checked file of table ``name``: a known table, present, unchanged since its stage wrote it."""
        if not isinstance(name, str) or name not in TABLES:
            raise FilterlensError(f"unknown table {name!r}; valid: {', '.join(TABLES)}")
        p = self.path / TABLES[name]
        if not p.is_file():
            raise FilterlensError(f"this run has no {name} table ({TABLES[name]}); present: {', '.join(self.tables())}")
        self._rd.verify(TABLES[name])
        return p

    def table(self, name: str) -> list[dict]:
        """The table ``name`` as a list of dicts, one per row, numbers converted (an empty cell: None); a
        changed or damaged file is refused in one line."""
        p = self._table_file(name)
        try:
            with open(p, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                rows = list(reader)
        except (UnicodeDecodeError, csv.Error) as exc:
            raise FilterlensError(f"'{p}' is damaged: not a CSV table ({type(exc).__name__})") from None
        if not reader.fieldnames:
            raise FilterlensError(f"'{p}' is damaged: it has no header row")
        for i, row in enumerate(rows, start=2):
            if None in row or None in row.values():
                raise FilterlensError(f"'{p}' is damaged: line {i} has {'more' if None in row else 'fewer'} fields "
                                      "than its header")
        return [{k: _convert(v) for k, v in row.items()} for row in rows]

    def __repr__(self) -> str:
        return f"RunFiles({str(self.path)!r}, tables={self.tables()})"


@dataclass
class UnitView:
    """What :meth:`Analysis.unit <filterlens.analysis.Analysis.unit>` returns: one unit's matrix, clusters and top
    test images."""

    layer: str
    unit: int
    unit_kind: str  # "filter", "head" or "node"
    matrix: Any  # (L, L) raw: rows input label, columns output unit
    normalised: Any  # (L, L)
    binary: Any  # (L, L) bool
    clusters: list  # label indices per cluster
    top_images: list  # per cluster, test indices (into the analysed test split), strongest first
    cluster_labels: list  # the clusters' label names, flattened in cluster order
    noise: float
    threshold: float = DEFAULT_THRESHOLD
    normalise: str = "max"
    label_names: list | None = None

    def plot(self):
        """The unit's matrix, normalised and binarised, its clusters as blocks (a matplotlib figure)."""
        from .report.plots import filter_matrix_figure

        return filter_matrix_figure(self.matrix, self.threshold, self.clusters, self.label_names,
                                    f"{self.layer} {self.unit_kind} {self.unit}", self.normalise)

    def _repr_html_(self) -> str:
        import html

        names = self.label_names or [str(i) for i in range(len(self.matrix))]
        rows = "".join(f"<tr><td>{k + 1}</td><td>{html.escape(' + '.join(names[i] for i in c))}</td>"
                       f"<td>{', '.join(map(str, t))}</td></tr>" for k, (c, t) in enumerate(zip(self.clusters,
                                                                                            self.top_images)))
        return (f"<p><b>{html.escape(self.layer)}</b> {self.unit_kind} {self.unit}: {len(self.clusters)} cluster(s), "
                f"noise {self.noise:g} (threshold {self.threshold:g}, {self.normalise})</p><table><thead><tr>"
                f"<th>cluster</th><th>labels</th><th>top test images</th></tr></thead><tbody>{rows}</tbody></table>")


def unit_view(layer: str, index, unit_kind: str, weight, means, top, threshold: float, normalise: str, k: int,
              label_names: list) -> UnitView:
    """Unit ``index`` of ``layer`` from its layer's probe weight and label means (:func:`sfp.analyze_unit`)."""
    import numpy as np

    from . import sfp

    units = int(weight.shape[1])
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise FilterlensError(f"unit index {index!r} is a {type(index).__name__}; give an integer 0..{units - 1}")
    index = int(index)
    if not 0 <= index < units:
        raise FilterlensError(f"unit {index} of layer '{layer}' is out of range; valid: 0..{units - 1}")
    u = sfp.analyze_unit(weight, means, index, threshold, normalise, top, k)
    names = list(label_names) or [str(i) for i in range(weight.shape[0])]
    return UnitView(layer, index, unit_kind, u.matrix, u.normalised, u.binary, u.clusters,
                    u.top or [[] for _ in u.clusters], [names[i] for c in u.clusters for i in c], float(u.noise),
                    threshold, normalise, names)
