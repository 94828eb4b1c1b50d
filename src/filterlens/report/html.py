"""``report.html``: one self-contained page (images embedded) built from a run's saved files; nothing recomputed."""
from __future__ import annotations

from pathlib import Path

from ..claims import general_rule, metric_label, snr_sentence
from ..config import STAGE_ORDER
from ..errors import FilterlensError
from ..files import read_json, write_text
from ..names import REPORT_READS, THUMBNAILS
from ..rundir import RunDir
from .explorer import EXPLORER_CSS, explorer_data, explorer_html
from .plots import unit_word

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:0.2em} h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:0.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0} th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left} .muted{color:#777;font-size:0.9em}
img{max-width:100%;border:1px solid #eee;margin:0.4em 0} .grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:0.6em}
details{margin:0.5em 0} .scroll{overflow-x:auto;max-width:100%} code{background:#f6f6f6;padding:1px 4px}
"""

_CHECK_JS = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
});
"""


def _esc(v) -> str:
    import html

    return html.escape(str(v))


def _img(path: Path, alt: str) -> str:
    import base64

    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _fmt_cell(v) -> str:
    if v is None or v == "":
        return ""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return _esc(v)
    if isinstance(v, str) and not any(c in v for c in ".eE") and v.lstrip("-").isdigit():
        return _esc(v)
    if f != f:
        return "nan"
    if f in (float("inf"), float("-inf")):
        return "inf" if f > 0 else "-inf"
    if float(f).is_integer() and abs(f) < 1e9:
        return str(int(f))
    return f"{f:.4g}"


def _table(rows: list[dict], columns: list[str] | None = None, left: tuple = ("layer", "clusters", "labels",
                                                                                "metric", "kind", "preferred_label")) -> str:
    if not rows:
        return "<p class='muted'>(none)</p>"
    columns = columns or list(rows[0].keys())
    head = "".join(f"<th class='{'l' if c in left else ''}'>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td class='{'l' if c in left else ''}'>{_fmt_cell(r.get(c))}</td>"
                                    for c in columns) + "</tr>" for r in rows)
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _read_csv(path: Path) -> list[dict]:
    import csv

    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


READS = REPORT_READS


def explorer_left_out(d: Path) -> str | None:
    """Why the report's unit explorer cannot be built from the run ``d`` (a file it reads is missing), or None."""
    missing = [n for n in ("filters.csv", "probes.pt", "label_means.pt") if not (Path(d) / n).exists()]
    if not missing:
        return None
    return (f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing from the run directory; "
            "run filterlens analyze again to have it")


def build_report(run_dir, settings_hash: str | None = None, echo=None) -> Path:
    """Write ``report.html``: one self-contained file (images embedded) from the run's saved results.

    Nothing is recomputed; ``filterlens report RUN_DIR`` calls this. A file it reads that changed
    since its stage wrote it is refused (one line). ``settings_hash``: the report's key in
    ``stages.json`` (default: the hashes of the stages it reports on). ``echo``: where a part left out of the
    report is said (the unit explorer without filters.csv).
    """
    rd = RunDir(RunDir.validate(run_dir))
    if not rd.path.is_dir():
        raise FilterlensError(f"run directory '{rd.path}' does not exist; run filterlens analyze or filterlens run "
                              "first")
    import time

    with rd.lock("filterlens report"):
        t0 = time.perf_counter()
        res = rd.read_results()
        rd.verify(*READS)
        stages = rd.stages()
        path = write_text(rd.file("report.html"), _page(rd.path, res, stages))
        if settings_hash is None:
            settings_hash = "|".join(stages[s]["hash"] for s in STAGE_ORDER if s in stages and s != "report")
        rd.record("report", settings_hash, ("report.html",), time.perf_counter() - t0)
    left_out = explorer_left_out(rd.path)
    if left_out and echo is not None:
        echo(f"note: the report's unit explorer is left out: {left_out}")
    return path


CLAIM_COLUMNS = ["claim", "metric", "statistic", "value", "low", "high", "n", "verdict", "detail"]


def claims_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """The claims as an HTML table (the claims' texts and each rule once, below it)."""
    rules = list(dict.fromkeys(general_rule(str(r.get("rule", ""))) for r in rows))
    text = {r.get("claim"): r.get("text", "") for r in rows}
    rows = [{**r, "metric": metric_label(r, rows)} if r.get("metric") is not None else r for r in rows]
    return (_table(rows, columns or CLAIM_COLUMNS, left=("run", "metric", "statistic", "verdict", "detail"))
            + "<details><summary>the claims and the rules</summary><ul>"
            + "".join(f"<li>claim {k}: {_esc(v)}</li>" for k, v in sorted(text.items()))
            + "</ul><ul>" + "".join(f"<li>{_esc(r)}</li>" for r in rules if r) + "</ul></details>")


def _claims_section(d: Path, res: dict) -> str:
    """The papers' claims this run (and its sweep) can test, with one sentence on the SNR candidates."""
    rows = list(res.get("claims") or [])
    if (d / "sweep" / "sweep.json").exists():
        rows += read_json(d / "sweep" / "sweep.json").get("claims") or []
    if not rows:
        return ("<h2>The papers' claims</h2><p class='muted'>not tested here: this run was analysed by a filterlens "
                "without the claims table (run filterlens analyze again)</p>")
    rows = sorted(rows, key=lambda r: r.get("claim", 0))
    sentence = snr_sentence(rows)
    return ("<h2>The papers' claims</h2><p class='muted'>what this run says about each claim of Meir et al. "
            "(METHOD.md, \"The papers' claims\"): the statistic, its 95% interval, and the verdict of the rule "
            "written under the table (holds / does not hold / cannot tell).</p>"
            + (f"<p class='snr-sentence'>{_esc(sentence)}</p>" if sentence else "") + claims_table(rows))


def _page(d: Path, res: dict, stages: dict) -> str:
    import json
    import time

    cfg = res.get("config", {})
    env = res.get("environment", {})
    title = res.get("title", "filterlens report")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(title)}</title>"
             f"<style>{_CSS}{EXPLORER_CSS}</style><script>{_CHECK_JS}</script></head><body>",
             f"<h1>{_esc(title)}</h1><p class='muted'>filterlens {_esc(env.get('filterlens', ''))} &middot; "
             f"built {time.strftime('%Y-%m-%d %H:%M')} &middot; seed {_esc(cfg.get('seed'))} &middot; "
             "method: Meir et al., arXiv 2309.07537</p>"]
    train = res.get("train") or {}
    probes = res.get("probes", {})
    summary = [("test accuracy of the trained model", _fmt_cell(train.get("test_accuracy"))),
               ("layers analysed", len(res.get("layers", []))),
               ("probe mode / engine", f"{probes.get('mode')} / {probes.get('engine')} "
                                       f"({probes.get('forward_passes')} forward pass(es))"),
               ("threshold / normalise", f"{res.get('sfp', {}).get('threshold')} / {res.get('sfp', {}).get('normalise')}")]
    parts.append("<h2>Summary</h2>" + _table([{"item": k, "value": v} for k, v in summary], ["item", "value"],
                                           left=("item", "value")))
    parts.append(_claims_section(d, res))
    # layers
    layers = _read_csv(d / "layers.csv")
    unit = unit_word(layers)
    parts.append("<h2>Layers</h2><p class='muted'>accuracy: test accuracy of a new bias-free FC trained on the frozen "
                 f"layer's output; clusters/noise per {unit} averaged over {unit}s with a cluster (<code>_all</code>: "
                 f"over all {unit}s; the columns keep the method's name, <code>per_filter</code>); SNR = mean signal "
                 f"elements / mean noise elements per {unit}; the other SNR candidates, over the {unit}s with a "
                 f"cluster: <code>snr_median</code>, the median of signal / max(noise, 1), and <code>snr_field</code> "
                 f"= <code>signal_field</code> / <code>noise_field</code>, the mean normalised field inside the "
                 "cluster blocks over the mean positive field outside them.</p>")
    parts.append(_table(layers))
    plots = [p for p in ("accuracy.png", "clusters.png") if (d / p).exists()]
    if plots:
        parts.append("<div class='grid'>" + "".join(_img(d / p, p) for p in plots) + "</div>")
    filters = _read_csv(d / "filters.csv")
    left_out = explorer_left_out(d)
    if left_out:
        parts.append(f"<h2>Unit explorer</h2><p class='muted'>left out: {_esc(left_out)}</p>")
    elif filters and (d / "probes.pt").exists() and (d / "label_means.pt").exists():
        # the heatmaps' units come first in the explorer; their PNGs stay in heatmaps/, every unit in filters.csv
        data = explorer_data(d, res, filters)
        saved = read_json(d / THUMBNAILS) if (d / THUMBNAILS).exists() else {}
        data["images"] = {str(i): saved[str(i)] for i in data.pop("wanted") if str(i) in saved} \
            if isinstance(saved, dict) else {}
        parts.append(explorer_html(data))
    if (d / "thresholds.csv").exists():
        parts.append("<h2>Threshold sensitivity</h2>" + _table(_read_csv(d / "thresholds.csv")))
    if (d / "bootstrap.csv").exists():
        parts.append("<h2>Bootstrap 95% intervals</h2>" + _table(_read_csv(d / "bootstrap.csv")))
    # AFCC
    if (d / "afcc.csv").exists():
        parts.append(f"<h2>AFCC: keeping only the {unit}s' cluster connections</h2>" + _table(_read_csv(d / "afcc.csv")))
        if (d / "afcc_thresholds.csv").exists():
            parts.append("<p class='muted'>accuracy against dilution, AFCC and random control:</p>" +
                         _table(_read_csv(d / "afcc_thresholds.csv")))
        if (d / "afcc_pruning.csv").exists():
            parts.append("<p class='muted'>physical removal (a smaller dense model):</p>" +
                         _table(_read_csv(d / "afcc_pruning.csv")))
        if (d / "afcc.png").exists():
            parts.append(_img(d / "afcc.png", "afcc"))
    # sweep
    sw = d / "sweep"
    if (sw / "sweep.json").exists():
        sj = read_json(sw / "sweep.json")
        parts.append("<h2>Error against the number of labels</h2>" + _table(sj.get("per_count", [])))
        fits = [{"fit": k, **{kk: v.get(kk) for kk in ("a", "b", "r2", "b_low", "b_high", "n")}}
                for k, v in sj.get("fits", {}).items()]
        parts.append(_table(fits, left=("fit",)))
        imgs = [p for p in ("sweep_error.png", "sweep_clusters.png") if (sw / p).exists()]
        parts.append("<div class='grid'>" + "".join(_img(sw / p, p) for p in imgs) + "</div>")
    # settings, environment, time
    if stages:
        parts.append("<h2>Time per stage</h2>" + _table(
            [{"stage": k, "seconds": v.get("seconds"), "finished": v.get("finished")} for k, v in stages.items()],
            ["stage", "seconds", "finished"], left=("stage", "finished")))
    timings = probes.get("timings") or {}
    if timings:
        parts.append("<p class='muted'>probe engine: " + ", ".join(f"{_esc(k)} {_fmt_cell(v)}"
                                                                   for k, v in timings.items()) + "</p>")
    parts.append("<h2>Settings</h2>" + _table([{"setting": k, "value": json.dumps(v)} for k, v in cfg.items()],
                                             ["setting", "value"], left=("setting", "value")))
    parts.append("<h2>Environment</h2>" + _table([{"item": k, "value": v} for k, v in env.items()],
                                                ["item", "value"], left=("item", "value")))
    data = res.get("data", {})
    if data:
        parts.append("<h2>Data</h2>" + _table([{"item": k, "value": json.dumps(v) if isinstance(v, list) else v}
                                               for k, v in data.items()], ["item", "value"], left=("item", "value")))
    parts.append("</body></html>\n")
    return "\n".join(parts)

