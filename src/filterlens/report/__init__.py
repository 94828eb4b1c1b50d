"""Every plot and every HTML page: :mod:`.plots` (PNG figures), :mod:`.html` (``report.html``) and
:mod:`.compare` (``compare.html``: several runs and sweeps side by side); :mod:`.pages` renders both pages from
the Jinja2 templates in ``report/templates/``."""
from .compare import build_compare
from .html import build_report
from .plots import plot_afcc, plot_filter_matrix, plot_layers, plot_sweep, save_figure

__all__ = ["build_compare", "build_report", "plot_afcc", "plot_filter_matrix", "plot_layers", "plot_sweep",
           "save_figure"]
