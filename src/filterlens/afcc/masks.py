"""AFCC masks (METHOD.md stage 5): which connections a unit's clusters keep.

* **FC mask** of the deepest layer b (:func:`fc_mask`): the weight of b's probe FC from unit
  c to output unit j is kept only when j is in one of c's clusters.
* **conv masks** (:func:`conv_mask`), between consecutive layers (l-1, l): the kernel from
  filter c' of layer l-1 to filter c of layer l is kept only when the label sets of the two
  filters' clusters intersect. Between two consecutive FC node layers the same rule masks the Linear
  joining them (kind ``linear``): the weight from node c' of l-1 to node c of l, a 1x1 kernel.
* **dilution** (:func:`dilution`) = removed / total weights of a masked tensor.
* **random control** (:func:`random_mask`): for every masked tensor, the same number of kept
  connections PER UNIT (FC: per unit c the same number of output units; conv and linear: per output
  unit c the same number of input units), placed at random by a seeded generator.

A mask sets weights to exactly 0.0 inside dense tensors: shapes, parameter counts and
compute stay those of the unmasked network (see :mod:`filterlens.afcc.removal` for a real
removal).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import FilterlensError


def _label_sets(clusters: Sequence, what: str) -> list[set[int]]:
    """Per filter, the union of its clusters' labels."""
    out = []
    for c, filter_clusters in enumerate(clusters):
        labels: set[int] = set()
        for cluster in filter_clusters:
            for j in cluster:
                if isinstance(j, bool) or int(j) != j or int(j) < 0:
                    raise FilterlensError(f"{what}: filter {c} has cluster label {j!r}; labels are integers >= 0")
                labels.add(int(j))
        out.append(labels)
    return out


def _indicator(sets: list[set[int]], num_labels: int, what: str):
    ind = torch.zeros(len(sets), num_labels, dtype=torch.bool)
    for c, s in enumerate(sets):
        if s:
            if max(s) >= num_labels:
                raise FilterlensError(f"{what}: filter {c} has cluster label {max(s)}, outside 0..{num_labels - 1}")
            ind[c, sorted(s)] = True
    return ind


def _shape4(shape, what: str) -> tuple[int, int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise FilterlensError(f"{what} shape {shape} is invalid; expected 4 positive sizes")
    return shape


def fc_mask(clusters: Sequence, shape) -> "torch.Tensor":
    """Boolean mask (L, C, H, W) of a layer's FC weight (METHOD.md stage 5, FC).

    ``clusters[c]`` is filter c's list of clusters (label lists), as
    :attr:`filterlens.sfp.LayerSFP.clusters_`. Filter c keeps its weights to output unit j (at
    every position (p, q)) only when j is in one of its clusters; a filter without clusters
    keeps nothing.
    """
    L, C, H, W = _shape4(shape, "FC weight")
    if len(clusters) != C:
        raise FilterlensError(f"clusters are given for {len(clusters)} filters; the FC weight {(L, C, H, W)} has {C}")
    conn = _indicator(_label_sets(clusters, "fc_mask"), L, "fc_mask").T  # (L, C)
    return conn[:, :, None, None].expand(L, C, H, W).contiguous()


def conv_mask(clusters_prev: Sequence, clusters_next: Sequence, kernel_shape) -> "torch.Tensor":
    """Boolean mask (C_next, C_prev, kh, kw) of the conv between layers l-1 and l (METHOD.md stage 5, conv).

    The kernel from filter c' of layer l-1 (``clusters_prev[c']``) to filter c of layer l
    (``clusters_next[c]``) is kept only when the label sets (the union of each filter's
    clusters) intersect; a filter with no cluster on either side loses all its kernels.
    """
    Cn, Cp, kh, kw = _shape4(kernel_shape, "conv kernel")
    if len(clusters_prev) != Cp or len(clusters_next) != Cn:
        raise FilterlensError(f"clusters are given for {len(clusters_prev)} -> {len(clusters_next)} filters; the conv "
                              f"kernel {(Cn, Cp, kh, kw)} joins {Cp} -> {Cn}")
    prev = _label_sets(clusters_prev, "conv_mask")
    nxt = _label_sets(clusters_next, "conv_mask")
    used = [max(s) for s in prev + nxt if s]
    L = max(used) + 1 if used else 1
    a = _indicator(nxt, L, "conv_mask").double()
    b = _indicator(prev, L, "conv_mask").double()
    conn = (a @ b.T) > 0  # (Cn, Cp): shared labels exist
    return conn[:, :, None, None].expand(Cn, Cp, kh, kw).contiguous()


def dilution(mask) -> float:
    """Removed / total weights of a boolean mask (0.0 for an empty one)."""
    total = int(mask.numel())
    return (total - int(mask.sum())) / total if total else 0.0


def connections(mask) -> "torch.Tensor":
    """The connection-level view of a 4-D mask: (A, B) bool, ``mask[a, b]`` kept at all positions.

    FC masks (L, C, H, W) give (L, C) unit-filter connections; conv masks (C_l, C_{l-1}, kh, kw)
    give kernel connections. Masks from :func:`fc_mask` / :func:`conv_mask` are uniform within a
    connection; others are refused.
    """
    flat = mask.reshape(mask.shape[0], mask.shape[1], -1)
    anyk, allk = flat.any(2), flat.all(2)
    if not bool((anyk == allk).all()):
        raise FilterlensError("the mask keeps only part of some connection (kernel or unit-filter block); AFCC masks "
                              "keep or remove whole connections")
    return anyk


def random_mask(mask, kind: str, generator=None) -> "torch.Tensor":
    """The random control of ``mask``: per filter the same number of kept connections, placed at random.

    ``kind="fc"``: filter c (dim 1) keeps as many output units as in ``mask``, chosen at random
    among the L units. ``kind="conv"`` (or ``"linear"``, between two FC node layers): output unit c (dim 0) keeps
    as many input units as in ``mask``, chosen at random among C_{l-1}. ``generator``: a seeded
    ``torch.Generator``.
    """
    if kind not in ("fc", "conv", "linear"):
        raise FilterlensError(f"mask kind '{kind}' is invalid; valid: fc, conv, linear")
    conn = connections(mask)
    rows = conn.T if kind == "fc" else conn  # one row per filter whose count is preserved
    k = rows.sum(1)
    scores = torch.rand(rows.shape, generator=generator)
    rank = scores.argsort(1).argsort(1)
    new = rank < k[:, None]
    new = new.T if kind == "fc" else new
    return new[:, :, None, None].expand(mask.shape).contiguous()


@dataclass
class LayerMask:
    """One masked tensor of a :class:`DilutedNet`.

    layer : for ``kind="fc"`` the deepest layer b (the mask is on its probe FC); for
        ``kind="conv"`` layer l (the mask is on the conv feeding l, between l-1 and l); for ``kind="linear"``
        node layer l (the mask is on the Linear making l's nodes from l-1's).
    kind : ``"fc"``, ``"conv"`` or ``"linear"``.
    param : the parameter's name in the :class:`DilutedNet` (``fc.weight``, ``trunk.4.conv.weight``).
    mask : bool tensor, FC (L, C, H, W), conv (C_l, C_{l-1}, kh, kw) or linear (C_l, C_{l-1}, 1, 1); True = kept.
    prev : for conv and linear masks, layer l-1.
    """
    layer: str
    kind: str
    param: str
    mask: Any
    prev: str | None = None

    @property
    def key(self) -> str:
        """``kind:layer`` (``fc:features.5``, ``conv:features.4``): the mask's name in tables and results."""
        return f"{self.kind}:{self.layer}"

    @property
    def kept(self) -> int:
        """The number of weights the mask keeps (True elements)."""
        return int(self.mask.sum())

    @property
    def total(self) -> int:
        """The number of weights of the masked tensor."""
        return int(self.mask.numel())

    @property
    def dilution(self) -> float:
        """Removed / total weights of this mask (:func:`dilution`)."""
        return dilution(self.mask)

    def to_state(self) -> dict:
        """The mask as plain data (its mask a CPU bool tensor), for ``torch.save``; :meth:`from_state` reads it."""
        return {"layer": self.layer, "kind": self.kind, "param": self.param, "prev": self.prev,
                "mask": self.mask.detach().cpu().bool()}

    @classmethod
    def from_state(cls, d: dict) -> "LayerMask":
        """The mask :meth:`to_state` wrote."""
        return cls(d["layer"], d["kind"], d["param"], d["mask"], d.get("prev"))


def random_masks(masks: Sequence[LayerMask], seed: int = 0) -> list[LayerMask]:
    """The random control of every mask (:func:`random_mask`), one seeded generator in mask order."""
    gen = torch.Generator().manual_seed(int(seed))
    return [LayerMask(m.layer, m.kind, m.param, random_mask(m.mask.cpu(), m.kind, gen), m.prev) for m in masks]

