"""report.html's unit explorer: every analysed layer's units in a sortable table; choosing one shows its matrix
(normalised and binarised, label names, clusters as blocks) and, for each of its clusters, the test images that
drive the cluster most (thumbnails).

The page stays bounded: matrices and thumbnails are embedded for at most ``explorer_units`` units per layer
(the heatmaps' units, then the most and the least noisy in turn), a matrix shows at most
:data:`MAX_SHOWN_LABELS` labels (the clusters' labels first), and every thumbnail is embedded once however
many units show it; the other units are listed with their numbers, and the page says so. The top images come
from the test pass the probes already made (``label_means.pt``, ``top``): no pass over the data of their own.
Everything is inline (data URIs, the data as JSON, one script): the page makes no request. This module computes the
data; the section is the template ``templates/explorer.html.j2`` and its script ``templates/explorer.js``.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np

from .. import sfp
from ..config import DEFAULT_THRESHOLD

MAX_SHOWN_LABELS = 120
UNIT_COLUMNS = ["u", "clusters", "n", "size", "noise", "vote"]  # one row per unit in the explorer's table


def _chosen_units(rows: list[dict], heat: list[int], limit: int) -> list[int]:
    """The units with a matrix and thumbnails: the heatmaps' units, then the most and least noisy in turn
    (least noisy among those with a cluster first)."""
    out = [u for u in heat if u < len(rows)][:limit]
    by_noise = sorted(range(len(rows)), key=lambda u: (-float(rows[u]["noise"]), u))
    quiet = sorted((u for u in range(len(rows)) if int(rows[u]["num_clusters"]) > 0),
                   key=lambda u: (float(rows[u]["noise"]), u))
    for pair in zip(by_noise, quiet + [u for u in by_noise[::-1] if u not in quiet]):
        for u in pair:
            if len(out) < limit and u not in out:
                out.append(u)
    return out


def _heatmap_units(res: dict) -> dict[str, list[int]]:
    """Units drawn as heatmaps, by layer, from results.json's file list (``heatmaps/LAYER-KINDn.png``)."""
    out: dict[str, list[int]] = {}
    for path in res.get("heatmaps") or []:
        stem = Path(path).stem
        layer, _, rest = stem.rpartition("-")
        digits = "".join(ch for ch in rest if ch.isdigit())
        if layer and digits:
            out.setdefault(layer, []).append(int(digits))
    return out


def explorer_data(d: Path, res: dict, filters: list[dict]) -> dict:
    """Everything the explorer shows, as plain data (numbers, label names), and ``wanted``: the test images
    whose thumbnails it shows (the analysis saved them in thumbnails.json; :func:`thumbnails`)."""
    from ..probe_results import ProbeResult

    cfg = res.get("config", {})
    limit = int(cfg.get("explorer_units", 32))
    k = int(cfg.get("top_images", 8))
    threshold = float(res.get("sfp", {}).get("threshold", cfg.get("threshold", DEFAULT_THRESHOLD)))
    normalise = res.get("sfp", {}).get("normalise", cfg.get("normalise", "max"))
    probes = ProbeResult.load(d)
    weights = {r.name: r.weight for r in probes.layers}
    blob = {"means": {r.name: r.label_means for r in probes.layers}}
    top = {r.name: {"values": r.top_values, "indices": r.top_indices} for r in probes.layers
           if r.top_indices is not None}
    heat = _heatmap_units(res)
    layers = []
    wanted: set[int] = set()
    for row in res.get("layers", []):
        name = row["layer"]
        rows = [f for f in filters if f["layer"] == name]
        units: list[list[Any]] = [
            [int(f["unit"]), f.get("clusters") or "", int(f["num_clusters"]), None, int(float(f["noise"])),
             round(float(f["vote_fraction"]), 3) if f.get("vote_fraction") not in (None, "") else None]
            for f in rows]  # the columns of UNIT_COLUMNS (compact: thousands of rows on a large network)
        detail = {}
        if name in weights and name in blob["means"]:
            for u in _chosen_units(rows, heat.get(name, []), limit):
                detail[str(u)] = _unit_detail(weights[name], blob["means"][name], top.get(name), u, threshold,
                                              normalise, k)
                wanted.update(i for ids in detail[str(u)]["top"] for i in ids)
        for unit in units:  # mean cluster size from the saved cluster strings
            parts = [p for p in unit[1].split("|") if p]
            unit[3] = round(sum(len(p.split("+")) for p in parts) / len(parts), 2) if parts else None
        layers.append({"name": name, "kind": row.get("unit_kind", "filter"), "units": units, "detail": detail})
    return {"columns": UNIT_COLUMNS, "labels": res.get("label_names", []), "threshold": threshold,
            "normalise": normalise, "k": k, "limit": limit, "max_labels": MAX_SHOWN_LABELS, "layers": layers,
            "wanted": sorted(wanted)}


def _unit_detail(weight, means, top, u: int, threshold: float, normalise: str, k: int) -> dict:
    """A unit's matrix (normalised, cluster order, at most MAX_SHOWN_LABELS labels, as signed bytes), its
    clusters and, per cluster, its top test images."""
    one = sfp.analyze_unit(weight, means, u, threshold, normalise,
                           (top["values"], top["indices"]) if top is not None else None, k)
    m, norm = one.matrix, one.normalised
    if one.dead:  # no normalisation: the raw matrix scaled to [-1, 1]
        peak = float(np.abs(m).max())
        norm = m / peak if peak > 0 else m
    order = sfp.cluster_order(one.clusters, m.shape[0])[:MAX_SHOWN_LABELS]
    q = np.clip(np.round(norm[np.ix_(order, order)] * 100), -100, 100).astype(np.int8)
    return {"order": order, "m": base64.b64encode(q.tobytes()).decode("ascii"), "clusters": one.clusters,
            "top": one.top or [[] for _ in one.clusters], "dead": one.dead}


def thumbnails(data, indices: list[int], size: int = 48) -> dict[str, str]:
    """Data URIs of test images of ``data`` (a :class:`~filterlens.data.Data`; by index into its test split):
    JPEG for colour, PNG for grey. The analysis writes them to thumbnails.json for the report."""
    out = {}
    for i in indices:
        img = data.test_image(int(i))
        img.thumbnail((size, size))  # shrinks only: a small image stays as it is (the page scales it)
        buf = io.BytesIO()
        grey = img.mode in ("L", "1")
        img.save(buf, format="PNG" if grey else "JPEG", quality=70)
        out[str(i)] = f"data:image/{'png' if grey else 'jpeg'};base64," + base64.b64encode(buf.getvalue()).decode()
    return out


def explorer_view(data: dict) -> dict:
    """The explorer's section of report.html for its template (``templates/explorer.html.j2``, drawn by
    ``templates/explorer.js``): the data (:func:`explorer_data`, with its thumbnails) and how many units of how
    many have a matrix and thumbnails."""
    return {"left_out": None, "data": data, "shown": sum(len(layer["detail"]) for layer in data["layers"]),
            "total": sum(len(layer["units"]) for layer in data["layers"])}
