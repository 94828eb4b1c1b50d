"""The contract a model keeps with filterlens, checked before any work with one dry forward pass.

filterlens analyses an ``nn.Module`` whose weights are real float32 tensors (not on the meta device; float64
or float16 weights are refused rather than converted behind the user's back), whose forward pass on a batch
of inputs (N, C, H, W) returns the class scores as one tensor (N, L) with L the number of labels (a named
tuple with ``logits``, as torchvision's GoogLeNet and Inception give in training mode, is read through it),
and which has at least one layer filterlens can analyse (:func:`filterlens.models.list_layers`). Each
breach is one line naming what is wrong (:class:`~filterlens.errors.FilterlensError`); the model is run
under ``torch.no_grad`` in eval mode (its modes restored), so nothing in it changes.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import FilterlensError
from ..utils import eval_mode
from .layers import resolve_layers


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120]}" if text else type(exc).__name__


def check_model(model, input_shape, num_labels: int | None = None, what: str = "the model", layers="all",
                tokens: str = "all") -> int:
    """Refuse (one line) a model that breaks the contract above for inputs of ``input_shape`` (C, H, W) and
    ``num_labels`` labels (None: not checked), with ``layers`` (a selection, e.g. ``all``; None: not checked)
    giving at least one layer; returns the number of class scores it gives."""
    if not isinstance(model, nn.Module):
        raise FilterlensError(f"{what} is a {type(model).__name__}; give a torch.nn.Module")
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    if not any(True for _ in model.parameters()):
        raise FilterlensError(f"{what} has no parameters; give a trained torch.nn.Module")
    on_meta = [n for n, t in tensors if t.is_meta]
    if on_meta:
        raise FilterlensError(f"{what} has tensors on the meta device, without values ('{on_meta[0]}'); load its "
                              "weights first (e.g. model.to_empty(device='cpu') and model.load_state_dict(...))")
    kinds = sorted({str(t.dtype).removeprefix("torch.") for _, t in tensors if t.is_floating_point()} - {"float32"})
    if kinds:
        name = next(n for n, t in tensors if str(t.dtype).removeprefix("torch.") == kinds[0])
        raise FilterlensError(f"{what} has {kinds[0]} weights ('{name}'); filterlens analyses float32 models (in "
                              "bfloat16 autocast where the hardware has it): give model.float()")
    device = next(model.parameters()).device
    c, h, w = (int(s) for s in input_shape)
    shape = (c, h, w)
    x = torch.zeros((2, *shape), device=device)
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - the user's forward (SystemExit included): one line
        raise FilterlensError(f"{what}: its forward pass on a batch of inputs of shape {shape} raised "
                              f"{_short(exc)}") from None
    if isinstance(out, tuple) and hasattr(out, "logits") and torch.is_tensor(out.logits):
        out = out.logits
    if isinstance(out, dict):
        keys = ", ".join(map(str, list(out)[:4]))
        raise FilterlensError(f"{what}: its forward pass returns a dict (keys {keys}); filterlens needs the class "
                              "scores as one tensor (N, labels): return the logits")
    if isinstance(out, (tuple, list)):
        raise FilterlensError(f"{what}: its forward pass returns a {type(out).__name__} of {len(out)}; filterlens "
                              "needs the class scores as one tensor (N, labels): return the logits")
    if not torch.is_tensor(out) or out.ndim != 2 or out.shape[0] != 2:
        got = f"shape {tuple(out.shape)}" if torch.is_tensor(out) else f"a {type(out).__name__}"
        raise FilterlensError(f"{what}: its forward pass on 2 inputs returns {got}; filterlens needs the class scores "
                              "as one tensor (N, labels)")
    if num_labels is not None and out.shape[1] != num_labels:
        raise FilterlensError(f"{what} gives {out.shape[1]} class scores per input but the data has {num_labels} "
                              "labels; give a model whose output size is the number of labels (or the data it was "
                              "made for)")
    if layers is not None and not resolve_layers(model, shape, layers, tokens):
        raise FilterlensError(f"{what} has no layer filterlens can analyse (no module gives a 4-D map or attention "
                              "heads); name one with --layers MODULE.PATH (filterlens layers lists them)")
    return int(out.shape[1])
