"""Nodes as units: which modules give the nodes of fully connected layers, and which Linear layers make and read
them (METHOD.md, "Units and layers beyond VGG"; docs/method-nodes.md).

A node layer's output is ``(N, F)`` (a hidden layer of a classifier head) or ``(N, T, F)`` (a transformer MLP's
hidden activation, token by token): F nodes, each a unit. Found before any shape is known:

* :func:`head_nodes`: the hidden layers of a CNN's classifier head, a Sequential of Linear layers with
  activations and dropouts between them (torchvision's VGG and AlexNet, MobileNetV3, filterlens' VGG with
  ``vgg_fc``): every Linear that another Linear follows is a layer, named by the last activation after it (its
  output is the nodes after their nonlinearity, as TransformerLens' ``hook_post``); the output Linear is not.
* :func:`mlp_nodes`: each transformer block's MLP (``blocks.i.mlp`` with ``fc1``/``fc2``, timm's layout;
  a Sequential with Linear layers, filterlens' ``vit_tiny_cifar`` and torchvision's ``MLPBlock``), named by
  the MLP's own path; its nodes are read as the input of its last Linear (the hidden activation after its
  nonlinearity, exactly what that Linear reads).

:func:`node_links` finds, for AFCC, the Linear that *makes* a layer's nodes (one node per output row: its
producer) and the Linear that *reads* them (its consumer), with only element-wise modules (activations,
dropout, identity) between: a mask between two consecutive FC layers is on the Linear that is the consumer of
the first and the producer of the second, and removing a node deletes its producer's row and its consumer's
column.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

#: modules that act on every element separately (in eval mode): they keep each node a node
ELEMENTWISE = ("ReLU", "ReLU6", "LeakyReLU", "GELU", "SiLU", "Hardswish", "Hardsigmoid", "Sigmoid", "Tanh", "ELU",
               "SELU", "CELU", "Mish", "Softplus", "QuickGELU", "GELUTanh", "Identity", "Dropout", "Dropout1d",
               "AlphaDropout")
_PASSIVE = ("Identity", "Dropout", "Dropout1d", "AlphaDropout")  # element-wise and changing nothing in eval mode


def is_elementwise(module: nn.Module) -> bool:
    """Whether ``module`` acts on every element on its own (an activation, dropout, identity)."""
    return type(module).__name__ in ELEMENTWISE


def _path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def head_nodes(model: nn.Module) -> dict[str, tuple[str, str, int]]:
    """The hidden FC layers of a classifier head: layer -> (module to hook, layout, 0), in forward order."""
    out: dict[str, tuple[str, str, int]] = {}
    for attr in ("classifier", "head", "heads", "fc"):
        seq = getattr(model, attr, None)
        if not isinstance(seq, nn.Sequential):
            continue
        kids = list(seq.named_children())
        linear_at = [i for i, (_, m) in enumerate(kids) if isinstance(m, nn.Linear)]
        for i in linear_at[:-1]:  # the last Linear gives the logits
            name = kids[i][0]
            j = i + 1
            while j < len(kids) and is_elementwise(kids[j][1]):
                if type(kids[j][1]).__name__ not in _PASSIVE:
                    name = kids[j][0]  # the activation: the nodes after their nonlinearity
                j += 1
            if j < len(kids) and isinstance(kids[j][1], nn.Linear):  # another Linear reads these nodes directly
                path = _path(attr, name)
                out[path] = (path, "nodes", 0)
    return out


def _last_linear(mlp: nn.Module, prefix: str) -> str | None:
    fc2 = getattr(mlp, "fc2", None)
    if isinstance(fc2, nn.Linear) and isinstance(getattr(mlp, "fc1", None), nn.Linear):
        return f"{prefix}.fc2"
    if isinstance(mlp, nn.Sequential):
        linears = [n for n, m in mlp.named_children() if isinstance(m, nn.Linear)]
        if len(linears) >= 2:
            return f"{prefix}.{linears[-1]}"
    return None


def mlp_nodes(model: nn.Module, blocks: list[str]) -> dict[str, tuple[str, str, int]]:
    """Each block's MLP hidden nodes: ``BLOCK.mlp`` -> (its last Linear, ``nodes:in``, 0)."""
    out: dict[str, tuple[str, str, int]] = {}
    for b in blocks:
        mlp = getattr(model.get_submodule(b), "mlp", None)
        if mlp is None:
            continue
        last = _last_linear(mlp, f"{b}.mlp")
        if last is not None:
            out[f"{b}.mlp"] = (last, "nodes:in", 0)
    return out


@dataclass
class NodeLinks:
    """The Linear that makes a node layer's nodes (``producer``) and the one that reads them (``consumer``), as
    module paths; None where there is none with only element-wise modules between it and the read point."""

    producer: str | None = None
    consumer: str | None = None


def _ordered(module: nn.Module) -> bool:
    """A parent whose children run in the order they were registered: a Sequential, or an MLP of timm's layout
    (``fc1``, ``act``, ``drop1``, ``norm``, ``fc2``)."""
    return isinstance(module, nn.Sequential) or (isinstance(getattr(module, "fc1", None), nn.Linear)
                                                 and isinstance(getattr(module, "fc2", None), nn.Linear))


def node_links(model: nn.Module, hook: str, layout: str, units: int) -> NodeLinks:
    """The producer and consumer Linear of the ``units`` nodes read at ``hook`` (``layout`` ``nodes``: its output;
    ``nodes:in``: its input). A Linear whose output is read is its own producer; otherwise both are looked for
    among the hook's siblings in a Sequential (or timm's MLP), through element-wise modules only, and must make
    (read) exactly ``units`` nodes."""
    modules = dict(model.named_modules())
    target = modules.get(hook)
    if target is None or hook == "":
        return NodeLinks()
    own = hook if layout == "nodes" and isinstance(target, nn.Linear) and target.out_features == units else None
    parent, _, name = hook.rpartition(".")
    holder = model.get_submodule(parent) if parent else model
    if not _ordered(holder):
        return NodeLinks(own)
    kids = list(holder.named_children())
    at = [n for n, _ in kids].index(name)
    links = NodeLinks(own)
    i = at if layout == "nodes" else at - 1  # backwards from the read point to the Linear that makes the nodes
    while i >= 0 and is_elementwise(kids[i][1]):
        i -= 1
    if links.producer is None and i >= 0 and isinstance(kids[i][1], nn.Linear) and kids[i][1].out_features == units:
        links.producer = _path(parent, kids[i][0])
    j = at + 1 if layout == "nodes" else at  # forwards to the Linear that reads them
    while j < len(kids) and is_elementwise(kids[j][1]):
        j += 1
    if j < len(kids) and isinstance(kids[j][1], nn.Linear) and kids[j][1].in_features == units:
        links.consumer = _path(parent, kids[j][0])
    return links
