"""The diluted network of AFCC (METHOD.md stage 5): the frozen backbone up to layer b, then b's probe FC.

:func:`build_diluted` makes a DEEP COPY of the trained model up to the deepest masked layer b
(``features[:k+1]`` when b is ``features.k`` and that prefix reproduces b's output; otherwise
the whole copied model stopped at b by a hook), b's (optionally pooled, as the run's
``probe_pool``) flattened output, and b's bias-free probe FC. The user's model is never
modified. :func:`make_masks` turns per-layer clusters into the masks of that network,
:func:`apply_masks` zeroes what they remove.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, is_dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..capture import Capture, pooled_shape
from ..config import parse_pool
from ..errors import FilterlensError
from ..hooks import Tap, run, taps
from ..models import VGGBlock, list_layers
from ..models.nodes import node_links
from ..models.units import reader
from .masks import LayerMask, conv_mask, fc_mask

# modules that act on every channel separately (channel c in -> channel c out); in eval mode
_CHANNELWISE = ("ReLU", "ReLU6", "LeakyReLU", "MaxPool2d", "AvgPool2d", "Identity", "Dropout", "Dropout2d")


class HookTrunk(nn.Module):
    """A whole (copied) model, run until ``layer`` and stopped there by a hook that reads its units.

    Used for layers a prefix of ``features`` cannot reach (every family but VGG-like chains): the
    units are read as the capture reads them (:mod:`filterlens.models.units`: a map, a channels-last
    map, attention heads), units first. The hook is added per call and removed in ``finally``.
    """

    def __init__(self, model: nn.Module, layer: str, hook: str | None = None, layout: str = "NCHW", units: int = 0,
                 tokens: str = "all"):
        super().__init__()
        self.model = model
        self.layer, self.hook, self.layout, self.units, self.tokens = layer, hook, layout, units, tokens

    def forward(self, x):
        """Run the model on ``x`` until ``layer`` and return the layer's units, units first: (N, U, A, B)."""
        box: dict[str, Any] = {}
        pre, read = reader(self.layout, self.units, self.tokens)
        with taps(self.model, {self.layer: Tap(self.hook or self.layer, lambda *a: box.update(out=read(*a)), pre)},
                  stop=self.layer):
            run(self.model, x)
        if box.get("out") is None:
            raise RuntimeError(f"layer '{self.layer}' did not run in the model's forward")
        return box["out"]


def hook_trunk(model: nn.Module, layer) -> nn.Sequential:
    """The trunk of a layer reached by a hook (``layer``: a :class:`~filterlens.models.Layer` or its dict)."""
    get: Callable[..., Any] = layer.get if isinstance(layer, dict) else (lambda k, d=None: getattr(layer, k, d))
    return nn.Sequential(HookTrunk(model, get("name"), get("hook"), get("layout") or "NCHW", get("units") or 0,
                                   get("tokens") or "all"))


class DilutedNet(nn.Module):
    """Backbone up to layer b (``trunk``, a Sequential), b's (pooled) flattened output, b's probe FC.

    ``forward(x, start=0)`` runs ``trunk[start:]`` then the head, so cached activations at
    trunk position ``start`` can be fed directly. ``info`` (plain data) describes the
    structure: the layer range, where each layer's conv and batch norm live, the pool.
    """

    afcc_masks: list[LayerMask]  # a network loaded from a file (afcc.export.load): the file's masks and facts
    afcc_meta: dict[str, Any]

    def __init__(self, trunk: nn.Sequential, fc: nn.Linear, fc_shape, pool_hw=None, info: dict | None = None):
        super().__init__()
        self.trunk = trunk
        self.fc = fc
        self.fc_shape = tuple(int(s) for s in fc_shape)
        self.pool_hw = tuple(pool_hw) if pool_hw else None
        self.info = dict(info or {})

    def pool(self, h):
        """``h`` max-pooled to ``pool_hw`` (the run's ``probe_pool``) when that is set and differs from its
        H x W; else ``h`` as it is."""
        if self.pool_hw is not None and tuple(h.shape[2:]) != self.pool_hw:
            h = F.adaptive_max_pool2d(h, self.pool_hw)
        return h

    def prefix(self, x, stop: int):
        """``trunk[:stop]`` (and the pool when ``stop`` is the whole trunk): the cacheable part."""
        for i in range(stop):
            x = self.trunk[i](x)
        return self.pool(x) if stop >= len(self.trunk) else x

    def forward(self, x, start: int = 0):
        """The probe FC's logits (N, L) from ``trunk[start:]`` on ``x``: images when ``start`` is 0, else the
        cached activations at trunk position ``start``."""
        for i in range(start, len(self.trunk)):
            x = self.trunk[i](x)
        return self.fc(self.pool(x).flatten(1))

    def extra_repr(self) -> str:
        """The layers, the FC's input shape, the pool and whether units were removed, for ``repr``."""
        return (f"layers={self.info.get('layers')}, fc_shape={self.fc_shape}, pool_hw={self.pool_hw}, "
                f"pruned={bool(self.info.get('pruned'))}")


def _is_channelwise(module) -> bool:
    return type(module).__name__ in _CHANNELWISE


def _locate_conv(trunk, pos: int, prev_pos: int) -> dict | None:
    """Where the conv (and batch norm) whose output channels ARE layer l's channels live in ``trunk``.

    ``pos``: trunk index of the module that ends layer l; ``prev_pos``: that of layer l-1 (-1 if
    none). filterlens VGG: ``trunk[pos]`` is a VGGBlock (conv, bn inside). Flat layouts
    (torchvision VGG-BN): the last Conv2d before ``pos``, with only batch norm and channel-wise
    modules after it up to ``pos``, and only channel-wise modules between layer l-1 and it.
    """
    m = trunk[pos]
    if isinstance(m, VGGBlock):
        return {"conv": f"trunk.{pos}.conv", "bn": f"trunk.{pos}.bn", "pos": pos}
    bn = None
    j = pos
    while j > prev_pos:
        mj = trunk[j]
        if isinstance(mj, nn.Conv2d):
            break
        if isinstance(mj, nn.BatchNorm2d):
            if bn is not None:
                return None
            bn = f"trunk.{j}"
        elif not _is_channelwise(mj):
            return None
        j -= 1
    else:
        return None
    if any(not _is_channelwise(trunk[i]) for i in range(prev_pos + 1, j)):
        return None
    return {"conv": f"trunk.{j}", "bn": bn, "pos": j}


def _prefix_trunk(model, layer, input_size):
    """``features[:k+1]`` (copied) when layer b is ``features.k`` and that prefix reproduces b's output."""
    head, _, idx = layer.name.rpartition(".")
    feats = getattr(model, "features", None)
    if head != "features" or not idx.isdigit() or not isinstance(feats, nn.Sequential) or int(idx) >= len(feats):
        return None
    kids = list(feats.children())
    trunk = nn.Sequential(*[copy.deepcopy(m) for m in kids[: int(idx) + 1]])
    trunk.eval()
    device = next(model.parameters()).device
    x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0)).to(device)
    with Capture(model, [layer]) as cap:
        ref = cap.forward(x)[layer.name]
    with torch.no_grad():
        try:
            out = trunk(x).float()
        except Exception:  # noqa: BLE001 - any failure means: not a plain prefix
            return None
    if out.shape != ref.shape or not torch.allclose(out, ref, rtol=1e-4, atol=1e-5):
        return None
    return trunk


def _check_consecutive(chosen, all_layers) -> None:
    for a, b in zip(chosen, chosen[1:]):
        if b.index != a.index + 1:
            between = all_layers[a.index + 1].name
            raise FilterlensError(f"layers '{a.name}' and '{b.name}' are not consecutive ('{between}' lies between); "
                                  "AFCC conv masks join consecutive layers: give a range such as last:3 or "
                                  f"{a.name},{between},...")


def build_diluted(model, layers, fc_weight, input_size, pool: str | None = "none", spec=None, tokens: str = "all"):
    """The diluted network's starting point (no mask yet) for ``layers`` of ``model``.

    Parameters
    ----------
    model : the trained network (NOT modified: the needed modules are deep-copied).
    layers : one layer name, or consecutive layer names (``named_modules`` paths, as
        :func:`filterlens.models.list_layers`); the deepest is b.
    fc_weight : b's probe FC weight, (L, C, H, W) or (L, C*H*W) with (C, H, W) b's (pooled) shape.
    input_size : (channels, height, width) of one input.
    pool : the run's ``probe_pool`` (``none``, ``HxW``, ``max:N``).
    spec : optional :class:`~filterlens.models.ModelSpec`, kept so that :func:`save` can record it.

    Returns a :class:`DilutedNet` in eval mode on the model's device: the copied trunk
    (``features[:k+1]`` when b is ``features.k`` of a features-first model, else the whole copied
    model stopped at b by a hook), the optional adaptive max-pool, and a bias-free Linear
    holding ``fc_weight``.
    """
    pool_text = "none" if pool is None else str(pool)
    parsed = parse_pool(pool_text)
    input_size = tuple(int(s) for s in input_size)
    all_layers = list_layers(model, input_size, "blocks", [layers] if isinstance(layers, str) else list(layers),
                             tokens)
    chosen = _chosen_layers(all_layers, layers)
    b = chosen[-1]
    C, H, W = pooled_shape(b.shape, parsed, b.unit_kind)
    w = torch.as_tensor(fc_weight).detach().float().cpu()
    L = int(w.shape[0])
    if w.numel() != L * C * H * W:
        raise FilterlensError(f"the FC weight has shape {tuple(w.shape)}; layer '{b.name}' (output {b.shape}, "
                              f"probe_pool {pool_text}) needs ({L}, {C}, {H}, {W})")
    fc = nn.Linear(C * H * W, L, bias=False)
    with torch.no_grad():
        fc.weight.copy_(w.reshape(L, -1))
    trunk = _prefix_trunk(model, b, input_size)
    if trunk is not None:
        structure = {"mode": "prefix", "source": "features", "trunk_len": len(trunk)}
    else:
        trunk = hook_trunk(copy.deepcopy(model), b)
        structure = {"mode": "hook", "source": None, "trunk_len": len(trunk)}
    pool_hw = None if (H, W) == tuple(b.shape[1:]) else [H, W]
    info: dict[str, Any] = {
        "layers": [l.name for l in chosen], "deepest": b.name, "input_size": list(input_size),
        "unit": {"name": b.name, "hook": b.hook, "layout": b.layout, "units": b.units, "tokens": b.tokens,
                 "unit_kind": b.unit_kind},
        "pool": pool_text, "pool_hw": pool_hw, "fc_shape_original": [L, C, H, W],
        "layer_shapes": {l.name: list(l.shape) for l in chosen}, **structure, "convs": {}, "linears": {},
        "nodes": {}, "pruned": None,
        "spec": asdict(spec) if is_dataclass(spec) and not isinstance(spec, type) else spec}
    net = DilutedNet(trunk, fc, (L, C, H, W), pool_hw, info)
    if structure["mode"] == "hook":
        _locate_linears(trunk[0].model, chosen, info)
    if structure["mode"] == "prefix":
        _locate_convs(net, chosen, all_layers, info)
    net.info = info
    device = next(model.parameters()).device
    return net.to(device).eval()


def _chosen_layers(all_layers: list, layers) -> list:
    """The layers named by ``layers`` (one name or consecutive names), in depth order; an empty list, an unknown or
    repeated name, or layers that are not consecutive is refused in one line."""
    by_name = {l.name: l for l in all_layers}
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise FilterlensError("no layer given for AFCC; give one layer or a range of consecutive layers")
    for n in names:
        if n not in by_name:
            raise FilterlensError(f"unknown layer '{n}'; valid layers: {', '.join(by_name)}")
    if len(set(names)) != len(names):
        raise FilterlensError(f"layer list {names} repeats a layer")
    chosen = sorted((by_name[n] for n in names), key=lambda l: l.index)
    _check_consecutive(chosen, all_layers)
    return chosen


def _locate_convs(net: DilutedNet, chosen: list, all_layers: list, info: dict) -> None:
    """A prefix trunk (``features[:k+1]``): record in ``info["convs"]`` the conv that makes each chosen layer's
    units, where one plain conv does (as many output channels as the layer has units, reading the previous layer's
    units, no groups), so its masks can act on that conv's weights."""
    trunk = net.trunk
    pos = {l.name: int(l.name.rpartition(".")[2]) for l in all_layers
           if l.name.rpartition(".")[0] == "features" and l.name.rpartition(".")[2].isdigit()}
    for l in chosen:
        prev = all_layers[l.index - 1] if l.index > 0 else None
        if l.name not in pos or (prev is not None and prev.name not in pos):
            continue
        loc = _locate_conv(trunk, pos[l.name], pos[prev.name] if prev is not None else -1)
        if loc is None:
            continue
        conv = net.get_submodule(loc["conv"])
        fits_prev = prev is None or conv.in_channels == prev.units
        if conv.groups != 1 or conv.out_channels != l.units or not fits_prev:
            continue
        info["convs"][l.name] = loc


def _locate_linears(model, chosen, info: dict) -> None:
    """Node layers of the range: the Linear making each one's nodes and the one reading them
    (:func:`~filterlens.models.nodes.node_links`, paths in ``model``) in ``info["nodes"]``; where the Linear reading
    layer l-1's nodes is the one making layer l's, it joins the two as a conv joins two conv layers
    (``info["linears"][l]``: its path in the diluted network)."""
    for l in chosen:
        if l.unit_kind == "node":
            links = node_links(model, l.hook_module, l.layout, l.units)
            info["nodes"][l.name] = {"producer": links.producer, "consumer": links.consumer}
    for prev, cur in zip(chosen, chosen[1:]):
        a, b = info["nodes"].get(prev.name), info["nodes"].get(cur.name)
        if a and b and a["consumer"] is not None and a["consumer"] == b["producer"]:
            info["linears"][cur.name] = {"linear": f"trunk.0.model.{b['producer']}", "prev": prev.name}


def make_masks(net, clusters: dict) -> list[LayerMask]:
    """AFCC masks of a :class:`DilutedNet` from per-layer clusters (``{layer: LayerSFP.clusters_}``).

    Conv masks for every consecutive pair of ``net.info["layers"]`` (in layer order; between two node
    layers: the mask of the Linear joining them, kind ``linear``), then the FC mask of the deepest layer. A conv
    that cannot be located (architectures other than filterlens VGG and torchvision VGG-BN), or two node layers
    that no one Linear joins, is a :class:`FilterlensError`.
    """
    layers = net.info["layers"]
    missing = [n for n in layers if n not in clusters]
    if missing:
        raise FilterlensError(f"no clusters given for layer '{missing[0]}'; need clusters of {', '.join(layers)}")
    masks = []
    for prev, cur in zip(layers, layers[1:]):
        lin = (net.info.get("linears") or {}).get(cur)
        if lin is not None:  # (nodes of cur, nodes of prev): a conv kernel of size 1x1
            w = net.get_parameter(lin["linear"] + ".weight")
            masks.append(LayerMask(cur, "linear", lin["linear"] + ".weight",
                                   conv_mask(clusters[prev], clusters[cur], (*w.shape, 1, 1)), prev))
            continue
        loc = net.info["convs"].get(cur)
        if loc is None:
            raise FilterlensError(f"conv masks between '{prev}' and '{cur}' need the conv feeding '{cur}', which "
                                  "cannot be located in this architecture (supported: filterlens VGG, torchvision "
                                  "VGG-BN, and two FC node layers one Linear joins); use "
                                  f"--layers {layers[-1]} for the FC mask only")
        w = net.get_parameter(loc["conv"] + ".weight")
        masks.append(LayerMask(cur, "conv", loc["conv"] + ".weight",
                               conv_mask(clusters[prev], clusters[cur], tuple(w.shape)), prev))
    b = layers[-1]
    masks.append(LayerMask(b, "fc", "fc.weight", fc_mask(clusters[b], net.fc_shape)))
    return masks


def apply_masks(net, masks: Sequence[LayerMask]):
    """Set every masked weight of ``net`` to exactly 0.0 (in place, under no_grad); returns ``net``."""
    with torch.no_grad():
        for m in masks:
            p = net.get_parameter(m.param)
            if m.mask.numel() != p.numel():
                raise FilterlensError(f"mask '{m.key}' has {m.mask.numel()} entries; "
                                      f"parameter '{m.param}' has {p.numel()}")
            p.mul_(m.mask.reshape(p.shape).to(p.device, p.dtype))
    return net


def trainable_parameters(net, masks: Sequence[LayerMask]) -> list[str]:
    """Names of the parameters retraining updates: the masked convs and Linear layers (weight, bias), the
    batch-norm affine parameters of their blocks, and the FC. Everything else stays frozen."""
    names = ["fc.weight"] + (["fc.bias"] if net.fc.bias is not None else [])
    convs_of = {loc["conv"] + ".weight": loc for loc in net.info["convs"].values()}
    own = dict(net.named_parameters())
    for m in masks:
        if m.kind not in ("conv", "linear"):
            continue
        loc = convs_of.get(m.param)
        if loc is None:
            prefixes = [m.param.rsplit(".", 1)[0]]
        else:
            prefixes = [loc["conv"]] + ([loc["bn"]] if loc.get("bn") else [])
        for pre in prefixes:
            for suffix in ("weight", "bias"):
                n = f"{pre}.{suffix}"
                if n in own and n not in names:
                    names.append(n)
    return names


def _first_trainable(net, names: Sequence[str]) -> int:
    """Trunk index of the first module with a trainable parameter (len(trunk) when only the FC trains)."""
    pos = len(net.trunk)
    for n in names:
        if n.startswith("trunk."):
            pos = min(pos, int(n.split(".")[1]))
    return pos

