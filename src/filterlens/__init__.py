"""filterlens: what each layer and each unit (filter, attention head) of a trained image classifier does.

Implements Meir, Tzach, Hodassman, Tevet, Kanter, "Towards a universal mechanism for successful deep
learning" (arXiv 2309.07537): layer accuracies from frozen layers with new FC probes, single-unit label
matrices with their clusters, noise and SNR, the label-count study, and AFCC dilution.

    import filterlens
    analysis = filterlens.analyze(model, train, test, probe_epochs=10)   # any nn.Module, any dataset
    analysis.to_frame(); analysis.unit("layer3.1", 7); analysis.save("runs/mine")
    diluted = filterlens.afcc.apply(model, analysis)                     # AFCC in memory
    again = filterlens.load_run("runs/mine")                             # the Analysis of a run directory

``analyze``, ``load_run`` and ``afcc`` are imported on first use, so the command line starts without torch.
"""
from .errors import FilterlensError
from .version import __version__

__all__ = ["FilterlensError", "analyze", "afcc", "load_run", "__version__"]


def __getattr__(name: str):
    if name in ("analyze", "load_run"):
        from . import analysis

        return getattr(analysis, name)
    if name == "afcc":
        import importlib

        return importlib.import_module(".afcc", __name__)
    raise AttributeError(f"module 'filterlens' has no attribute {name!r}")
