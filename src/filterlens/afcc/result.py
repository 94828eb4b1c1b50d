"""What :func:`filterlens.afcc.apply` returns (:class:`AfccResult`), its tables, and its files.

The result holds the networks themselves (``model``: the retrained masked network, ``masked_model``
before retraining, ``pruned_model`` with the units physically removed, or None where removal is not
supported), the masks, every accuracy, and the tables the run directory keeps: ``afcc.csv`` (one row
per masked tensor), ``afcc_thresholds.csv`` (accuracy against dilution), ``afcc_pruning.csv`` (the
cost of the original, masked and pruned networks). :meth:`AfccResult.to_dict` is the ``afcc`` entry of
results.json; :meth:`AfccResult.write` writes the files; :meth:`AfccResult.plot` draws accuracy against
dilution (the report's own figure).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..files import write_csv
from ..names import AFCC, AFCC_MODEL, AFCC_PNG, AFCC_PRUNED, AFCC_PRUNING, AFCC_THRESHOLDS
from ..records import AfccRecord, ClaimRecord, Table
from .export import FORMAT_VERSION, MASK_NOTE, save
from .masks import connections

AFCC_COLUMNS = AfccRecord.columns()  # afcc.csv
THRESHOLD_COLUMNS = ["threshold", "dilution", "fc_dilution", "conv_dilution", "linear_dilution", "acc_before",
                     "acc_masked", "acc_retrained", "acc_random_masked", "acc_random_retrained",
                     "acc_random_retrained_sd", "acc_random_retrained_draws", "random_draws", "filters_without_cluster"]
PRUNING_COLUMNS = ["model", "params", "params_nonzero", "macs", "macs_nonzero", "latency_ms", "latency_p25_ms",
                   "latency_p75_ms", "accuracy", "note"]


@dataclass
class AfccResult:
    """AFCC on some consecutive analysed layers (METHOD.md stage 5), in memory."""

    layers: list[str]
    threshold: float
    masks: list  # LayerMask, conv masks in layer order then the deepest layer's FC mask
    accuracy: dict  # before, masked, retrained, random_* (means over the draws, sd, draws), probe
    thresholds: list[dict]  # one row per threshold of the accuracy-against-dilution curve
    model: object  # the retrained masked network (DilutedNet)
    masked_model: object  # the masked network before retraining
    pruned_model: object | None  # units whose outgoing connections are all masked, physically removed
    pruned: dict  # what the removal did and cost ("supported" False: why not)
    pruning_rows: list[dict]
    retrain: dict  # the retraining's settings, engine and history
    analysis: dict  # the analysis the clusters came from (threshold, normalise, probe pool, hash)
    settings: dict  # every AFCC setting used
    timings: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # spec (to rebuild the networks), data, config, title
    pruned_masks: list = field(default_factory=list)  # the masks of the pruned network (its own shapes)

    @property
    def dilution(self) -> dict:
        """Per mask (``kind:layer``, :attr:`LayerMask.key`), its dilution: removed / total weights."""
        return {m.key: m.dilution for m in self.masks}

    @property
    def dilution_total(self) -> float | None:
        """Removed / total weights over every mask together (None without any mask)."""
        return total_dilution(self.masks)

    @property
    def claims(self) -> Table:
        """Claim 6 of the papers (AFCC dilutes strongly with little loss and beats the random control), tested:
        :class:`~filterlens.records.ClaimRecord` rows."""
        from ..claims import afcc_claims

        return Table(ClaimRecord, afcc_claims(self.to_dict()))

    def to_frame(self):
        """afcc.csv as a pandas DataFrame: one row per masked tensor (:meth:`rows`)."""
        return self.rows().to_frame()

    def rows(self) -> Table:
        """afcc.csv: one :class:`~filterlens.records.AfccRecord` per masked tensor."""
        a = self.accuracy
        shared = {"threshold": self.threshold, "acc_before": a["before"], "acc_masked": a["masked"],
                  "acc_retrained": a["retrained"], "acc_random_masked": a["random_masked"],
                  "acc_random_retrained": a["random_retrained"], "acc_random_retrained_sd": a["random_retrained_sd"],
                  "random_draws": a["random_draws"], "probe_accuracy": a["probe"]}
        return Table(AfccRecord, [{**r, **shared} for r in connection_rows(self.masks)])

    def to_dict(self) -> dict:
        """The ``afcc`` entry of results.json."""
        a = self.accuracy
        between = "+".join(dict.fromkeys(m.kind for m in self.masks if m.kind != "fc"))
        return {"version": FORMAT_VERSION, "layers": self.layers, "kind": f"{between}+fc" if between else "fc",
                "threshold": self.threshold, "analysis": self.analysis, "masked": self.rows().to_dicts(),
                "dilution": self.dilution, "dilution_total": self.dilution_total,
                "fc_dilution": total_dilution(self.masks, "fc"), "accuracy": a,
                "afcc_beats_random": a["retrained"] >= a["random_retrained"], "retrain": self.retrain,
                "random_control": "per unit the same number of kept connections (FC: output units; conv: input "
                                  f"filters; linear: input nodes), placed at random; {a['random_draws']} draw(s), "
                                  "draw k from "
                                  f"torch.Generator seeded {self.settings['seed']}+k; acc_random_* are means over the "
                                  "draws",
                "thresholds": self.thresholds, "note": MASK_NOTE, "files": self.files(), "timings": self.timings}

    def files(self) -> list[str]:
        """The files :meth:`write` writes."""
        out = [AFCC, AFCC_THRESHOLDS, AFCC_PNG]
        if self.meta.get("spec") is not None:
            out.append(AFCC_MODEL)
            if self.pruned_model is not None:
                out.append(AFCC_PRUNED)
        if self.pruning_rows:
            out.append(AFCC_PRUNING)
        return out

    def write(self, directory) -> list[str]:
        """Write the tables, the figure and, when the model can be rebuilt from its spec, the networks (one
        versioned file each, :func:`~filterlens.afcc.export.save`); returns the file names."""
        d = Path(directory)
        meta = {"spec": self.meta.get("spec"), "config": self.meta.get("config"), "accuracy": self.accuracy,
                "threshold": self.threshold, "retrained": self.settings["retrain_epochs"] > 0,
                "data": self.meta.get("data")}
        if meta["spec"] is not None:
            save(d / AFCC_MODEL, self.model, self.masks, meta)
            if self.pruned_model is not None:
                save(d / AFCC_PRUNED, self.pruned_model, self.pruned_masks, meta)
        if self.pruning_rows:
            write_csv(d / AFCC_PRUNING, self.pruning_rows, PRUNING_COLUMNS)
        write_csv(d / AFCC, self.rows(), AFCC_COLUMNS)
        write_csv(d / AFCC_THRESHOLDS, self.thresholds, THRESHOLD_COLUMNS + ["main"])
        from ..report.plots import save_figure

        save_figure(self.plot(), d / AFCC_PNG)
        return self.files()

    def plot(self):
        """Accuracy against dilution, AFCC and the random control at each threshold (a matplotlib figure)."""
        from ..report.plots import afcc_figure

        names = self.layers
        title = self.meta.get("title") or f"AFCC: {names[0]}" + (f"..{names[-1]}" if len(names) > 1 else "")
        return afcc_figure(self.thresholds, title=title, acc_before=self.accuracy["before"])

    def _repr_html_(self) -> str:
        import html

        a = self.accuracy
        head = (f"<p><b>AFCC</b> on {html.escape(', '.join(self.layers))} at threshold {self.threshold:g}: accuracy "
                f"before {a['before']:.4f}, masked {a['masked']:.4f}, retrained {a['retrained']:.4f}; random control "
                f"retrained {a['random_retrained']:.4f} (mean of {a['random_draws']})</p>")
        cols = ["layer", "kind", "dilution", "kept", "total", "filters_without_connection"]
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in cols) + "</tr>"
                       for r in self.rows())
        return head + ("<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in cols) + f"</tr></thead><tbody>{body}"
                       "</tbody></table>")

    def __repr__(self) -> str:
        return (f"<AfccResult {', '.join(self.layers)} t={self.threshold:g}: dilution {self.dilution_total:.3f}, "
                f"accuracy {self.accuracy['before']:.4f} -> {self.accuracy['retrained']:.4f}>")


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def total_dilution(masks, kind=None):
    """Removed / total weights over ``masks`` (of one ``kind``, fc, conv or linear, when given); None without
    any."""
    sel = [m for m in masks if kind is None or m.kind == kind]
    if not sel:
        return None
    total = sum(m.total for m in sel)
    return (total - sum(m.kept for m in sel)) / total


def connection_rows(masks) -> list[dict]:
    """Per masked tensor: its dilution, kept and total weights and unit-to-unit connections, and the units left
    without any connection."""
    rows = []
    for m in masks:
        conn = connections(m.mask)
        per_unit = conn.any(0) if m.kind == "fc" else conn.any(1)
        rows.append({"layer": m.layer, "kind": m.kind, "prev_layer": m.prev or "", "param": m.param,
                     "dilution": m.dilution, "kept": m.kept, "total": m.total, "connections_kept": int(conn.sum()),
                     "connections_total": int(conn.numel()), "filters": int(per_unit.numel()),
                     "filters_without_connection": int((~per_unit).sum())})
    return rows
