"""Stage 5: AFCC, applying the units' cluster connections (METHOD.md stage 5).

One module per concern, from the ground up:

* :mod:`.masks`: FC and conv masks from clusters, dilution, the random control;
* :mod:`.diluted`: the diluted network (a copy of the backbone up to the deepest masked layer
  plus its probe FC), masks made for it and applied to it;
* :mod:`.retrain`: masked retraining (masks re-applied after every step) and accuracy;
* :mod:`.cost`: parameters, MACs (``torch.utils.flop_counter``) and latency
  (``torch.utils.benchmark``);
* :mod:`.removal`: physical removal of units whose outgoing connections are all masked;
* :mod:`.export`: one versioned file (:func:`save`, :func:`load`);
* :mod:`.result`: :class:`AfccResult`, what AFCC returns: the networks, masks, accuracies, tables, files;
* :mod:`.apply`: AFCC in memory on a model and its analysis (:func:`apply`);
* :mod:`.stage`: AFCC on an analysed run directory (:func:`run_afcc`: load, apply, write).

A **mask** zeroes weights inside dense tensors (no speed-up by itself); a **removal** deletes
whole units, so tensors really shrink. Every name below is importable from ``filterlens.afcc``.
"""
from .apply import apply, choose_layers
from .cost import count_macs, measure_latency
from .diluted import DilutedNet, HookTrunk, apply_masks, build_diluted, make_masks, trainable_parameters
from .export import FORMAT, FORMAT_VERSION, MASK_NOTE, load, save
from .masks import LayerMask, connections, conv_mask, dilution, fc_mask, random_mask, random_masks
from .removal import prune, prune_support
from .result import AfccResult
from .retrain import TensorLoader, accuracy, retrain
from .stage import print_afcc, run_afcc

__all__ = [
    "FORMAT", "FORMAT_VERSION", "MASK_NOTE", "LayerMask", "DilutedNet", "HookTrunk", "TensorLoader",
    "fc_mask", "conv_mask", "dilution", "connections", "random_mask", "random_masks",
    "build_diluted", "make_masks", "apply_masks", "trainable_parameters", "retrain", "accuracy",
    "prune", "prune_support", "count_macs", "measure_latency", "save", "load", "run_afcc", "print_afcc",
    "AfccResult", "apply", "choose_layers",
]
