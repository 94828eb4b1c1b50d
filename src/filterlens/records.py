"""Typed rows of filterlens' tables: a layer, a unit, a claim, an AFCC masked tensor.

Each row is a frozen dataclass whose fields are the columns of its file (layers.csv, filters.csv, the
``claims`` of results.json, afcc.csv), documented here once. A row reads as an attribute
(``row.accuracy``) and, so that it drops into pandas, ``csv`` and JSON like the dicts it replaces, as a
read-only mapping (``row["accuracy"]``, ``dict(row)``, ``{**row}``). A :class:`Table` is a list of rows of
one kind with :meth:`Table.to_frame`.

Rows are built from dicts with :meth:`Record.from_dict`, which refuses a key the record does not know
(a typo or a file of another kind) in one line; a missing optional field is None.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from .errors import FilterlensError

R = TypeVar("R", bound="Record")


class Record(Mapping):
    """The base of every row: attribute and read-only mapping access, :meth:`from_dict` and :meth:`to_dict`."""

    row_kind: ClassVar[str] = "row"
    required: ClassVar[tuple[str, ...]] = ()
    blank_is_empty: ClassVar[tuple[str, ...]] = ()  # text fields where a blank CSV cell (None) is "", not missing
    nan_is_none: ClassVar[tuple[str, ...]] = ()  # fields where NaN means undefined, stored as JSON null

    @classmethod
    def columns(cls) -> list[str]:
        """The row's fields in file order (its CSV columns)."""
        return [f.name for f in fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[R], row: Mapping[str, Any]) -> R:
        """The record of ``row`` (a dict read from a file or built by a stage); an unknown key or a missing
        required one is refused in one line."""
        if isinstance(row, cls):
            return row
        if not isinstance(row, Mapping):
            raise FilterlensError(f"a {cls.row_kind} row must be a mapping of column to value, not a "
                                  f"{type(row).__name__}")
        known = cls.columns()
        extra = [k for k in row if k not in known]
        if extra:
            raise FilterlensError(f"a {cls.row_kind} row has no column {extra[0]!r}; valid: {', '.join(known)}")
        missing = [k for k in cls.required if k not in row]
        if missing:
            raise FilterlensError(f"a {cls.row_kind} row lacks {', '.join(missing)}")
        values = {k: _typed(row.get(k), f.type, k in cls.blank_is_empty)
                  for k, f in zip(known, fields(cls))}  # type: ignore[arg-type]
        for k in cls.nan_is_none:
            if isinstance(values[k], float) and math.isnan(values[k]):
                values[k] = None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The row as a plain dict (JSON-ready), every field included."""
        return {k: getattr(self, k) for k in self.columns()}

    def __getitem__(self, key: str) -> Any:
        if isinstance(key, str) and key in self.columns():
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns())

    def __len__(self) -> int:
        return len(self.columns())


def _typed(value: Any, annotation: Any, blank_is_empty: bool) -> Any:
    """A text field's value as text: a CSV reader turns a label named ``2`` or a layer named ``0`` into a number,
    and the record gives it back as the name it is."""
    if not str(annotation).startswith("str"):
        return value
    if value is None:
        return "" if blank_is_empty else None
    return value if isinstance(value, str) else str(value)


class Table(list):
    """Rows of one kind (a list of :class:`Record`), with :meth:`to_frame` and :meth:`to_dicts`."""

    def __init__(self, record: type[Record], rows: Iterable[Mapping] = ()):
        super().__init__(record.from_dict(r) for r in rows)
        self.record = record

    def to_dicts(self) -> list[dict[str, Any]]:
        """The rows as plain dicts (what results.json holds)."""
        return [r.to_dict() for r in self]

    def to_frame(self):
        """The rows as a pandas DataFrame, one column per field in file order."""
        import pandas as pd

        return pd.DataFrame(self.to_dicts(), columns=self.record.columns())

    def column(self, name: str) -> list:
        """One field of every row."""
        if name not in self.record.columns():
            raise FilterlensError(f"a {self.record.row_kind} row has no column {name!r}; valid: "
                                  f"{', '.join(self.record.columns())}")
        return [getattr(r, name) for r in self]


@dataclass(frozen=True, eq=True)
class LayerRecord(Record):
    """One analysed layer (a row of layers.csv; METHOD.md stages 2 and 3). Per-unit averages are over the
    layer's units (filters, heads or nodes; the ``_filter`` names are the papers').

    layer, index: the layer's name in the model and its place among the analysed layers (0 = shallowest).
    unit_kind: ``filter``, ``head`` or ``node``. units: how many; features: the probe's input size.
    accuracy, train_accuracy: the layer's probe accuracy on the test and training splits (stage 2).
    clusters_per_filter, cluster_size, noise_per_filter, signal_per_filter_all: averages over the units with
    at least one cluster (``_all``: over every unit); filters_without_cluster: how many units have none.
    snr, snr_median, snr_field: the layer's signal-to-noise ratio as METHOD.md defines its three forms;
    signal_field, noise_field: the field form's two parts. vote_fraction: the share of test images whose
    winning label the layer's units vote for most.
    """

    row_kind: ClassVar[str] = "layer"
    required: ClassVar[tuple[str, ...]] = ("layer", "index", "unit_kind", "units", "features", "accuracy")

    layer: str
    index: int
    unit_kind: str
    units: int
    features: int
    accuracy: float
    train_accuracy: float | None = None
    clusters_per_filter: float | None = None
    clusters_per_filter_all: float | None = None
    cluster_size: float | None = None
    noise_per_filter: float | None = None
    noise_per_filter_all: float | None = None
    filters_without_cluster: int | None = None
    signal_per_filter_all: float | None = None
    snr: float | None = None
    snr_median: float | None = None
    snr_field: float | None = None
    signal_field: float | None = None
    noise_field: float | None = None
    vote_fraction: float | None = None


@dataclass(frozen=True, eq=True)
class UnitRecord(Record):
    """One unit of an analysed layer (a row of filters.csv; METHOD.md stage 3).

    layer, unit: the layer and the unit's index in it; unit_kind: ``filter``, ``head`` or ``node``.
    num_clusters, clusters: how many clusters and the labels of each (``3+5|7``: labels joined by ``+``,
    clusters separated by ``|``). signal, noise: the labels inside clusters and the above-threshold elements
    outside them. preferred_label: the label whose row of the matrix is largest; vote_fraction: the share of
    test images on which the unit votes for the winning label. ones: the matrix's above-threshold elements
    (0 for a unit that never fires).
    """

    row_kind: ClassVar[str] = "unit"
    required: ClassVar[tuple[str, ...]] = ("layer", "unit")
    blank_is_empty: ClassVar[tuple[str, ...]] = ("clusters",)

    layer: str
    unit: int
    unit_kind: str | None = None
    num_clusters: int | None = None
    clusters: str | None = None
    signal: float | None = None
    noise: float | None = None
    preferred_label: str | None = None
    vote_fraction: float | None = None
    ones: int | None = None


@dataclass(frozen=True, eq=True)
class ClaimRecord(Record):
    """One of the papers' claims as a run tests it (:mod:`filterlens.claims`; METHOD.md, "The papers' claims").

    claim: its number (1-6); text: the claim in the papers' words; metric and statistic: what is measured and
    how (e.g. ``snr``, ``spearman_rho`` against relative depth); value with its interval [low, high] (None where
    undefined) over n
    layers, units or draws; verdict: ``holds``, ``does not hold`` or ``cannot tell``, by ``rule``; detail: why,
    in words; unit_kind: which units (where a run has several kinds); replicates: the bootstrap replicates
    behind the interval.
    """

    row_kind: ClassVar[str] = "claim"
    required: ClassVar[tuple[str, ...]] = ("claim", "metric", "verdict")
    nan_is_none: ClassVar[tuple[str, ...]] = ("value", "low", "high")  # undefined: null, as results.json has it

    claim: int
    text: str | None = None
    metric: str | None = None
    statistic: str | None = None
    value: Any = None
    low: Any = None
    high: Any = None
    n: int | None = None
    verdict: str | None = None
    rule: str | None = None
    detail: str | None = None
    unit_kind: str | None = None
    replicates: int | None = None


@dataclass(frozen=True, eq=True)
class AfccRecord(Record):
    """One masked weight tensor of AFCC (a row of afcc.csv; METHOD.md stage 5).

    layer, kind, prev_layer, param: the tensor (``fc``: the new FC on ``layer``; ``conv``/``linear``: the
    connections from ``prev_layer``'s units into ``layer``'s). threshold: the cluster threshold of the masks.
    dilution: removed / total weights; kept, total: weights; connections_kept, connections_total: unit-to-unit
    connections; filters, filters_without_connection: the units and those left with no connection.
    acc_*: the network's test accuracy before masking, masked, masked and retrained, and the random control
    (means over ``random_draws`` draws, with the retrained accuracies' sd); probe_accuracy: the layer's stage-2
    accuracy.
    """

    row_kind: ClassVar[str] = "afcc"
    required: ClassVar[tuple[str, ...]] = ("layer", "kind", "dilution")

    layer: str
    kind: str
    prev_layer: str | None = None
    param: str | None = None
    threshold: float | None = None
    dilution: float | None = None
    kept: int | None = None
    total: int | None = None
    connections_kept: int | None = None
    connections_total: int | None = None
    filters: int | None = None
    filters_without_connection: int | None = None
    acc_before: float | None = None
    acc_masked: float | None = None
    acc_retrained: float | None = None
    acc_random_masked: float | None = None
    acc_random_retrained: float | None = None
    acc_random_retrained_sd: float | None = None
    random_draws: int | None = None
    probe_accuracy: float | None = None
