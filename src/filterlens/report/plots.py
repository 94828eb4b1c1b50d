"""Every figure of filterlens (PNG, written atomically); :mod:`filterlens.sfp` and :mod:`filterlens.afcc`
return data, these functions draw it.

* :func:`plot_layers`: ``accuracy.png`` and ``clusters.png`` of an analysis;
* :func:`plot_filter_matrix`: one unit's matrix, raw and binarised, clusters as blocks;
* :func:`plot_afcc`: ``afcc.png``, accuracy against dilution;
* :func:`plot_sweep`: ``sweep_error.png`` and ``sweep_clusters.png`` of a label-count study.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import sfp
from ..files import write_with
from ..names import ACCURACY_PNG, CLUSTERS_PNG, SWEEP_CLUSTERS_PNG, SWEEP_ERROR_PNG


def _new_figure(figsize, nrows: int = 1, ncols: int = 1):
    """A matplotlib Figure on its own Agg canvas: no pyplot, no global backend change, nothing to close; a
    notebook shows it as it is."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols)


def save_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    return write_with(path, lambda fh: fig.savefig(fh, format=path.suffix.lstrip(".") or "png", dpi=110,
                                                 bbox_inches="tight"))


#: families tried, in order, for glyphs the default font lacks (label names of the glyphs data set are characters)
_CJK_FAMILIES = ("Noto Sans CJK SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "AR PL UKai CN", "AR PL UMing CN")


def label_fonts() -> list[str]:
    """The font families for label names: matplotlib's default, then every installed CJK family of
    :data:`_CJK_FAMILIES` (matplotlib falls back glyph by glyph along the list), so a character label draws as
    the character, not as a box."""
    from matplotlib import font_manager, rcParams

    installed = {f.name for f in font_manager.fontManager.ttflist if f.weight in (400, "normal", "regular")}
    return [*rcParams["font.sans-serif"][:1], *(f for f in _CJK_FAMILIES if f in installed)]


def _values(rows, key):
    out = []
    for r in rows:
        v = r.get(key)
        try:
            v = float(v)
        except (TypeError, ValueError):
            v = math.nan
        out.append(v if math.isfinite(v) else math.nan)
    return out


def unit_word(rows) -> str:
    """'filter', 'head' or 'unit' (a mix), from the rows' ``unit_kind``: what the plots and the report call units."""
    kinds = {r.get("unit_kind") or "filter" for r in rows}
    return kinds.pop() if len(kinds) == 1 else "unit"


def layer_figures(rows: list[dict], title: str = "") -> dict:
    """The analysis' figures by file name: ``accuracy.png`` (accuracy and SNR against layer) and
    ``clusters.png`` (noise per unit, cluster size and clusters per unit against layer)."""
    x = list(range(1, len(rows) + 1))
    names = [r["layer"] for r in rows]
    unit = unit_word(rows)
    out = {}
    fig, ax = _new_figure((max(6, 0.5 * len(rows) + 3), 4))
    ax.plot(x, _values(rows, "accuracy"), "o-", color="tab:blue", label="layer accuracy")
    ax.set_xlabel("layer")
    ax.set_ylabel("test accuracy of the layer's FC", color="tab:blue")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    if rows and "snr" in rows[0]:
        ax2 = ax.twinx()
        ax2.plot(x, _values(rows, "snr"), "s--", color="tab:red", label="SNR")
        ax2.set_ylabel(f"SNR (signal / noise elements per {unit})", color="tab:red")
    ax.set_title(title or "accuracy and SNR per layer")
    ax.grid(alpha=0.3)
    out[ACCURACY_PNG] = fig

    if rows and "noise_per_filter" in rows[0]:
        fig, ax = _new_figure((max(6, 0.5 * len(rows) + 3), 4))
        ax.plot(x, _values(rows, "noise_per_filter_all"), "o-", label=f"noise elements per {unit} (all {unit}s)")
        ax.plot(x, _values(rows, "noise_per_filter"), "o:", label=f"noise per {unit} ({unit}s with a cluster)")
        ax.set_ylabel(f"noise elements per {unit}")
        ax2 = ax.twinx()
        ax2.plot(x, _values(rows, "cluster_size"), "s--", color="tab:green", label="mean cluster size")
        ax2.plot(x, _values(rows, "clusters_per_filter"), "^--", color="tab:purple", label=f"clusters per {unit}")
        ax2.set_ylabel("labels / clusters")
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        ax.set_xlabel("layer")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right")
        ax.set_title(title or "noise and clusters per layer")
        ax.grid(alpha=0.3)
        out[CLUSTERS_PNG] = fig
    return out


def plot_layers(rows: list[dict], directory: Path, title: str = "") -> list[Path]:
    """Write :func:`layer_figures` into ``directory``."""
    return [save_figure(fig, Path(directory) / name) for name, fig in layer_figures(rows, title).items()]


def plot_sweep(per_count: list[dict], fits: dict, rows: list[dict], directory: Path) -> list[Path]:
    """Write :func:`sweep_figures` into ``directory``: ``sweep_error.png`` and ``sweep_clusters.png``."""
    directory = Path(directory)
    return [save_figure(fig, directory / name) for name, fig in sweep_figures(per_count, fits, rows).items()]


def sweep_figures(per_count: list[dict], fits: dict, rows: list[dict]) -> dict:
    """The label-count study's figures by file name: ``sweep_error.png`` (the error of every model, the maximal and
    mean error per L with their fit lines, against L on a linear axis and, beside it, a logarithmic one, where
    a range like the papers' 3 to 1,000 labels shows the small counts) and ``sweep_clusters.png`` (cluster size,
    clusters per filter and SNR of the last layer against L)."""
    import numpy as np

    xs = np.array([c["num_labels"] for c in per_count], dtype=float)
    fig, axes = _new_figure((12, 4), 1, 2)
    for ax, scale in zip(axes, ("linear", "log")):
        ax.scatter([r["num_labels"] for r in rows], [r["error"] for r in rows], s=14, color="0.6", label="each subset")
        for key, style, label in (("max_error", "o-", "maximal error"), ("mean_error", "s-", "mean error")):
            line, = ax.plot(xs, [c[key] for c in per_count], style, label=label)
            f = fits.get(key, {})
            if f and all(math.isfinite(f.get(k, math.nan)) for k in ("a", "b")):
                grid = (np.geomspace if scale == "log" else np.linspace)(xs.min(), xs.max(), 50)
                ax.plot(grid, f["a"] + f["b"] * grid, "--", color=line.get_color(),
                        label=f"fit {f['a']:.3f} + {f['b']:.3g} L (R² {f['r2']:.2f})")
        ax.set_xscale(scale)
        ax.set_xlabel("number of labels L" + (" (log scale)" if scale == "log" else ""))
        ax.set_ylabel("test error rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("error against the number of labels")
    figures = {SWEEP_ERROR_PNG: fig}

    fig, axes = _new_figure((12, 3.6), 1, 3)
    for ax, key, label in zip(axes, ("mean_cluster_size", "mean_clusters_per_filter", "mean_snr"),
                              ("mean cluster size", "clusters per filter", "SNR")):
        ax.plot(xs, [c[key] for c in per_count], "o-")
        ax.set_xlabel("number of labels L")
        ax.set_title(f"last layer: {label}")
        ax.grid(alpha=0.3)
    figures[SWEEP_CLUSTERS_PNG] = fig
    return figures


def plot_afcc(rows: list[dict], path, title: str = "", acc_before: float | None = None) -> Path:
    """Write :func:`afcc_figure` to ``path`` (``afcc.png``)."""
    return save_figure(afcc_figure(rows, title, acc_before), Path(path))


def afcc_figure(rows: list[dict], title: str = "", acc_before: float | None = None):
    """Test accuracy against dilution, AFCC and the random control, at each threshold."""
    rows = sorted(rows, key=lambda r: r["dilution"])
    x = [r["dilution"] for r in rows]
    fig, ax = _new_figure((6.5, 4.2))
    ax.plot(x, [r["acc_retrained"] for r in rows], "o-", color="tab:blue", label="AFCC, retrained")
    sd = [r.get("acc_random_retrained_sd") or 0.0 for r in rows]
    draws = rows[0].get("random_draws", 1) if rows else 1
    ax.errorbar(x, [r["acc_random_retrained"] for r in rows], yerr=sd if any(sd) else None, fmt="s-", color="tab:red",
                capsize=3, label="random control, retrained" + (f" (mean ± sd of {draws} draws)" if draws > 1 else ""))
    ax.plot(x, [r["acc_masked"] for r in rows], "o:", color="tab:blue", alpha=0.5, label="AFCC, masked (no retraining)")
    ax.plot(x, [r["acc_random_masked"] for r in rows], "s:", color="tab:red", alpha=0.5,
            label="random, masked (no retraining)")
    if acc_before is not None:
        ax.axhline(acc_before, color="0.4", lw=1, ls="--", label=f"before masking ({acc_before:.3f})")
    for r in rows:
        ax.annotate(f"t={r['threshold']:g}", (r["dilution"], r["acc_retrained"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    ax.set_xlabel("dilution (removed / total masked weights)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title or "AFCC: accuracy against dilution", fontsize=10)
    return fig


def filter_matrix_figure(matrix: Any, threshold: float, clusters: Sequence[Sequence[int]],
                   label_names: Sequence[str] | None, title: str | None, normalise: str,
                   max_ticks: int = 100):
    """Build (without saving) the two-panel figure of :func:`plot_filter_matrix`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    m = np.asarray(matrix.detach().cpu() if hasattr(matrix, "detach") else matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"matrix must be one (L, L) filter matrix; got shape {np.shape(matrix)}")
    L = m.shape[0]
    binary, _ = sfp.binarise_matrices(m, threshold, normalise)  # checks threshold and normalise
    if label_names is None:
        label_names = [str(i) for i in range(L)]
    if len(label_names) != L:
        raise ValueError(f"label_names has {len(label_names)} entries; expected {L}")
    norm, dead = sfp.normalise_matrices(m, normalise)
    shown = norm
    if dead:  # no normalisation defined; show the raw matrix scaled to [-1, 1]
        peak = float(np.abs(m).max())
        shown = m / peak if peak > 0 else m
    order = sfp.cluster_order(clusters, L)
    ix = np.ix_(order, order)
    names = [str(label_names[i]) for i in order]

    side = min(4.0 + 0.12 * L, 14.0)
    fig = Figure(figsize=(2 * side + 1.5, side + 0.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    im = axes[0].imshow(np.asarray(shown[ix], dtype=np.float64), cmap="RdBu_r", vmin=-1,
                        vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=axes[0], fraction=0.046, pad=0.04)
    axes[1].imshow(binary[ix].astype(np.float64), cmap="Greys", vmin=0, vmax=1,
                   interpolation="nearest")
    axes[0].set_title("normalised" + (" (max <= 0: no clusters)" if dead else f" ({normalise})"))
    axes[1].set_title(f"binarised (> {threshold:g})")
    step = max(1, int(math.ceil(L / max(1, max_ticks))))
    ticks = list(range(0, L, step))
    fontsize = 8 if L <= 30 else 6 if L <= 60 else 4
    fonts = label_fonts()
    for ax in axes:
        ax.set_xticks(ticks)
        ax.set_xticklabels([names[t] for t in ticks], rotation=90, fontsize=fontsize, fontfamily=fonts)
        ax.set_yticks(ticks)
        ax.set_yticklabels([names[t] for t in ticks], fontsize=fontsize, fontfamily=fonts)
        ax.set_xlabel("output unit")
        ax.set_ylabel("input label")
        pos = 0
        for cl in clusters:
            k = len(cl)
            ax.add_patch(Rectangle((pos - 0.5, pos - 0.5), k, k, fill=False,
                                   edgecolor="tab:orange", linewidth=1.2))
            pos += k
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_filter_matrix(matrix: Any, threshold: float, clusters: Sequence[Sequence[int]],
                       label_names: Sequence[str] | None, path: str | os.PathLike,
                       title: str | None = None, normalise: str = "max",
                       max_ticks: int = 100) -> Path:
    """Plot one filter matrix: normalised heatmap and binarised matrix side by side.

    METHOD.md stage 3 (``filterlens.sfp`` computes the matrices). Rows and columns are reordered so that the cluster
    labels come first, grouped by cluster (clusters appear as diagonal blocks, outlined), then the remaining
    labels. Tick labels are the (reordered) label names; at most ``max_ticks`` of them are
    drawn per axis (every k-th when L is larger). x axis: "output unit", y axis: "input
    label". Uses matplotlib's Agg canvas directly (imported lazily; no pyplot, no global
    backend change). Written atomically: saved to a temporary file in the target directory,
    then ``os.replace``; the format follows the file suffix (png when none).

    Parameters
    ----------
    matrix : array or tensor, shape (L, L)
        Raw filter matrix ``F_c``.
    threshold : float in (0, 1)
    clusters : sequence of sequences of int
        The filter's clusters (e.g. ``LayerSFP.clusters_[c]``).
    label_names : sequence of str or None
        None: label indices.
    path : str or path-like
    title : str, optional
    normalise : {"max", "column-centred"}, default "max"

    Returns
    -------
    pathlib.Path
        The written file.
    """
    path = Path(path)
    fig = filter_matrix_figure(matrix, threshold, clusters, label_names, title, normalise, max_ticks)

    fmt = path.suffix.lstrip(".").lower() or "png"
    return write_with(path, lambda fh: fig.savefig(fh, format=fmt, dpi=120))
