"""Physical removal (beyond the papers): units ALL of whose outgoing connections are masked are deleted.

A **mask** sets weights to exactly 0.0 inside dense tensors and gives no speed-up by itself; a
**removal** deletes whole units, so tensors really shrink and inference really gets cheaper.
The deletion itself is Torch-Pruning's (``torch_pruning.DependencyGraph``): it finds every tensor
that carries a unit's channel (the conv and batch norm that produce it, a concatenation's branch,
the next conv's input channels or the FC's input columns, through residual additions and
reshapes) and slices them together. Which units go is AFCC's: at the deepest layer b, the units
whose FC columns are all masked; where conv masks join layers l-1 and l, a unit of l-1 whose
kernels to l are all masked or lead only to removed units of l (both contribute nothing). At
least one unit is kept per layer.

A removal must not change what the network computes. When the dependency graph ties a unit to
more than its own layer's output (a residual addition whose channels the next block also reads,
a concatenation read further on), deleting it would cut it from those readers too: such a
removal is refused in one line naming the module that also reads the units, and so is a network
the graph cannot trace (naming the module where tracing failed). The caller checks the outputs
of the pruned network against the masked one.

Nodes (of a classifier head's hidden layer, of a transformer MLP) are removed the same way: the dependency
graph of the whole model deletes a node's row of the Linear that makes it (and its bias) and its column of the
Linear that reads it (:func:`~filterlens.models.nodes.node_links`); the probe FC loses the node's columns.
"""
from __future__ import annotations

import copy
import warnings
from typing import Sequence

import torch

from ..errors import FilterlensError
from .diluted import apply_masks
from .masks import LayerMask, connections


def prune_support(net) -> tuple[bool, str]:
    """Whether :func:`prune` may be tried on ``net`` (and why not); the dependency graph decides the rest."""
    if net.info.get("pruned"):
        return False, "the network is already pruned"
    unit = net.info.get("unit") or {}
    if unit.get("unit_kind") == "head" and unit.get("layout") != "heads:proj":
        return False, (f"the heads of '{net.info['deepest']}' live inside an nn.MultiheadAttention's packed weights "
                       "(torchvision's ViT); heads can be removed in timm's layout (attn.qkv, attn.proj) and in "
                       "filterlens' vit_tiny_cifar")
    if unit.get("unit_kind") == "node":
        nodes = net.info.get("nodes") or {}
        lost = next((l for l in net.info["layers"] if not (nodes.get(l) or {}).get("producer")), None)
        if lost is not None:
            return False, (f"the nodes of '{lost}' are not made by a Linear filterlens can find (one whose output "
                           "reaches them through activations and dropout only); removing a node deletes its row "
                           "of that Linear")
    if unit.get("layout") == "NHWC":
        return False, (f"layer '{net.info['deepest']}' is channels-last (Swin): its units are the residual stream of "
                       "its attention blocks, which every later block reads")
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        return False, "physical removal needs Torch-Pruning: pip install torch-pruning"
    return True, ""


def _units_to_remove(net, masks: Sequence[LayerMask]) -> dict[str, list[int]]:
    """Per layer of the range, the units whose outgoing connections are all masked (cascading back)."""
    layers = net.info["layers"]
    b = layers[-1]
    fcm = [m for m in masks if m.kind == "fc" and m.layer == b]
    if len(fcm) != 1:
        raise FilterlensError(f"pruning needs exactly one FC mask of layer '{b}'")
    convm = {m.layer: m for m in masks if m.kind in ("conv", "linear")}
    keep = {b: torch.nonzero(connections(fcm[0].mask.cpu()).any(0)).flatten()}
    for i in range(len(layers) - 1, 0, -1):
        cur, prev = layers[i], layers[i - 1]
        if cur in convm:
            conn = connections(convm[cur].mask.cpu())  # (C_cur, C_prev)
            keep[prev] = torch.nonzero(conn[keep[cur]].any(0)).flatten()
        else:
            keep[prev] = torch.arange(net.info["layer_shapes"][prev][0])
    removed = {}
    for layer in layers:
        units = int(net.info["layer_shapes"][layer][0])
        kept = set(keep[layer].tolist()) or {0}  # a layer keeps one unit: its outgoing weights are all zero
        removed[layer] = [c for c in range(units) if c not in kept]
    return removed


def remove_units(net, removed: dict[str, list[int]]):
    """A copy of ``net`` without the ``removed`` units of each layer of its range (Torch-Pruning; attention heads
    by shrinking the attention's ``qkv`` and ``proj``).

    Raises :class:`FilterlensError` where the graph cannot be traced or ties the units to other readers.
    """
    unit = net.info.get("unit") or {}
    if unit.get("unit_kind") == "head":
        return _remove_heads(net, removed)
    if unit.get("unit_kind") == "node":
        return _remove_nodes(net, removed)
    import torch_pruning as tp

    new = copy.deepcopy(net).eval()
    device = next(new.parameters()).device
    example = torch.randn(2, *net.info["input_size"], generator=torch.Generator().manual_seed(0)).to(device)
    try:
        with torch.enable_grad(), warnings.catch_warnings():  # traced through autograd; its notes are not ours
            warnings.simplefilter("ignore")
            graph = tp.DependencyGraph().build_dependency(new, example_inputs=example)
    except Exception as exc:  # noqa: BLE001 - the module that could not be traced is what the user needs
        raise FilterlensError(f"physical removal is not supported here: Torch-Pruning cannot trace this network "
                              f"({type(exc).__name__}: {str(exc)[:120]})") from None
    names = graph._module2name  # the graph's own module names (paths inside the diluted network)
    layers = net.info["layers"]
    L, C, H, W = net.fc_shape
    for i, layer in enumerate(reversed(layers)):
        idxs = sorted(removed.get(layer, []))
        if not idxs:
            continue
        loc = net.info["convs"].get(layer)
        if i == 0 and loc is None:  # the deepest layer, produced by whatever the graph finds: prune the FC side
            cols = [c * H * W + p for c in idxs for p in range(H * W)]
            group = graph.get_pruning_group(new.fc, tp.prune_linear_in_channels, idxs=cols)
            allowed = {new.fc}
        else:
            if loc is None:
                raise FilterlensError(f"physical removal of layer '{layer}' needs its conv, which cannot be located")
            conv = new.get_submodule(loc["conv"])
            group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=idxs)
            nxt = layers[len(layers) - i] if i > 0 else None
            allowed = {new.fc} if i == 0 else {new.get_submodule(net.info["convs"][nxt]["conv"])}
        readers = [names.get(dep.target.module, type(dep.target.module).__name__) for dep, _ in group.items
                   if dep.handler in (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
                   and dep.target.module not in allowed]
        if readers:
            raise FilterlensError(f"physical removal is not supported here: the units of layer '{layer}' are also "
                                  f"read by '{readers[0]}' (a residual connection or a concatenation); removing "
                                  "them would change what the network computes")
        group.prune()
    kept_b = [c for c in range(C) if c not in set(removed.get(layers[-1], []))]
    new.fc_shape = (L, len(kept_b), H, W)
    return _record_pruned(new, net, {l: [c for c in range(int(net.info["layer_shapes"][l][0]))
                                         if c not in set(removed.get(l, []))] for l in layers})


def _record_pruned(new, net, pruned: dict[str, list[int]]):
    """``new`` (the pruned copy of ``net``) with ``net``'s info, the units each layer keeps (``pruned``) and the
    unpruned parameter shapes (for reloading: :func:`filterlens.afcc.export.load` rebuilds, then removes)."""
    new.info = copy.deepcopy(net.info)
    new.info["pruned"] = pruned
    if not new.info.get("original_shapes"):
        new.info["original_shapes"] = {k: list(v.shape) for k, v in net.state_dict().items()}
    return new


def _graph(model, input_size):
    """Torch-Pruning's dependency graph of ``model`` (traced on a seeded random input of ``input_size``)."""
    import torch_pruning as tp

    device = next(model.parameters()).device
    example = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        with torch.enable_grad(), warnings.catch_warnings():  # traced through autograd; its notes are not ours
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(model, example_inputs=example)
    except Exception as exc:  # noqa: BLE001 - the module that could not be traced is what the user needs
        raise FilterlensError(f"physical removal is not supported here: Torch-Pruning cannot trace this network "
                              f"({type(exc).__name__}: {str(exc)[:120]})") from None


def _remove_nodes(net, removed: dict[str, list[int]]):
    """Nodes of the range's node layers removed for real: Torch-Pruning's graph of the whole (copied) model
    deletes each node's row of the Linear that makes it and its column of the Linear that reads it; the probe FC
    loses the deepest layer's removed nodes' columns. A node the graph ties to any other module with weights (a
    norm across the nodes, a second reader) is refused, naming that module."""
    import torch_pruning as tp

    new = copy.deepcopy(net).eval()
    model = new.trunk[0].model
    graph = _graph(model, net.info["input_size"])
    names = graph._module2name
    layers, links = net.info["layers"], net.info["nodes"]
    for layer in layers:
        idxs = sorted(removed.get(layer, []))
        if not idxs:
            continue
        producer = model.get_submodule(links[layer]["producer"])
        allowed = {producer} | ({model.get_submodule(links[layer]["consumer"])} if links[layer]["consumer"] else set())
        group = graph.get_pruning_group(producer, tp.prune_linear_out_channels, idxs=idxs)
        others = [names.get(dep.target.module, type(dep.target.module).__name__) for dep, _ in group.items
                  if isinstance(dep.target.module, torch.nn.Module) and dep.target.module not in allowed
                  and any(True for _ in dep.target.module.parameters())]
        if others:
            raise FilterlensError(f"physical removal is not supported here: the nodes of layer '{layer}' are also "
                                  f"read by '{others[0]}'; removing them would change what the network computes")
        group.prune()
    b = layers[-1]
    L, C, H, W = net.fc_shape
    drop = set(removed.get(b, []))
    kept = [c for c in range(C) if c not in drop]
    cols = torch.tensor([c * H * W + p for c in kept for p in range(H * W)])
    fc = torch.nn.Linear(len(cols), L, bias=False).to(net.fc.weight.device)
    with torch.no_grad():
        fc.weight.copy_(net.fc.weight[:, cols])
    new.fc, new.fc_shape = fc, (L, len(kept), H, W)
    return _record_pruned(new, net, {l: [c for c in range(int(net.info["layer_shapes"][l][0]))
                                         if c not in set(removed.get(l, []))] for l in layers})


def _remove_heads(net, removed: dict[str, list[int]]):
    """Heads of the deepest (transformer) layer whose FC connections are all masked, removed for real: their rows
    of the attention's ``qkv`` (query, key and value), their columns of ``proj`` and of the FC. Supported for
    timm's attention layout (``attn.qkv``, ``attn.proj``, ``num_heads``, ``head_dim``; filterlens' ViT too)."""
    layers = net.info["layers"]
    b = layers[-1]
    unit = net.info["unit"]
    if unit.get("layout") != "heads:proj":
        raise FilterlensError(f"physical removal is not supported here: the heads of '{b}' live inside an "
                              "nn.MultiheadAttention's packed weights (torchvision's ViT); heads can be removed in "
                              "timm's layout (attn.qkv, attn.proj) and in filterlens' vit_tiny_cifar")
    new = copy.deepcopy(net).eval()
    trunk = new.trunk[0]
    attn = trunk.model.get_submodule(unit["hook"].rpartition(".")[0])
    if getattr(attn, "gate", None) is not None or not isinstance(getattr(attn, "qkv", None), torch.nn.Linear):
        raise FilterlensError(f"physical removal is not supported here: the attention of '{b}' "
                              f"({type(attn).__name__}) is not the plain qkv/proj layout")
    heads, d = int(attn.num_heads), int(attn.head_dim)
    drop = set(removed.get(b, []))
    kept = [h for h in range(heads) if h not in drop] or [0]
    width = heads * d
    rows = torch.tensor([part * width + h * d + i for part in range(3) for h in kept for i in range(d)])
    cols = torch.tensor([h * d + i for h in kept for i in range(d)])
    with torch.no_grad():
        qkv = torch.nn.Linear(attn.qkv.in_features, len(rows), bias=attn.qkv.bias is not None)
        qkv.weight.copy_(attn.qkv.weight[rows])
        if attn.qkv.bias is not None:
            qkv.bias.copy_(attn.qkv.bias[rows])
        proj = torch.nn.Linear(len(cols), attn.proj.out_features, bias=attn.proj.bias is not None)
        proj.weight.copy_(attn.proj.weight[:, cols])
        if attn.proj.bias is not None:
            proj.bias.copy_(attn.proj.bias)
        norm = getattr(attn, "norm", None)
        if isinstance(norm, torch.nn.LayerNorm):  # timm's scale_norm: per element of the heads' concatenation
            attn.norm = torch.nn.LayerNorm(len(cols), eps=norm.eps)
            attn.norm.weight.copy_(norm.weight[cols])
            attn.norm.bias.copy_(norm.bias[cols])
    attn.qkv, attn.proj, attn.num_heads = qkv, proj, len(kept)
    if hasattr(attn, "attn_dim"):
        attn.attn_dim = len(kept) * d
    trunk.units = len(kept)
    L, _, T, D = net.fc_shape
    fc_cols = torch.tensor([h * T * D + p for h in kept for p in range(T * D)])
    fc = torch.nn.Linear(len(fc_cols), L, bias=False)
    with torch.no_grad():
        fc.weight.copy_(net.fc.weight[:, fc_cols])
    new.fc = fc
    new.fc_shape = (L, len(kept), T, D)
    # "unit" keeps the unpruned head count: load() rebuilds, then removes
    return _record_pruned(new, net, {b: kept})


def prune(net, masks: Sequence[LayerMask]):
    """Physically remove the units of a masked diluted network whose outgoing connections are all masked.

    Removed units contributed exactly nothing, so the smaller DENSE network computes the same outputs
    (up to float summation order). Returns ``(pruned_net, pruned_masks, info)``: the masks sliced to
    the new shapes (the masked zeros that remain), and per layer the units before/after and the
    removed indices. Raises :class:`FilterlensError` where :func:`prune_support` says no or the
    removal would change the outputs.
    """
    ok, reason = prune_support(net)
    if not ok:
        raise FilterlensError(f"physical removal is not supported here: {reason}")
    layers = net.info["layers"]
    removed = _units_to_remove(net, masks)
    new = remove_units(net, removed)
    keep = {l: torch.tensor(new.info["pruned"][l], dtype=torch.long) for l in layers}
    b = layers[-1]
    new_masks = []
    for m in masks:
        mk = m.mask.cpu()[:, keep[b]] if m.kind == "fc" else m.mask.cpu()[keep[m.layer]][:, keep[m.prev]]
        new_masks.append(LayerMask(m.layer, m.kind, m.param, mk.contiguous(), m.prev))
    apply_masks(new, new_masks)
    info = {}
    for layer in layers:
        before = int(net.info["layer_shapes"][layer][0])
        info[layer] = {"filters_before": before, "filters_after": len(keep[layer]), "removed": removed[layer]}
    return new, new_masks, info

