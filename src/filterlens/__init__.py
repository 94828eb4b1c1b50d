"""filterlens: what each layer and each filter of a trained CNN does.

Implements Meir, Tzach, Hodassman, Tevet, Kanter, "Towards a universal mechanism
for successful deep learning" (arXiv 2309.07537): layer accuracies from frozen
layers with new FC probes, single-filter label matrices with their clusters,
noise and SNR, the label-count study, and AFCC dilution.
"""
from .errors import FilterlensError
from .results import load_run
from .version import __version__

__all__ = ["FilterlensError", "load_run", "__version__"]
