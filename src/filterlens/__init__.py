"""filterlens: what each layer and each filter of a trained CNN does.

Implements Meir, Tzach, Hodassman, Tevet, Kanter, "Towards a universal mechanism
for successful deep learning" (arXiv 2309.07537): layer accuracies from frozen
layers with new FC probes, single-filter label matrices with their clusters,
noise and SNR, the label-count study, and AFCC dilution.
"""
__version__ = "0.1.0"

from .errors import FilterlensError  # noqa: E402
from .results import load_run  # noqa: E402

__all__ = ["FilterlensError", "load_run", "__version__"]
