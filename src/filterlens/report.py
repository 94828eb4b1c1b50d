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
