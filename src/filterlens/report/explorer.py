"""report.html's unit explorer: every analysed layer's units in a sortable table; choosing one shows its matrix
(normalised and binarised, label names, clusters as blocks) and, for each of its clusters, the test images that
drive the cluster most (thumbnails).

The page stays bounded: matrices and thumbnails are embedded for at most ``explorer_units`` units per layer
(the heatmaps' units, then the most and the least noisy in turn), a matrix shows at most
:data:`MAX_SHOWN_LABELS` labels (the clusters' labels first), and every thumbnail is embedded once however
many units show it; the other units are listed with their numbers, and the page says so. The top images come
from the test pass the probes already made (``label_means.pt``, ``top``): no pass over the data of their own.
Everything is inline (data URIs, one script): the page makes no request.
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np

from .. import sfp

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
    threshold = float(res.get("sfp", {}).get("threshold", cfg.get("threshold", 0.3)))
    normalise = res.get("sfp", {}).get("normalise", cfg.get("normalise", "max"))
    probes = ProbeResult.load(d)
    weights = {r.name: r.weight for r in probes.layers}
    blob = {"means": {r.name: r.label_means for r in probes.layers}}
    top = {r.name: {"values": r.top_values, "indices": r.top_indices} for r in probes.layers
           if r.top_indices is not None}
    heat = _heatmap_units(res)
    layers, wanted = [], set()
    for row in res.get("layers", []):
        name = row["layer"]
        rows = [f for f in filters if f["layer"] == name]
        units = [[int(f["unit"]), f.get("clusters") or "", int(f["num_clusters"]), None, int(float(f["noise"])),
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
    return {"columns": UNIT_COLUMNS, "labels": res.get("label_names", []), "threshold": threshold, "normalise": normalise, "k": k,
            "limit": limit, "max_labels": MAX_SHOWN_LABELS, "layers": layers, "wanted": sorted(wanted)}


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


def explorer_html(data: dict) -> str:
    """The explorer's section of report.html: the data as JSON and the script that draws it."""
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    shown = sum(len(layer["detail"]) for layer in data["layers"])
    total = sum(len(layer["units"]) for layer in data["layers"])
    note = (f"Matrices and thumbnails are embedded for {shown} of {total} units (at most {data['limit']} per layer: "
            "the heatmaps' units, then the most and the least noisy in turn); the others are listed with their "
            "numbers. Show more with <code>--explorer-units N</code> (then <code>filterlens run</code> again, or "
            f"<code>filterlens analyze</code> and <code>filterlens report</code>). A matrix shows at most "
            f"{data['max_labels']} labels, its clusters' first. Thumbnails: the test images with the largest field "
            "on one of the cluster's output units (from the test pass of the probes).")
    return (f"<h2>Unit explorer</h2><p class='muted'>{note}</p><div id='fl-layers'></div>"
            "<div id='fl-main'><div id='fl-table'></div><div id='fl-detail'></div></div>"
            f"<script id='fl-data' type='application/json'>{payload}</script><script>{_JS}</script>")


EXPLORER_CSS = """
#fl-layers button{margin:2px;padding:3px 8px;border:1px solid #bbb;background:#f7f7f7;cursor:pointer;font-size:0.85em}
#fl-layers button.on{background:#2c6fbb;color:#fff} #fl-main{display:flex;gap:1em;align-items:flex-start}
#fl-table{max-height:520px;overflow:auto;flex:0 0 46%} #fl-table th{cursor:pointer} #fl-table tr.sel td{background:#dbe8f7}
#fl-table tr[data-detail='1'] td:first-child{font-weight:bold} #fl-detail{flex:1}
.fl-thumb{width:48px;height:48px;image-rendering:pixelated;margin:1px;border:1px solid #ccc}
canvas.fl-m{border:1px solid #ccc;image-rendering:pixelated;margin-right:6px}
"""

_JS = r"""
(function () {
  var D = JSON.parse(document.getElementById('fl-data').textContent);
  var cur = null, sortKey = 'noise', sortDir = -1;
  function el(tag, attrs, html) { var e = document.createElement(tag); for (var k in (attrs || {})) e.setAttribute(k, attrs[k]); if (html !== undefined) e.innerHTML = html; return e; }
  function esc(s) { return String(s).replace(/[&<>"]/g, function (c) { return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]; }); }
  var bar = document.getElementById('fl-layers');
  var kinds = {}; D.layers.forEach(function (L) { kinds[L.kind] = 1; });
  var mixed = Object.keys(kinds).length > 1;  // a run with several unit kinds: each button says its kind
  D.layers.forEach(function (L, i) {
    var name = esc(L.name) + (mixed ? ' (' + esc(L.kind) + 's)' : '');
    var b = el('button', {'class': 'fl-layer', 'data-layer': String(i)}, name);
    b.onclick = function () { showLayer(i); }; bar.appendChild(b);
  });
  function showLayer(i) {
    cur = i;
    Array.prototype.forEach.call(bar.children, function (b) { b.className = 'fl-layer' + (b.getAttribute('data-layer') == i ? ' on' : ''); });
    renderTable(); document.getElementById('fl-detail').innerHTML = '';
  }
  var cols = [['u', '#'], ['clusters', 'clusters'], ['n', 'n'], ['size', 'size'], ['noise', 'noise'], ['vote', 'vote']];
  D.layers.forEach(function (L) { L.units = L.units.map(function (r) { var o = {}; D.columns.forEach(function (c, i) { o[c] = r[i]; }); return o; }); });
  function renderTable() {
    var L = D.layers[cur], units = L.units.slice();
    units.sort(function (a, b) { var x = a[sortKey], y = b[sortKey]; if (x === null) return 1; if (y === null) return -1; return (x < y ? -1 : x > y ? 1 : 0) * sortDir; });
    var t = el('table', {'id': 'fl-units'}), head = el('tr');
    cols.forEach(function (c) { var th = el('th', {'data-sort': c[0]}, c[1] + (sortKey === c[0] ? (sortDir > 0 ? ' &#9650;' : ' &#9660;') : ''));
      th.onclick = function () { if (sortKey === c[0]) sortDir = -sortDir; else { sortKey = c[0]; sortDir = c[0] === 'u' ? 1 : -1; } renderTable(); }; head.appendChild(th); });
    t.appendChild(head);
    units.forEach(function (u) {
      var tr = el('tr', {'data-unit': String(u.u), 'data-detail': L.detail[u.u] ? '1' : '0'});
      cols.forEach(function (c) { var v = u[c[0]]; tr.appendChild(el('td', c[0] === 'clusters' ? {'class': 'l'} : {}, v === null ? '' : esc(v))); });
      tr.onclick = function () { showUnit(u.u, tr); }; t.appendChild(tr);
    });
    var box = document.getElementById('fl-table'); box.innerHTML = ''; box.appendChild(t);
  }
  function color(v) { var a = Math.min(1, Math.abs(v)); var r = v > 0 ? 255 : Math.round(255 * (1 - a)), b = v < 0 ? 255 : Math.round(255 * (1 - a)), g = Math.round(255 * (1 - a)); return [r, g, b]; }
  function draw(det, binary) {
    var n = det.order.length, raw = atob(det.m), px = Math.max(2, Math.floor(300 / n)), c = el('canvas', {'class': 'fl-m ' + (binary ? 'fl-bin' : 'fl-raw'), 'width': n * px, 'height': n * px});
    var g = c.getContext('2d');
    for (var i = 0; i < n; i++) for (var j = 0; j < n; j++) {
      var q = raw.charCodeAt(i * n + j); if (q > 127) q -= 256; var v = q / 100;
      var rgb = binary ? (v > D.threshold ? [20, 20, 20] : [255, 255, 255]) : color(v);
      g.fillStyle = 'rgb(' + rgb.join(',') + ')'; g.fillRect(j * px, i * px, px, px);
    }
    var pos = 0; g.strokeStyle = '#f28e2b'; g.lineWidth = 2;
    det.clusters.forEach(function (cl) { g.strokeRect(pos * px, pos * px, cl.length * px, cl.length * px); pos += cl.length; });
    return c;
  }
  function showUnit(u, tr) {
    Array.prototype.forEach.call(document.querySelectorAll('#fl-units tr'), function (r) { r.className = ''; });
    tr.className = 'sel';
    var L = D.layers[cur], det = L.detail[u], box = document.getElementById('fl-detail');
    box.innerHTML = '<h3>' + esc(L.name) + ' ' + L.kind + ' ' + u + '</h3>';
    if (!det) { box.appendChild(el('p', {'class': 'muted fl-none'}, 'Numbers only: this unit\'s matrix and thumbnails are not embedded (raise --explorer-units).')); return; }
    var names = det.order.map(function (i) { return D.labels[i]; });
    box.appendChild(el('p', {'class': 'muted'}, 'rows: input label, columns: output unit, in this order: ' + esc(names.join(', ')) + (det.dead ? ' (largest element &le; 0: no clusters)' : '')));
    var row = el('div'); row.appendChild(draw(det, false)); row.appendChild(draw(det, true)); box.appendChild(row);
    det.clusters.forEach(function (cl, k) {
      var p = el('div', {'class': 'fl-cluster'}, '<b>cluster ' + (k + 1) + '</b>: ' + esc(cl.map(function (i) { return D.labels[i]; }).join(' + ')) + '<br>');
      (det.top[k] || []).forEach(function (i) { var src = D.images[String(i)]; if (src) p.appendChild(el('img', {'class': 'fl-thumb', 'src': src, 'alt': 'test image ' + i, 'title': 'test image ' + i})); });
      box.appendChild(p);
    });
    if (!det.clusters.length) box.appendChild(el('p', {'class': 'muted'}, 'no cluster at this threshold'));
  }
  if (D.layers.length) showLayer(0);
})();
"""
