"""Every plot and every HTML page: :mod:`.plots` (PNG figures) and :mod:`.html` (``report.html``)."""
from .html import build_report
from .plots import plot_afcc, plot_filter_matrix, plot_layers, plot_sweep, save_figure

__all__ = ["build_report", "plot_afcc", "plot_filter_matrix", "plot_layers", "plot_sweep", "save_figure"]
