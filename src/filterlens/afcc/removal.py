"""Physical removal (beyond the papers): filters ALL of whose outgoing weights are masked are deleted.

A **mask** sets weights to exactly 0.0 inside dense tensors and gives no speed-up by itself; a
**removal** deletes whole filters: conv output channels, their batch-norm channels and the next
conv's input channels (or the FC's input columns), so tensors really shrink and inference
really gets cheaper. Masked weights that do not belong to a removed filter stay masked zeros in
the pruned model. Removal cascades from the deepest layer back: a filter of layer l-1 is
removed when each of its outgoing kernels is masked OR leads to a filter of layer l that is
itself removed (both contribute nothing to the output). At least one filter is kept per layer.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn as nn

from ..errors import FilterlensError
from .diluted import apply_masks
from .masks import LayerMask, connections


def prune_support(net) -> tuple[bool, str]:
    """Whether :func:`prune` can remove filters of ``net`` (and why not)."""
    if net.info.get("mode") != "prefix":
        return False, ("the layer is not reached by a prefix of the model's 'features' (supported: filterlens VGG, "
                       "torchvision VGG-BN)")
    if net.info.get("pruned"):
        return False, "the network is already pruned"
    for layer in net.info["layers"]:
        if layer not in net.info["convs"]:
            return False, f"the conv of layer '{layer}' cannot be located (supported: filterlens VGG, torchvision VGG-BN)"
    return True, ""


def _set_module(net, path: str, module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, name, module)


def _slice_conv(conv, out_idx=None, in_idx=None):
    w = conv.weight.detach()
    if out_idx is not None:
        w = w[out_idx]
    if in_idx is not None:
        w = w[:, in_idx]
    new = nn.Conv2d(w.shape[1], w.shape[0], conv.kernel_size, conv.stride, conv.padding, conv.dilation, 1,
                    conv.bias is not None, conv.padding_mode).to(w.device, w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach()[out_idx] if out_idx is not None else conv.bias.detach())
    new.weight.requires_grad_(conv.weight.requires_grad)
    return new


def _slice_bn(bn, idx):
    new = nn.BatchNorm2d(len(idx), bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    ref = bn.weight if bn.affine else bn.running_mean
    new = new.to(ref.device, ref.dtype)
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight.detach()[idx])
            new.bias.copy_(bn.bias.detach()[idx])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[idx])
            new.running_var.copy_(bn.running_var[idx])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    new.train(bn.training)
    return new


def _slice_net(net, keep: dict):
    """A copy of ``net`` keeping, for every layer of its range, the filters ``keep[layer]`` (index lists)."""
    layers = net.info["layers"]
    new = copy.deepcopy(net)
    idx = {l: torch.as_tensor(keep[l], dtype=torch.long) for l in layers}
    for i, layer in enumerate(layers):
        loc = net.info["convs"][layer]
        conv = net.get_submodule(loc["conv"])
        _set_module(new, loc["conv"], _slice_conv(conv, idx[layer].to(conv.weight.device),
                                                  idx[layers[i - 1]].to(conv.weight.device) if i > 0 else None))
        if loc.get("bn"):
            bn = net.get_submodule(loc["bn"])
            where = next(iter([*bn.parameters(), *bn.buffers()])).device
            _set_module(new, loc["bn"], _slice_bn(bn, idx[layer].to(where)))
    L, C, H, W = net.fc_shape
    b = layers[-1]
    w = net.fc.weight.detach().reshape(L, C, H, W)[:, idx[b].to(net.fc.weight.device)]
    fc = nn.Linear(w[0].numel(), L, bias=net.fc.bias is not None).to(w.device, w.dtype)
    with torch.no_grad():
        fc.weight.copy_(w.reshape(L, -1))
        if net.fc.bias is not None:
            fc.bias.copy_(net.fc.bias.detach())
    fc.weight.requires_grad_(net.fc.weight.requires_grad)
    new.fc = fc
    new.fc_shape = (L, len(idx[b]), H, W)
    new.info = copy.deepcopy(net.info)
    new.info["pruned"] = {l: [int(v) for v in idx[l]] for l in layers}
    if not new.info.get("original_shapes"):
        new.info["original_shapes"] = {k: list(v.shape) for k, v in net.state_dict().items()}
    return new


def prune(net, masks: Sequence[LayerMask]):
    """Physically remove the filters of a masked :class:`DilutedNet` whose outgoing weights are all masked.

    At the deepest layer b, a filter whose FC columns are all masked (no cluster) is removed:
    its conv output channel, its batch-norm channel and its FC input columns. For every conv
    mask between layers l-1 and l, a filter c' of l-1 whose kernels to layer l are all masked,
    or lead only to removed filters of l, is removed: conv_{l-1} output channel, BN_{l-1}
    channel, conv_l input channel. Removed filters contributed exactly nothing, so the smaller
    DENSE network computes the same outputs (up to float summation order). At least one filter
    per layer is kept.

    Returns ``(pruned_net, pruned_masks, info)``: the masks sliced to the new shapes (the masked
    zeros that remain), and per layer the filters before/after and the removed indices.
    Raises :class:`FilterlensError` where :func:`prune_support` says no.
    """
    ok, reason = prune_support(net)
    if not ok:
        raise FilterlensError(f"physical removal is not supported here: {reason}")
    layers = net.info["layers"]
    b = layers[-1]
    fcm = [m for m in masks if m.kind == "fc" and m.layer == b]
    if len(fcm) != 1:
        raise FilterlensError(f"pruning needs exactly one FC mask of layer '{b}'")
    convm = {m.layer: m for m in masks if m.kind == "conv"}
    keep = {b: torch.nonzero(connections(fcm[0].mask.cpu()).any(0)).flatten()}
    for i in range(len(layers) - 1, 0, -1):
        cur, prev = layers[i], layers[i - 1]
        if cur in convm:
            conn = connections(convm[cur].mask.cpu())  # (C_cur, C_prev)
            keep[prev] = torch.nonzero(conn[keep[cur]].any(0)).flatten()
        else:
            keep[prev] = torch.arange(net.info["layer_shapes"][prev][0])
    for layer in layers:
        if len(keep[layer]) == 0:
            keep[layer] = torch.tensor([0])  # a conv needs one channel; its outgoing weights are all zero
    new = _slice_net(net, {l: keep[l].tolist() for l in layers})
    new_masks = []
    for m in masks:
        if m.kind == "fc":
            mk = m.mask.cpu()[:, keep[b]]
        else:
            mk = m.mask.cpu()[keep[m.layer]][:, keep[m.prev]]
        new_masks.append(LayerMask(m.layer, m.kind, m.param, mk.contiguous(), m.prev))
    apply_masks(new, new_masks)
    info = {}
    for layer in layers:
        before = int(net.info["layer_shapes"][layer][0])
        kept = set(keep[layer].tolist())
        info[layer] = {"filters_before": before, "filters_after": len(kept),
                       "removed": [c for c in range(before) if c not in kept]}
    return new, new_masks, info

