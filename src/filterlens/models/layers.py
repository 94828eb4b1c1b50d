"""Layer discovery: which modules are a model's layers, their output shapes, and selecting among them.

Layers are named by their ``named_modules()`` dotted path. For our VGGs each layer is one Conv-BN-ReLU block
together with the max-pool that follows it (``features.0`` ...), for torchvision's VGG-BN the module whose
output ends the block (the ReLU, or the pool right after it), for EfficientNet-B0 and other ``features``-style
models the children of ``features`` (its stages), otherwise the top-level children whose output is a 4-D map.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from ..errors import FilterlensError, closest


@dataclass
class Layer:
    """One analysable layer: its module path, position, filters and output shape (C, H, W)."""

    index: int
    name: str
    filters: int
    shape: tuple[int, int, int]

    @property
    def features(self) -> int:
        c, h, w = self.shape
        return c * h * w

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["features"] = self.features
        return d


def candidate_layers(model: nn.Module) -> list[str]:
    """Module paths whose outputs are the model's layers (before shapes are known)."""
    if hasattr(model, "filterlens_layers"):
        return list(model.filterlens_layers())
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        kids = list(features.named_children())
        if any(isinstance(m, nn.Conv2d) for _, m in kids):  # flat VGG-style: conv, bn, relu, [pool]
            names, i = [], 0
            while i < len(kids):
                if isinstance(kids[i][1], nn.Conv2d):
                    j = i + 1
                    while j < len(kids) and isinstance(kids[j][1], (nn.BatchNorm2d, nn.ReLU)):
                        j += 1
                    if j < len(kids) and isinstance(kids[j][1], nn.MaxPool2d):
                        j += 1
                    names.append(f"features.{kids[j - 1][0]}")
                    i = j
                else:
                    i += 1
            return names
        return [f"features.{n}" for n, _ in kids]  # EfficientNet, MobileNet, ...: its stages
    skip = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Dropout, nn.Identity, nn.GroupNorm,
            nn.LayerNorm)
    return [n for n, m in model.named_children() if not isinstance(m, skip)]


@torch.no_grad()
def list_layers(model: nn.Module, input_size: tuple[int, int, int]) -> list[Layer]:
    """The analysable layers with their output shapes for one input of ``input_size`` (C, H, W).

    Runs one forward pass on zeros in eval mode (the caller's mode is restored).
    """
    names = candidate_layers(model)
    shapes: dict[str, tuple] = {}
    handles = []
    try:
        for n in names:
            handles.append(model.get_submodule(n).register_forward_hook(
                lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:]) if torch.is_tensor(o) else None)))
        was_training = {m: m.training for m in model.modules()}
        model.eval()
        try:
            device = next(model.parameters()).device
            model(torch.zeros(1, *input_size, device=device))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FilterlensError(f"the model does not run on inputs of size {tuple(input_size)} ({first}); "
                                  "choose a larger --image-size or a model for small images") from None
        finally:
            for m, flag in was_training.items():
                m.training = flag
    finally:
        for h in handles:
            h.remove()
    layers = []
    for n in names:
        s = shapes.get(n)
        if s is not None and len(s) == 3:
            layers.append(Layer(len(layers), n, int(s[0]), (int(s[0]), int(s[1]), int(s[2]))))
    return layers


def select_layers(layers: list[Layer], spec) -> list[Layer]:
    """Choose layers by ``"all"``, indices (negative allowed), ``"last:N"``, or dotted names.

    Anything unknown or out of range is an error that lists the valid layers.
    """
    valid = ", ".join(f"{l.index}:{l.name}" for l in layers)
    if spec is None or spec == "all":
        return list(layers)
    items = spec if isinstance(spec, (list, tuple)) else [t.strip() for t in str(spec).split(",") if t.strip()]
    if not items:
        raise FilterlensError(f"the layer list '{spec}' is empty; valid layers: {valid}")
    chosen: list[Layer] = []
    by_name = {l.name: l for l in layers}
    for item in items:
        text = str(item)
        if text.startswith("last:"):
            try:
                k = int(text[5:])
            except ValueError:
                k = 0
            if not 1 <= k <= len(layers):
                raise FilterlensError(f"layer selection '{text}' is out of range; valid: last:1..last:{len(layers)}")
            picks = layers[-k:]
        elif text.lstrip("-").isdigit():
            i = int(text)
            if not -len(layers) <= i < len(layers):
                raise FilterlensError(f"layer index {i} is out of range; valid: {-len(layers)}..{len(layers) - 1} "
                                      f"({valid})")
            picks = [layers[i]]
        elif text in by_name:
            picks = [by_name[text]]
        else:
            raise FilterlensError(f"unknown layer '{text}'{closest(text, by_name)}; valid layers: {valid}")
        for p in picks:
            if p not in chosen:
                chosen.append(p)
    return sorted(chosen, key=lambda l: l.index)
