"""Plots of an analysis (PNG, written atomically). The HTML report builds on these."""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure to a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        _figure().close(fig)
    return path


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


def plot_layers(rows: list[dict], directory: Path, title: str = "") -> list[Path]:
    """``accuracy.png`` (accuracy and SNR against layer) and ``clusters.png`` (noise per filter and
    cluster size against layer)."""
    plt = _figure()
    x = list(range(1, len(rows) + 1))
    names = [r["layer"] for r in rows]
    paths = []

    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(rows) + 3), 4))
    ax.plot(x, _values(rows, "accuracy"), "o-", color="tab:blue", label="layer accuracy")
    ax.set_xlabel("layer")
    ax.set_ylabel("test accuracy of the layer's FC", color="tab:blue")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    if any(k in rows[0] for k in ("snr",)) if rows else False:
        ax2 = ax.twinx()
        ax2.plot(x, _values(rows, "snr"), "s--", color="tab:red", label="SNR")
        ax2.set_ylabel("SNR (signal / noise elements per filter)", color="tab:red")
    ax.set_title(title or "accuracy and SNR per layer")
    ax.grid(alpha=0.3)
    paths.append(save_figure(fig, directory / "accuracy.png"))

    if rows and "noise_per_filter" in rows[0]:
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(rows) + 3), 4))
        ax.plot(x, _values(rows, "noise_per_filter_all"), "o-", label="noise elements per filter (all filters)")
        ax.plot(x, _values(rows, "noise_per_filter"), "o:", label="noise per filter (filters with a cluster)")
        ax.set_ylabel("noise elements per filter")
        ax2 = ax.twinx()
        ax2.plot(x, _values(rows, "cluster_size"), "s--", color="tab:green", label="mean cluster size")
        ax2.plot(x, _values(rows, "clusters_per_filter"), "^--", color="tab:purple", label="clusters per filter")
        ax2.set_ylabel("labels / clusters")
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        ax.set_xlabel("layer")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right")
        ax.set_title(title or "noise and clusters per layer")
        ax.grid(alpha=0.3)
        paths.append(save_figure(fig, directory / "clusters.png"))
    return paths


def plot_sweep(per_count: list[dict], fits: dict, rows: list[dict], directory: Path) -> list[Path]:
    """``sweep_error.png`` (error against L with the fit lines) and ``sweep_clusters.png``
    (cluster size, clusters per filter and SNR of the last layer against L)."""
    import numpy as np

    plt = _figure()
    directory = Path(directory)
    xs = np.array([c["num_labels"] for c in per_count], dtype=float)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.scatter([r["num_labels"] for r in rows], [r["error"] for r in rows], s=14, color="0.6", label="each subset")
    for key, style, label in (("max_error", "o-", "maximal error"), ("mean_error", "s-", "mean error")):
        ys = [c[key] for c in per_count]
        line, = ax.plot(xs, ys, style, label=label)
        f = fits.get(key, {})
        if f and all(math.isfinite(f.get(k, math.nan)) for k in ("a", "b")):
            grid = np.linspace(xs.min(), xs.max(), 50)
            ax.plot(grid, f["a"] + f["b"] * grid, "--", color=line.get_color(),
                    label=f"fit {f['a']:.3f} + {f['b']:.4f} L (R² {f['r2']:.2f})")
    ax.set_xlabel("number of labels L")
    ax.set_ylabel("test error rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("error against the number of labels")
    paths = [save_figure(fig, directory / "sweep_error.png")]

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key, label in zip(axes, ("mean_cluster_size", "mean_clusters_per_filter", "mean_snr"),
                              ("mean cluster size", "clusters per filter", "SNR")):
        ax.plot(xs, [c[key] for c in per_count], "o-")
        ax.set_xlabel("number of labels L")
        ax.set_title(f"last layer: {label}")
        ax.grid(alpha=0.3)
    paths.append(save_figure(fig, directory / "sweep_clusters.png"))
    return paths
