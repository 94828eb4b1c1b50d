"""Reading a layer's units from the forward pass: one place for every layout (METHOD.md, "Units and layers
beyond VGG").

A layer's output is viewed as ``U units x P positions`` and always handed on units first,
``(N, U, A, B)``, so the probes, single-unit analysis and AFCC never need to know the family:

* ``NCHW``: a conv map; units are channels (filters).
* ``NHWC``: a channels-last map (Swin); permuted to units first.
* ``heads:proj``: a transformer block of timm's layout (or filterlens' ``vit_tiny_cifar``): the input
  of its attention's output projection ``attn.proj``, ``(N, T, heads x d_head)``, regrouped as
  ``(N, heads, T, d_head)``; units are heads.
* ``heads:mha``: torchvision's encoder block: its ``nn.MultiheadAttention`` never calls ``out_proj``
  as a module, so the per-head outputs are computed inside the hook from the module's own weights
  (projected by ``out_proj`` they give the module's output).

* ``nodes``: the output of a module that gives ``(N, F)`` (a fully connected layer, its activation) or
  ``(N, T, F)`` (a token-wise layer: a transformer MLP's hidden activation); units are its F nodes, handed on
  as ``(N, F, 1, 1)`` or ``(N, F, T, 1)``.
* ``nodes:in``: the same read from a module's input (a forward pre-hook): the hidden activation of a
  transformer MLP is the input of its second Linear.

``tokens`` (heads and token-wise nodes): ``all`` keeps every token (heads: P = T x d_head; nodes: P = T),
``cls`` the first token, ``mean`` the mean over tokens (heads: P = d_head; nodes: P = 1).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import FilterlensError

LAYOUTS = ("NCHW", "NHWC", "heads:proj", "heads:mha", "nodes", "nodes:in")
NODE_LAYOUTS = ("nodes", "nodes:in")
TOKENS = ("all", "cls", "mean")


def _tokens(x: torch.Tensor, tokens: str) -> torch.Tensor:
    """(N, H, T, d) reduced over tokens as the ``tokens`` option says."""
    if tokens == "cls":
        return x[:, :, :1]
    if tokens == "mean":
        return x.mean(2, keepdim=True)
    return x


def nodes_first(x, tokens: str = "all") -> torch.Tensor | None:
    """A node layer's output units first: ``(N, F)`` as ``(N, F, 1, 1)``, ``(N, T, F)`` as ``(N, F, T', 1)`` with the
    tokens the ``tokens`` option keeps (T' = T for ``all``, 1 for ``cls`` and ``mean``); None for anything else."""
    if not torch.is_tensor(x):
        return None
    if x.ndim == 2:
        return x[:, :, None, None]
    if x.ndim == 3:
        return _tokens(x.transpose(1, 2)[..., None], tokens)
    return None


def output_layout(output) -> str | None:
    """The layout of a module's output read as units: ``NCHW`` for a 4-D map, ``nodes`` for ``(N, F)`` or
    ``(N, T, F)``, None for anything else (a tuple, a 5-D tensor)."""
    if not torch.is_tensor(output):
        return None
    return "NCHW" if output.ndim == 4 else "nodes" if output.ndim in (2, 3) else None


def mha_heads(mha: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor,
              value: torch.Tensor) -> torch.Tensor:
    """Per-head outputs ``(N, heads, T, d_head)`` of an ``nn.MultiheadAttention`` (self-attention, no mask),
    computed from its own weights: ``out_proj`` of them, heads concatenated, is the module's output."""
    if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
        raise FilterlensError("attention heads of an nn.MultiheadAttention with separate key/value sizes are not "
                              "supported; name another layer")
    if not mha.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    e, h = mha.embed_dim, mha.num_heads
    d = e // h
    w, b = mha.in_proj_weight, mha.in_proj_bias
    q = F.linear(query, w[:e], None if b is None else b[:e])
    k = F.linear(key, w[e:2 * e], None if b is None else b[e:2 * e])
    v = F.linear(value, w[2 * e:], None if b is None else b[2 * e:])
    n = q.shape[0]
    q, k, v = (z.reshape(n, z.shape[1], h, d).transpose(1, 2) for z in (q, k, v))
    attn = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(d), dim=-1)
    return attn @ v  # (N, H, T, d)


def reader(layout: str, units: int, tokens: str = "all") -> tuple[bool, Callable]:
    """``(pre_hook, read)`` for a layer of ``layout`` with ``units`` units: register ``read`` as a forward
    pre-hook (``read(module, inputs)``) or a forward hook (``read(module, inputs, output)``); it returns the
    units-first tensor ``(N, U, A, B)``, or None when the module gives no map of that layout."""
    if layout == "heads:proj":
        def read_proj(module, inputs):
            x = inputs[0]
            n, t, c = x.shape
            return _tokens(x.reshape(n, t, units, c // units).transpose(1, 2), tokens)
        return True, read_proj
    if layout == "heads:mha":
        def read_mha(module, inputs, output):
            if len(inputs) < 3:
                raise FilterlensError("the attention module was called without positional query, key and value; "
                                      "its heads cannot be read")
            return _tokens(mha_heads(module, *inputs[:3]), tokens)
        return False, read_mha
    if layout == "nodes:in":
        def read_nodes_in(module, inputs):
            return nodes_first(inputs[0] if inputs else None, tokens)
        return True, read_nodes_in
    if layout == "nodes":
        def read_nodes(module, inputs, output):
            return nodes_first(output, tokens)
        return False, read_nodes
    if layout == "NHWC":
        def read_nhwc(module, inputs, output):
            return output.permute(0, 3, 1, 2) if torch.is_tensor(output) and output.ndim == 4 else None
        return False, read_nhwc

    def read_map(module, inputs, output):
        return output if torch.is_tensor(output) and output.ndim == 4 else None
    return False, read_map
