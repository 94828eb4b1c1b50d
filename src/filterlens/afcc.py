"""Stage 5: AFCC, applying the filters' cluster connections (METHOD.md stage 5, issue 6).

For a range of consecutive analysed layers ``l_1 < ... < l_b`` of a trained run:

* **FC mask** of the deepest layer b (:func:`fc_mask`): the weight of b's probe FC from
  filter c to output unit j is kept only when j is in one of c's clusters.
* **conv masks** (:func:`conv_mask`), one per consecutive pair (l-1, l) of the range: the
  kernel from filter c' of layer l-1 to filter c of layer l (a slice of the conv that feeds
  layer l) is kept only when the label sets of the two filters' clusters intersect.
* **dilution** (:func:`dilution`) = removed / total weights of a masked tensor.
* The **diluted network** (:class:`DilutedNet`, :func:`build_diluted`): a DEEP COPY of the
  frozen backbone up to layer b, then b's (optionally pooled, as the run's ``probe_pool``)
  flattened output, then b's bias-free probe FC from ``probes.pt``. The user's model is never
  modified.
* **Masked retraining** (:func:`retrain`): the masked convs, the batch-norm affine
  parameters of their blocks and the FC are trained with SGD, the masks re-applied
  (``weight.mul_(mask)``) after EVERY optimiser step; every other parameter is frozen
  (``requires_grad=False``).
* **Random control** (:func:`random_mask`): for every masked tensor, the same number of kept
  connections PER FILTER (FC: per filter c the same number of output units; conv: per output
  filter c the same number of input filters), placed at random by a seeded generator, then
  retrained the same way. ``random_draws`` (default 1) repeats it with seeds seed+k and
  reports the mean and sd: one draw's accuracy varies by several points with its placement
  (Fashion-MNIST, 94% FC dilution: 0.77, 0.74, 0.73 for seeds 0, 1, 2).
* **Export** (:func:`save`, :func:`load`): one versioned file (format ``filterlens-afcc``).
* **Physical removal** (:func:`prune`, beyond the papers): filters ALL of whose outgoing
  weights are masked are deleted, giving a smaller dense network with identical outputs.

Mask versus removal
-------------------
A **mask** sets weights to exactly 0.0 inside dense tensors: shapes, parameter counts and
compute stay those of the unmasked network, so a mask gives NO speed-up by itself (only a
sparse kernel could profit). A **removal** (:func:`prune`) deletes whole filters: conv output
channels, their batch-norm channels and the next conv's input channels (or the FC's input
columns), so tensors really shrink and inference really gets cheaper. Masked weights that do
not belong to a removed filter stay masked zeros in the pruned model.

Choices that the papers leave open (all recorded in the results)
---------------------------------------------------------------
* Retraining: SGD, momentum 0.9 (no Nesterov), weight decay 0, constant learning rate 0.01,
  mini-batch 100, 3 epochs, the dataset's training augmentation OFF (``augment=True`` to
  turn it on), seeded. Batch norm stays in EVAL mode: its running statistics are frozen
  (they were estimated on the unmasked network; updating them on a few epochs of masked
  activations would change layers the masks did not touch), while its affine parameters
  (weight, bias) of the masked blocks are trained.
* The frozen part of the network in front of the first trainable module is computed once
  and cached (float32, exact) when augmentation is off and it fits the run's
  ``cache_budget``; otherwise every step streams through the whole diluted network.
* Removal cascades from the deepest layer back: a filter of layer l-1 is removed when each
  of its outgoing kernels is masked OR leads to a filter of layer l that is itself removed
  (both cases contribute nothing to the output). At least one filter is kept per layer.
* Latency (:func:`measure_latency`): CPU, batch 64, interleaved repeats; the reported
  speed-up is the median over repeats of the paired ratio (original / pruned time in the same
  repeat), which stays stable when the machine's load drifts; medians are reported too.
* MACs count the multiply-accumulates of convolutions and linear layers (batch norm,
  activations and pooling are not counted), for one input; ``macs_nonzero`` counts only
  weights that are not exactly zero (what a sparse kernel could reach).

Performance: this module is imported by the command-line parser, so torch is imported on
first use, not at import time.
"""
from __future__ import annotations

import argparse
import copy
import functools
import math
import statistics
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import FilterlensError

__all__ = [
    "FORMAT", "FORMAT_VERSION", "MASK_NOTE", "LayerMask", "DilutedNet", "TensorLoader",
    "fc_mask", "conv_mask", "dilution", "connections", "random_mask", "random_masks",
    "build_diluted", "make_masks", "apply_masks", "trainable_parameters", "retrain", "accuracy",
    "prune", "prune_support", "count_macs", "measure_latency", "save", "load", "run_afcc",
    "plot_afcc", "print_afcc", "add_parser", "cmd_afcc",
]

FORMAT = "filterlens-afcc"
FORMAT_VERSION = 1
MASK_NOTE = ("masks: weights set to exactly 0.0 inside dense tensors (same shapes, parameters and compute as the "
             "unmasked network: no speed-up by themselves); pruned: filters whose outgoing weights are all masked are "
             "physically removed (smaller dense convs, batch norms and FC: real savings, identical outputs)")

AFCC_COLUMNS = ["layer", "kind", "prev_layer", "param", "threshold", "dilution", "kept", "total",
                "connections_kept", "connections_total", "filters", "filters_without_connection",
                "acc_before", "acc_masked", "acc_retrained", "acc_random_masked", "acc_random_retrained",
                "acc_random_retrained_sd", "random_draws", "probe_accuracy"]
THRESHOLD_COLUMNS = ["threshold", "dilution", "fc_dilution", "conv_dilution", "acc_before", "acc_masked",
                     "acc_retrained", "acc_random_masked", "acc_random_retrained", "acc_random_retrained_sd",
                     "acc_random_retrained_draws", "random_draws", "filters_without_cluster"]
PRUNING_COLUMNS = ["model", "params", "params_nonzero", "macs", "macs_nonzero", "latency_ms", "latency_p25_ms",
                   "latency_p75_ms", "accuracy", "note"]

# modules that act on every channel separately (channel c in -> channel c out); in eval mode
_CHANNELWISE = ("ReLU", "ReLU6", "LeakyReLU", "MaxPool2d", "AvgPool2d", "Identity", "Dropout", "Dropout2d")


# ============================================================================ masks

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
    import torch

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
    return shape  # type: ignore[return-value]


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
    among the L units. ``kind="conv"``: output filter c (dim 0) keeps as many input filters as in
    ``mask``, chosen at random among C_{l-1}. ``generator``: a seeded ``torch.Generator``.
    """
    import torch

    if kind not in ("fc", "conv"):
        raise FilterlensError(f"mask kind '{kind}' is invalid; valid: fc, conv")
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
        ``kind="conv"`` layer l (the mask is on the conv feeding l, between l-1 and l).
    kind : ``"fc"`` or ``"conv"``.
    param : the parameter's name in the :class:`DilutedNet` (``fc.weight``, ``trunk.4.conv.weight``).
    mask : bool tensor, FC (L, C, H, W) or conv (C_l, C_{l-1}, kh, kw); True = kept.
    prev : for conv masks, layer l-1.
    """

    layer: str
    kind: str
    param: str
    mask: Any
    prev: str | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.layer}"

    @property
    def kept(self) -> int:
        return int(self.mask.sum())

    @property
    def total(self) -> int:
        return int(self.mask.numel())

    @property
    def dilution(self) -> float:
        return dilution(self.mask)

    def to_state(self) -> dict:
        return {"layer": self.layer, "kind": self.kind, "param": self.param, "prev": self.prev,
                "mask": self.mask.detach().cpu().bool()}

    @classmethod
    def from_state(cls, d: dict) -> "LayerMask":
        return cls(d["layer"], d["kind"], d["param"], d["mask"], d.get("prev"))


def random_masks(masks: Sequence[LayerMask], seed: int = 0) -> list[LayerMask]:
    """The random control of every mask (:func:`random_mask`), one seeded generator in mask order."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    return [LayerMask(m.layer, m.kind, m.param, random_mask(m.mask.cpu(), m.kind, gen), m.prev) for m in masks]


# ============================================================================ the diluted network

@functools.lru_cache(maxsize=None)
def _classes() -> dict:
    """The nn.Module classes, defined on first use (so importing this module does not import torch)."""
    import torch.nn as nn
    import torch.nn.functional as F

    class _Stop(Exception):
        pass

    class HookTrunk(nn.Module):
        """A whole (copied) model, run until ``layer`` and stopped there by a forward hook.

        Used for architectures whose layer cannot be reached by a prefix of ``features``;
        only the FC mask is supported there. The hook is added per call and removed in ``finally``.
        """

        def __init__(self, model: nn.Module, layer: str):
            super().__init__()
            self.model = model
            self.layer = layer

        def forward(self, x):
            box = {}

            def hook(module, inputs, output):
                box["out"] = output
                raise _Stop

            handle = self.model.get_submodule(self.layer).register_forward_hook(hook)
            try:
                self.model(x)
            except _Stop:
                pass
            finally:
                handle.remove()
            if "out" not in box:
                raise RuntimeError(f"layer '{self.layer}' did not run in the model's forward")
            return box["out"]

    class DilutedNet(nn.Module):
        """Backbone up to layer b (``trunk``, a Sequential), b's (pooled) flattened output, b's probe FC.

        ``forward(x, start=0)`` runs ``trunk[start:]`` then the head, so cached activations at
        trunk position ``start`` can be fed directly. ``info`` (plain data) describes the
        structure: the layer range, where each layer's conv and batch norm live, the pool.
        """

        def __init__(self, trunk: nn.Sequential, fc: nn.Linear, fc_shape, pool_hw=None, info: dict | None = None):
            super().__init__()
            self.trunk = trunk
            self.fc = fc
            self.fc_shape = tuple(int(s) for s in fc_shape)
            self.pool_hw = tuple(pool_hw) if pool_hw else None
            self.info = dict(info or {})

        def pool(self, h):
            if self.pool_hw is not None and tuple(h.shape[2:]) != self.pool_hw:
                h = F.adaptive_max_pool2d(h, self.pool_hw)
            return h

        def prefix(self, x, stop: int):
            """``trunk[:stop]`` (and the pool when ``stop`` is the whole trunk): the cacheable part."""
            for i in range(stop):
                x = self.trunk[i](x)
            return self.pool(x) if stop >= len(self.trunk) else x

        def forward(self, x, start: int = 0):
            for i in range(start, len(self.trunk)):
                x = self.trunk[i](x)
            return self.fc(self.pool(x).flatten(1))

        def extra_repr(self) -> str:
            return (f"layers={self.info.get('layers')}, fc_shape={self.fc_shape}, pool_hw={self.pool_hw}, "
                    f"pruned={bool(self.info.get('pruned'))}")

    return {"DilutedNet": DilutedNet, "HookTrunk": HookTrunk}


def __getattr__(name: str):  # module attribute access: afcc.DilutedNet, afcc.HookTrunk
    if name in ("DilutedNet", "HookTrunk"):
        return _classes()[name]
    raise AttributeError(f"module 'filterlens.afcc' has no attribute '{name}'")


def _is_channelwise(module) -> bool:
    return type(module).__name__ in _CHANNELWISE


def _locate_conv(trunk, pos: int, prev_pos: int) -> dict | None:
    """Where the conv (and batch norm) whose output channels ARE layer l's channels live in ``trunk``.

    ``pos``: trunk index of the module that ends layer l; ``prev_pos``: that of layer l-1 (-1 if
    none). filterlens VGG: ``trunk[pos]`` is a VGGBlock (conv, bn inside). Flat layouts
    (torchvision VGG-BN): the last Conv2d before ``pos``, with only batch norm and channel-wise
    modules after it up to ``pos``, and only channel-wise modules between layer l-1 and it.
    """
    import torch.nn as nn

    from .models import VGGBlock

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
    import torch
    import torch.nn as nn

    from .capture import Capture

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


def build_diluted(model, layers, fc_weight, input_size, pool: str | None = "none", spec=None):
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
    import torch
    import torch.nn as nn

    from .capture import pooled_shape
    from .config import parse_pool
    from .models import list_layers

    pool_text = "none" if pool is None else str(pool)
    parsed = parse_pool(pool_text)
    input_size = tuple(int(s) for s in input_size)
    all_layers = list_layers(model, input_size)
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
    b = chosen[-1]
    C, H, W = pooled_shape(b.shape, parsed)
    w = torch.as_tensor(fc_weight).detach().float().cpu()
    L = int(w.shape[0])
    if w.numel() != L * C * H * W:
        raise FilterlensError(f"the FC weight has shape {tuple(w.shape)}; layer '{b.name}' (output {b.shape}, probe_pool "
                              f"{pool_text}) needs ({L}, {C}, {H}, {W})")
    fc = nn.Linear(C * H * W, L, bias=False)
    with torch.no_grad():
        fc.weight.copy_(w.reshape(L, -1))
    trunk = _prefix_trunk(model, b, input_size)
    if trunk is not None:
        structure = {"mode": "prefix", "source": "features", "trunk_len": len(trunk)}
    else:
        trunk = nn.Sequential(_classes()["HookTrunk"](copy.deepcopy(model), b.name))
        structure = {"mode": "hook", "source": None, "trunk_len": 1}
    pool_hw = None if (H, W) == tuple(b.shape[1:]) else [H, W]
    info = {"layers": [l.name for l in chosen], "deepest": b.name, "input_size": list(input_size),
            "pool": pool_text, "pool_hw": pool_hw, "fc_shape_original": [L, C, H, W],
            "layer_shapes": {l.name: list(l.shape) for l in chosen}, **structure, "convs": {}, "pruned": None,
            "spec": asdict(spec) if is_dataclass(spec) else spec}
    net = _classes()["DilutedNet"](trunk, fc, (L, C, H, W), pool_hw, info)
    if structure["mode"] == "prefix":
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
            fits_prev = prev is None or conv.in_channels == prev.filters
            if conv.groups != 1 or conv.out_channels != l.filters or not fits_prev:
                continue
            info["convs"][l.name] = loc
    net.info = info
    device = next(model.parameters()).device
    return net.to(device).eval()


def make_masks(net, clusters: dict) -> list[LayerMask]:
    """AFCC masks of a :class:`DilutedNet` from per-layer clusters (``{layer: LayerSFP.clusters_}``).

    Conv masks for every consecutive pair of ``net.info["layers"]`` (in layer order), then the FC
    mask of the deepest layer. A conv that cannot be located (architectures other than
    filterlens VGG and torchvision VGG-BN) is a :class:`FilterlensError`.
    """
    layers = net.info["layers"]
    missing = [n for n in layers if n not in clusters]
    if missing:
        raise FilterlensError(f"no clusters given for layer '{missing[0]}'; need clusters of {', '.join(layers)}")
    masks = []
    for prev, cur in zip(layers, layers[1:]):
        loc = net.info["convs"].get(cur)
        if loc is None:
            raise FilterlensError(f"conv masks between '{prev}' and '{cur}' need the conv feeding '{cur}', which cannot be "
                                  "located in this architecture (supported: filterlens VGG, torchvision VGG-BN); use "
                                  f"--layers {layers[-1]} for the FC mask only")
        w = net.get_parameter(loc["conv"] + ".weight")
        masks.append(LayerMask(cur, "conv", loc["conv"] + ".weight",
                               conv_mask(clusters[prev], clusters[cur], tuple(w.shape)), prev))
    b = layers[-1]
    masks.append(LayerMask(b, "fc", "fc.weight", fc_mask(clusters[b], net.fc_shape)))
    return masks


def apply_masks(net, masks: Sequence[LayerMask]):
    """Set every masked weight of ``net`` to exactly 0.0 (in place, under no_grad); returns ``net``."""
    import torch

    with torch.no_grad():
        for m in masks:
            p = net.get_parameter(m.param)
            if m.mask.numel() != p.numel():
                raise FilterlensError(f"mask '{m.key}' has {m.mask.numel()} entries; parameter '{m.param}' has {p.numel()}")
            p.mul_(m.mask.reshape(p.shape).to(p.device, p.dtype))
    return net


def trainable_parameters(net, masks: Sequence[LayerMask]) -> list[str]:
    """Names of the parameters retraining updates: the masked convs (weight, bias), the batch-norm
    affine parameters of their blocks, and the FC. Everything else stays frozen."""
    names = ["fc.weight"] + (["fc.bias"] if net.fc.bias is not None else [])
    convs_of = {loc["conv"] + ".weight": loc for loc in net.info["convs"].values()}
    own = dict(net.named_parameters())
    for m in masks:
        if m.kind != "conv":
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


class TensorLoader:
    """Mini-batches of ready tensors (e.g. cached activations), shuffled by a generator seeded by (seed, epoch)."""

    def __init__(self, x, y, batch_size: int = 100, shuffle: bool = True, seed: int = 0):
        self.x, self.y, self.batch_size, self.shuffle, self.seed, self.epoch = x, y, int(batch_size), shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self):
        import torch

        n = len(self.y)
        if self.shuffle:
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        else:
            idx = torch.arange(n)
        for s in range(0, n, self.batch_size):
            b = idx[s : s + self.batch_size].to(self.x.device)
            yield self.x[b], self.y[b]


def retrain(net, masks: Sequence[LayerMask], loader, epochs: int = 3, lr: float = 0.01, momentum: float = 0.9,
            weight_decay: float = 0.0, start: int = 0, seed: int = 0, progress: bool = False) -> list[dict]:
    """Masked retraining, in place (METHOD.md stage 5): returns the per-epoch history.

    Only :func:`trainable_parameters` are updated (SGD with ``momentum``, ``weight_decay``,
    constant ``lr``, cross-entropy); all other parameters have ``requires_grad=False`` during
    the call (the caller's flags are restored afterwards). The masks are re-applied
    (``weight.mul_(mask)`` under no_grad) after EVERY optimiser step, so every masked weight is
    exactly 0.0 throughout. The network stays in EVAL mode: batch norm uses its frozen running
    statistics (its affine parameters in the masked blocks still train). ``loader`` yields
    (input at trunk position ``start``, label) batches and is re-iterated each epoch
    (``set_epoch`` is called when it has one).
    """
    import torch
    import torch.nn.functional as F

    from .run import progress_bar

    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 0:
        raise FilterlensError(f"retrain epochs {epochs!r} is invalid; use an integer >= 0")
    if not lr > 0:
        raise FilterlensError(f"retrain learning rate {lr!r} is invalid; use a number > 0")
    names = trainable_parameters(net, masks)
    params = dict(net.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    pairs = [(params[m.param], m.mask.reshape(params[m.param].shape).to(params[m.param].device, params[m.param].dtype))
             for m in masks]
    history = []
    was_training = net.training
    try:
        for n, p in params.items():
            p.requires_grad_(n in names)
        opt = torch.optim.SGD([params[n] for n in names], lr=lr, momentum=momentum, weight_decay=weight_decay)
        torch.manual_seed(seed)
        with torch.no_grad():
            for p, m in pairs:
                p.mul_(m)
        net.eval()  # batch norm: frozen running statistics (documented choice)
        for epoch in range(int(epochs)):
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            loss_sum, correct, total = 0.0, 0, 0
            for x, y in progress_bar(loader, progress, desc=f"retrain epoch {epoch + 1}/{epochs}"):
                out = net(x, start=start)
                loss = F.cross_entropy(out, y)
                if not torch.isfinite(loss):
                    raise FilterlensError(f"retraining loss became {loss.item()} in epoch {epoch + 1}; lower the retrain "
                                          f"learning rate (now {lr})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for p, m in pairs:
                        p.mul_(m)
                loss_sum += loss.item() * len(y)
                correct += (out.argmax(1) == y).sum().item()
                total += len(y)
            history.append({"epoch": epoch + 1, "loss": loss_sum / max(total, 1),
                            "train_accuracy": correct / max(total, 1)})
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
        net.train(was_training)
    return history


def accuracy(net, loader, start: int = 0) -> float:
    """Test accuracy of ``net`` in eval mode on (input at trunk position ``start``, label) batches."""
    import torch

    was = net.training
    net.eval()
    correct = total = 0
    try:
        with torch.no_grad():
            for x, y in loader:
                correct += (net(x, start=start).argmax(1) == y).sum().item()
                total += len(y)
    finally:
        net.train(was)
    return correct / max(total, 1)


# ============================================================================ physical removal

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
    import torch
    import torch.nn as nn

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
    import torch
    import torch.nn as nn

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
    import torch
    import torch.nn as nn

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
    import torch

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


# ============================================================================ cost

def count_macs(net, input_size) -> dict:
    """Parameters and multiply-accumulates of ``net`` for ONE input of ``input_size`` (C, H, W).

    Forward hooks (removed in ``finally``) record every module that runs. ``macs``: convs
    (output elements x in_channels/groups x kh x kw) and linear layers (in x out per row), dense;
    ``macs_nonzero``: counting only weights that are not exactly zero. ``params``: parameters of
    the modules that ran (a hooked trunk's unused head is not counted); ``params_nonzero``.
    """
    import torch
    import torch.nn as nn

    tot = {"macs": 0, "macs_nonzero": 0}
    ran: list = []
    handles = []

    def hook(module, inputs, output):
        ran.append(module)
        if isinstance(module, nn.Conv2d):
            per = int(output.shape[2] * output.shape[3])
            kh, kw = module.kernel_size
            tot["macs"] += int(output.shape[1]) * per * (module.in_channels // module.groups) * kh * kw
            tot["macs_nonzero"] += per * int(torch.count_nonzero(module.weight))
        elif isinstance(module, nn.Linear):
            rows = int(output.numel() // output.shape[-1])
            tot["macs"] += rows * module.in_features * module.out_features
            tot["macs_nonzero"] += rows * int(torch.count_nonzero(module.weight))

    was = net.training
    net.eval()
    try:
        for m in net.modules():
            if not list(m.children()):
                handles.append(m.register_forward_hook(hook))
        device = next(net.parameters()).device
        with torch.no_grad():
            net(torch.zeros(1, *input_size, device=device))
    finally:
        for h in handles:
            h.remove()
        net.train(was)
    seen, params, nonzero = set(), 0, 0
    for m in ran:
        if id(m) in seen:
            continue
        seen.add(id(m))
        for p in m.parameters(recurse=False):
            params += p.numel()
            nonzero += int(torch.count_nonzero(p))
    return {"params": params, "params_nonzero": nonzero, **tot}


def measure_latency(models: dict, input_size, batch: int = 64, repeats: int = 30, warmup: int = 3,
                    seed: int = 0, threads: int | None = None) -> dict:
    """Median CPU inference latency (ms) of each model on one batch of ``batch`` random inputs.

    Copies of the models are moved to the CPU and put in eval mode; timing under
    ``torch.inference_mode``, after ``warmup`` untimed runs of each, the models interleaved
    (alternating order) in every repeat so they share the machine's conditions. ``threads``:
    intra-op threads during the measurement (default: torch's current setting; restored after).
    Per model: median, min, 25th/75th percentiles; and ``ratio_to_first``: the median over
    repeats of (first model's time / this model's time) in the same repeat, a speed-up that is
    robust to load drifting during the measurement.
    """
    import torch

    x = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(seed))
    cpu = {k: copy.deepcopy(m).cpu().eval() for k, m in models.items()}
    times = {k: [] for k in cpu}
    names = list(cpu)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        used = torch.get_num_threads()
        with torch.inference_mode():
            for _ in range(warmup):
                for k in names:
                    cpu[k](x)
            for r in range(repeats):
                for k in (names if r % 2 == 0 else names[::-1]):
                    t0 = time.perf_counter()
                    cpu[k](x)
                    times[k].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old_threads)
    out = {}
    first = times[names[0]]
    for k, ts in times.items():
        ms = sorted(t * 1000 for t in ts)
        q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
        out[k] = {"median_ms": statistics.median(ms), "min_ms": ms[0], "p25_ms": q[0], "p75_ms": q[2],
                  "ratio_to_first": statistics.median(a / b for a, b in zip(first, ts)), "batch": batch,
                  "repeats": repeats, "threads": used}
    return out


# ============================================================================ export

def _spec_dict(spec):
    if spec is None:
        return None
    if is_dataclass(spec):
        return asdict(spec)
    return dict(spec)


def save(path, diluted_model, masks: Sequence[LayerMask], meta: dict | None = None) -> Path:
    """Write the diluted network, its masks and metadata to ONE file, atomically.

    Contents: ``format`` ``filterlens-afcc``, ``version`` 1, ``note`` (what is a mask and what
    is a removal), ``spec`` (the ModelSpec as a dict: ``meta["spec"]`` or the one given to
    :func:`build_diluted`), ``layers`` (the masked range), ``probe_shape`` (L, C, H, W of the
    FC as it is now) and ``pool``, ``state_dict`` (masked weights exactly 0.0), ``masks``,
    ``dilution`` per mask, ``original_shapes`` (every parameter before any removal),
    ``pruned`` (None for a masked-only network; else the kept filter indices per layer: a
    REAL removal), ``config`` (``meta["config"]``) and the rest of ``meta``.
    """
    from .files import torch_save

    meta = dict(meta or {})
    info = diluted_model.info
    spec = _spec_dict(meta.pop("spec", None) or info.get("spec"))
    if spec is None:
        raise FilterlensError("saving an AFCC model needs its ModelSpec (meta['spec']) so that load() can rebuild it")
    sd = {k: v.detach().cpu().clone() for k, v in diluted_model.state_dict().items()}
    for m in masks:
        if m.param not in sd:
            raise FilterlensError(f"mask '{m.key}' is on '{m.param}', which this network does not have")
        w = sd[m.param].reshape(m.mask.shape)
        if bool((w[~m.mask.cpu()] != 0).any()):
            raise FilterlensError(f"weights under mask '{m.key}' are not zero; call apply_masks first")
    original = meta.pop("original_shapes", None) or info.get("original_shapes") or \
        {k: list(v.shape) for k, v in sd.items()}
    structure = {k: info.get(k) for k in ("mode", "source", "trunk_len", "convs", "deepest", "input_size", "pool_hw",
                                          "fc_shape_original", "layer_shapes")}
    state = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "note": MASK_NOTE,
        "spec": spec,
        "layers": list(info["layers"]),
        "probe_shape": list(diluted_model.fc_shape),
        "pool": info.get("pool", "none"),
        "info": structure,
        "state_dict": sd,
        "masks": [m.to_state() for m in masks],
        "dilution": {m.key: m.dilution for m in masks},
        "original_shapes": original,
        "pruned": info.get("pruned"),
        "config": meta.pop("config", None),
        "meta": meta,
    }
    return torch_save(path, state)


def load(path, model=None, device="cpu"):
    """Rebuild a working diluted (or pruned) network from a file written by :func:`save`.

    The architecture comes from the file's ModelSpec (:func:`filterlens.models.build_model`),
    or from ``model`` (e.g. your own class; it is deep-copied, never modified); then the same
    truncation, FC and, for a pruned file, the same filter removal; then the saved state.
    Returns the network in eval mode, with ``afcc_masks`` (list of :class:`LayerMask`) and
    ``afcc_meta`` attributes. A file that does not fit the architecture is a
    :class:`FilterlensError` with one line.
    """
    import torch
    import torch.nn as nn

    from .models import ModelSpec, build_model

    path = Path(path)
    if not path.is_file():
        raise FilterlensError(f"AFCC file '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise FilterlensError(f"'{path}' is not a PyTorch file ({type(exc).__name__}); expected a file written by "
                              "filterlens afcc") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise FilterlensError(f"'{path}' is not a filterlens AFCC file (format {found!r}, expected '{FORMAT}')")
    if state.get("version") != FORMAT_VERSION:
        raise FilterlensError(f"'{path}' has AFCC format version {state.get('version')!r}; this filterlens reads "
                              f"version {FORMAT_VERSION}")
    spec = state["spec"]
    what = f"it was made from model {spec.get('model')!r} ({spec.get('num_labels')} labels)"
    base = model if model is not None else build_model(ModelSpec(**spec))
    info = state["info"]
    if info["mode"] == "prefix":
        feats = getattr(base, info["source"], None)
        if not isinstance(feats, nn.Sequential) or len(feats) < info["trunk_len"]:
            have = len(feats) if isinstance(feats, nn.Sequential) else "none"
            raise FilterlensError(f"'{path}' does not fit this architecture (it needs '{info['source']}' with at least "
                                  f"{info['trunk_len']} modules, the model has {have}); {what}")
        trunk = nn.Sequential(*[copy.deepcopy(m) for m in list(feats.children())[: info["trunk_len"]]])
    else:
        if info["deepest"] not in dict(base.named_modules()):
            raise FilterlensError(f"'{path}' does not fit this architecture (no layer '{info['deepest']}'); {what}")
        trunk = nn.Sequential(_classes()["HookTrunk"](copy.deepcopy(base), info["deepest"]))
    L, C, H, W = info["fc_shape_original"]
    full = {**info, "layers": list(state["layers"]), "pool": state["pool"], "pruned": None, "spec": spec,
            "original_shapes": state["original_shapes"]}
    net = _classes()["DilutedNet"](trunk, nn.Linear(C * H * W, L, bias=False), (L, C, H, W), info["pool_hw"], full)
    if state.get("pruned"):
        try:
            net = _slice_net(net, state["pruned"])
        except (IndexError, RuntimeError, KeyError, AttributeError) as exc:
            raise FilterlensError(f"'{path}' does not fit this architecture (its filter removal fails: "
                                  f"{type(exc).__name__}); {what}") from None
    own = net.state_dict()
    sd = state["state_dict"]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    bad = [k for k in sd if k in own and own[k].shape != sd[k].shape]
    if missing or unexpected or bad:
        detail = (f"the file lacks {missing[:2]}" if missing else f"the model lacks {unexpected[:2]}" if unexpected else
                  f"'{bad[0]}' is {tuple(sd[bad[0]].shape)} in the file, {tuple(own[bad[0]].shape)} in the model")
        raise FilterlensError(f"'{path}' does not fit this architecture ({detail}); {what}")
    net.load_state_dict(sd)
    net.afcc_masks = [LayerMask.from_state(d) for d in state["masks"]]
    net.afcc_meta = {k: state.get(k) for k in ("note", "spec", "layers", "probe_shape", "pool", "dilution",
                                               "original_shapes", "pruned", "config", "meta")}
    return net.to(device).eval()


# ============================================================================ the run-directory pipeline

def _check_threshold(t, what="threshold") -> float:
    try:
        v = float(t)
    except (TypeError, ValueError):
        raise FilterlensError(f"{what} {t!r} is not a number; use a value in (0, 1), e.g. 0.3") from None
    if not 0.0 < v < 1.0:
        raise FilterlensError(f"{what} {t} is outside (0, 1); use e.g. 0.3")
    return v


def _choose_layers(all_layers, spec, analysed: set):
    from .models import select_layers

    have = [l for l in all_layers if l.name in analysed]
    if not have:
        raise FilterlensError("probes.pt holds no layer of this run's model; run filterlens analyze --run-dir DIR again")
    if spec is None or (isinstance(spec, str) and spec.strip() == ""):
        return [have[-1]]
    chosen = select_layers(all_layers, spec)
    missing = [l.name for l in chosen if l.name not in analysed]
    if missing:
        raise FilterlensError(f"layer '{missing[0]}' was not analysed (probes.pt has {', '.join(l.name for l in have)}); "
                              "choose among those or run filterlens analyze --layers including it")
    _check_consecutive(chosen, all_layers)
    return chosen


class _Context:
    """Data for one AFCC run: train/test batches at the first trainable trunk position (cached when possible)."""

    def __init__(self, net, names, data, device, batch_size, augment, seed, budget, progress, echo):
        import torch

        from .data import make_loader
        from .run import progress_bar

        self.data, self.device, self.batch_size, self.augment, self.seed = data, device, batch_size, augment, seed
        self.start = _first_trainable(net, names)
        test = make_loader(data, "test", 256, device=device)
        self.test_full = test
        n = len(data.train) + len(data.test)
        with torch.no_grad():
            x0, _ = next(iter(make_loader(data, "test", 1, device=device)))
            per = net.prefix(x0, self.start).numel()
        need = 4 * per * n
        self.engine = "cache"
        if augment:
            self.engine, self.note = "stream", "augmentation on: every retraining step streams through the network"
        elif need > budget:
            self.engine = "stream"
            self.note = (f"activation cache would need {need / 2**20:.0f} MiB > cache budget {budget / 2**20:.0f} MiB; "
                         "streaming")
        else:
            self.note = (f"frozen trunk[:{self.start}] computed once and cached (float32, {need / 2**20:.1f} MiB)")
        if self.engine == "cache":
            def cache(split):
                hs, ys = [], []
                loader = make_loader(data, split, 256, device=device)
                with torch.no_grad():
                    for x, y in progress_bar(loader, progress, desc=f"cache {split}"):
                        hs.append(net.prefix(x, self.start).float())
                        ys.append(y)
                return torch.cat(hs), torch.cat(ys)

            self.train_x, self.train_y = cache("train")
            self.test_x, self.test_y = cache("test")
        else:
            echo(f"note: {self.note}")

    def train_loader(self):
        from .data import make_loader

        if self.engine == "cache":
            return TensorLoader(self.train_x, self.train_y, self.batch_size, True, self.seed), self.start
        return make_loader(self.data, "train", self.batch_size, train=True, seed=self.seed, device=self.device,
                           augment=self.augment), 0

    def accuracy(self, net) -> float:
        if self.engine == "cache":
            return accuracy(net, TensorLoader(self.test_x, self.test_y, 1024, False), self.start)
        return accuracy(net, self.test_full, 0)

    def accuracy_full(self, net) -> float:
        return accuracy(net, self.test_full, 0)


def _variant(net0, clusters, ctx, settings, progress) -> dict:
    """Masks from ``clusters``; accuracy masked and retrained; the same for ``random_draws`` random controls.

    Random draw k places the connections with seed ``seed + k``; every draw is retrained with
    the same data order (``seed``). ``acc_random_*`` are the means over the draws (the spread is
    in ``acc_random_*_draws``); ``random_masks``/``random_net`` are the first draw's.
    """
    masks = make_masks(net0, clusters)
    out = {"masks": masks}
    draws = [("", masks)] + [(f"random{k}_", random_masks(masks, settings["seed"] + k))
                             for k in range(settings["random_draws"])]
    for tag, mk in draws:
        net = apply_masks(copy.deepcopy(net0), mk)
        out[f"acc_{tag}masked"] = ctx.accuracy(net)
        out[f"{tag}masked_net"] = copy.deepcopy(net) if tag in ("", "random0_") else None
        if settings["epochs"] > 0:
            loader, start = ctx.train_loader()
            out[f"{tag}history"] = retrain(net, mk, loader, settings["epochs"], settings["lr"], settings["momentum"],
                                           settings["weight_decay"], start, settings["seed"], progress)
            out[f"acc_{tag}retrained"] = ctx.accuracy(net)
        else:
            out[f"{tag}history"] = []
            out[f"acc_{tag}retrained"] = out[f"acc_{tag}masked"]
        out[f"{tag}net"] = net if tag in ("", "random0_") else None
        out[f"{tag}masks"] = mk
    n = settings["random_draws"]
    for what in ("masked", "retrained"):
        vals = [out[f"acc_random{k}_{what}"] for k in range(n)]
        out[f"acc_random_{what}_draws"] = vals
        out[f"acc_random_{what}"] = statistics.fmean(vals)
        out[f"acc_random_{what}_sd"] = statistics.stdev(vals) if n > 1 else None
    out["random_masks"], out["random_history"] = out["random0_masks"], out["random0_history"]
    return out


def _sfp_hash(acfg: dict, cfg) -> str | None:
    from .config import Config

    try:
        return Config.from_dict({k: v for k, v in acfg.items() if k in cfg.to_dict()}).stage_hash("sfp")
    except FilterlensError:
        return None


def _total_dilution(masks, kind=None):
    sel = [m for m in masks if kind is None or m.kind == kind]
    if not sel:
        return None
    total = sum(m.total for m in sel)
    return (total - sum(m.kept for m in sel)) / total


def run_afcc(run_dir, layers=None, retrain_epochs: int = 3, retrain_lr: float = 0.01, threshold: float | None = None,
             seed: int = 0, progress: bool = False, echo=print, thresholds: str | Sequence[float] = "0.2,0.3,0.4",
             momentum: float = 0.9, weight_decay: float = 0.0, batch_size: int = 100, augment: bool = False,
             latency_repeats: int = 30, latency_batch: int = 64, latency_threads: int | None = None,
             random_draws: int = 1) -> dict:
    """AFCC on an analysed run directory (``filterlens afcc``); returns what it writes to results.json.

    ``layers``: None (the deepest analysed layer: FC mask only), ``last:N``, indices or names of
    consecutive analysed layers (conv masks between each pair plus the deepest one's FC mask).
    ``threshold``: clusters' binarisation threshold (default: the analysis'). ``thresholds``:
    the extra thresholds of the accuracy-against-dilution curve. Writes ``afcc.csv`` (one row
    per masked tensor), ``afcc_thresholds.csv``, ``afcc_pruning.csv``, ``afcc.png``,
    ``afcc_model.pt`` (the retrained masked network, :func:`save`), ``afcc_pruned.pt`` (the
    physically smaller network made from it, when supported) and the ``afcc`` and
    ``afcc_pruned`` entries of ``results.json`` (other keys kept).
    """
    import torch

    from . import sfp
    from .config import parse_bytes, parse_thresholds
    from .files import write_csv, write_json
    from .models import list_layers
    from .run import RunDir
    from .train import load_trained
    from .utils import environment, resolve_device, seed_everything

    t_start = time.perf_counter()
    if isinstance(retrain_epochs, bool) or not isinstance(retrain_epochs, int) or retrain_epochs < 0:
        raise FilterlensError(f"retrain epochs {retrain_epochs!r} is invalid; use an integer >= 0 (0: no retraining)")
    if not isinstance(retrain_lr, (int, float)) or isinstance(retrain_lr, bool) or not retrain_lr > 0 \
            or not math.isfinite(retrain_lr):
        raise FilterlensError(f"retrain learning rate {retrain_lr!r} is invalid; use a number > 0, e.g. 0.01")
    if threshold is not None:
        threshold = _check_threshold(threshold)
    sweep = parse_thresholds(",".join(str(t) for t in thresholds) if not isinstance(thresholds, str) else thresholds)
    if batch_size < 1:
        raise FilterlensError(f"retrain batch size {batch_size} must be >= 1")
    if isinstance(random_draws, bool) or not isinstance(random_draws, int) or random_draws < 1:
        raise FilterlensError(f"random draws {random_draws!r} is invalid; use an integer >= 1")

    rd = RunDir(run_dir)
    if not rd.path.is_dir():
        raise FilterlensError(f"run directory '{rd.path}' does not exist; train and analyse a run first")
    for name in ("probes.pt", "label_means.pt", "results.json"):
        if not rd.exists(name):
            raise FilterlensError(f"'{rd.path}' has not been analysed (no {name}); run filterlens analyze --run-dir "
                                  f"{rd.path} first")
    results = rd.read_json("results.json")
    model, cfg, data, spec = load_trained(rd.path)
    acfg = results.get("config") or cfg.to_dict()
    analysis_threshold = float(acfg.get("threshold", cfg.threshold))
    normalise = acfg.get("normalise", cfg.normalise)
    pool = acfg.get("probe_pool", cfg.probe_pool)
    t_main = analysis_threshold if threshold is None else threshold
    seed_everything(seed)
    device = resolve_device(cfg.device)
    model.to(device)
    try:
        probes = torch.load(rd.file("probes.pt"), map_location="cpu", weights_only=True)
        means = torch.load(rd.file("label_means.pt"), map_location="cpu", weights_only=True)["means"]
    except Exception as exc:  # noqa: BLE001
        raise FilterlensError(f"probes.pt/label_means.pt in '{rd.path}' cannot be read ({type(exc).__name__}); run "
                              f"filterlens analyze --run-dir {rd.path} again") from None
    input_size = (data.in_channels, data.image_size, data.image_size)
    all_layers = list_layers(model, input_size)
    chosen = _choose_layers(all_layers, layers, set(probes) & set(means))
    names = [l.name for l in chosen]
    b = names[-1]
    probe_acc = {r["layer"]: r.get("accuracy") for r in results.get("layers", [])}
    net0 = build_diluted(model, names, probes[b], input_size, pool, spec)
    if len(names) > 1:
        for prev, cur in zip(names, names[1:]):
            if cur not in net0.info["convs"]:
                raise FilterlensError(f"conv masks between '{prev}' and '{cur}' are not supported for model "
                                      f"'{spec.model}' (its conv feeding '{cur}' cannot be located; supported: filterlens "
                                      f"VGG, torchvision VGG-BN); use --layers {b} for the FC mask only")

    def clusters_at(t):
        out = {}
        for n in names:
            if tuple(probes[n].shape) != tuple(means[n].shape):
                raise FilterlensError(f"probes.pt and label_means.pt disagree for layer '{n}'; run filterlens analyze "
                                      "again")
            out[n] = sfp.analyze_layer(probes[n].double(), means[n], threshold=t, normalise=normalise).clusters_
        return out

    settings = {"epochs": retrain_epochs, "lr": float(retrain_lr), "momentum": float(momentum),
                "weight_decay": float(weight_decay), "batch_size": int(batch_size), "augment": bool(augment),
                "seed": int(seed), "random_draws": int(random_draws)}
    main_clusters = clusters_at(t_main)
    trainable = trainable_parameters(net0, make_masks(net0, main_clusters))
    budget = parse_bytes(acfg.get("cache_budget", cfg.cache_budget))
    ctx = _Context(net0, trainable, data, device, batch_size, augment, seed, budget, progress, echo)
    t0 = time.perf_counter()
    acc_before = ctx.accuracy(net0)
    main = _variant(net0, main_clusters, ctx, settings, progress)
    t_main_s = time.perf_counter() - t0
    accs = {"before": acc_before, "masked": main["acc_masked"], "retrained": main["acc_retrained"],
            "random_masked": main["acc_random_masked"], "random_retrained": main["acc_random_retrained"],
            "random_retrained_sd": main["acc_random_retrained_sd"],
            "random_retrained_draws": main["acc_random_retrained_draws"],
            "random_masked_draws": main["acc_random_masked_draws"], "random_draws": random_draws,
            "probe": probe_acc.get(b)}

    rows = []
    for m in main["masks"]:
        conn = connections(m.mask)
        per_filter = conn.any(0) if m.kind == "fc" else conn.any(1)
        rows.append({"layer": m.layer, "kind": m.kind, "prev_layer": m.prev or "", "param": m.param, "threshold": t_main,
                     "dilution": m.dilution, "kept": m.kept, "total": m.total, "connections_kept": int(conn.sum()),
                     "connections_total": int(conn.numel()), "filters": int(per_filter.numel()),
                     "filters_without_connection": int((~per_filter).sum()),
                     "acc_before": acc_before, "acc_masked": accs["masked"], "acc_retrained": accs["retrained"],
                     "acc_random_masked": accs["random_masked"], "acc_random_retrained": accs["random_retrained"],
                     "acc_random_retrained_sd": accs["random_retrained_sd"], "random_draws": random_draws,
                     "probe_accuracy": probe_acc.get(b)})

    def sweep_row(t, v, clusters):
        return {"threshold": t, "dilution": _total_dilution(v["masks"]),
                "fc_dilution": _total_dilution(v["masks"], "fc"),
                "conv_dilution": _total_dilution(v["masks"], "conv"), "acc_before": acc_before,
                "acc_masked": v["acc_masked"], "acc_retrained": v["acc_retrained"],
                "acc_random_masked": v["acc_random_masked"], "acc_random_retrained": v["acc_random_retrained"],
                "acc_random_retrained_sd": v["acc_random_retrained_sd"],
                "acc_random_retrained_draws": " ".join(f"{a:.4f}" for a in v["acc_random_retrained_draws"]),
                "random_draws": random_draws,
                "filters_without_cluster": sum(1 for c in clusters[b] if not c) / max(len(clusters[b]), 1)}

    t0 = time.perf_counter()
    sweep_rows = []
    for t in sorted(set(sweep) | {t_main}):
        if t == t_main:
            sweep_rows.append({**sweep_row(t, main, main_clusters), "main": True})
            continue
        cl = clusters_at(t)
        v = _variant(net0, cl, ctx, settings, progress)
        sweep_rows.append({**sweep_row(t, v, cl), "main": False})
        del v
    t_sweep_s = time.perf_counter() - t0

    # ---- physical removal
    t0 = time.perf_counter()
    ok, reason = prune_support(net0)
    pruned_info: dict = {"supported": ok, "note": MASK_NOTE}
    pruning_rows = []
    pruned_net = None
    if ok:
        pruned0, _, filt = prune(main["masked_net"], main["masks"])
        pruned_net, pruned_masks, _ = prune(main["net"], main["masks"])
        x = torch.randn(8, *input_size, generator=torch.Generator().manual_seed(seed)).to(device)
        with torch.no_grad():
            diff = float((main["masked_net"](x) - pruned0(x)).abs().max())
        acc_pruned = ctx.accuracy_full(pruned0)
        acc_pruned_retrained = ctx.accuracy_full(pruned_net) if retrain_epochs > 0 else acc_pruned
        models = {"original": net0, "masked": main["masked_net"], "pruned": pruned0}
        lat = measure_latency(models, input_size, latency_batch, latency_repeats, seed=seed, threads=latency_threads)
        cost = {k: count_macs(m, input_size) for k, m in models.items()}
        acc_of = {"original": acc_before, "masked": accs["masked"], "pruned": acc_pruned}
        notes = {"original": "backbone up to the layer + probe FC, dense, unmasked",
                 "masked": "same dense shapes, masked weights are zeros (no speed-up)",
                 "pruned": "filters with all outgoing weights masked physically removed"}
        for k in models:
            pruning_rows.append({"model": k, **cost[k], "latency_ms": lat[k]["median_ms"],
                                 "latency_p25_ms": lat[k]["p25_ms"], "latency_p75_ms": lat[k]["p75_ms"],
                                 "accuracy": acc_of[k], "note": notes[k]})
        pruning_rows.append({"model": "pruned_retrained", **count_macs(pruned_net, input_size),
                             "latency_ms": lat["pruned"]["median_ms"], "latency_p25_ms": lat["pruned"]["p25_ms"],
                             "latency_p75_ms": lat["pruned"]["p75_ms"], "accuracy": acc_pruned_retrained,
                             "note": "the pruned structure made from the retrained masked network (same shapes as "
                                     "pruned; latency is the pruned one's)"})
        pruned_info.update({
            "filters": filt,
            "original": {**cost["original"], "latency_ms": lat["original"]["median_ms"]},
            "masked": {**cost["masked"], "latency_ms": lat["masked"]["median_ms"]},
            "pruned": {**cost["pruned"], "latency_ms": lat["pruned"]["median_ms"]},
            "accuracy": {"original": acc_before, "masked": accs["masked"], "pruned": acc_pruned,
                         "retrained_masked": accs["retrained"], "pruned_retrained": acc_pruned_retrained},
            "params_ratio": cost["pruned"]["params"] / max(cost["original"]["params"], 1),
            "macs_ratio": cost["pruned"]["macs"] / max(cost["original"]["macs"], 1),
            "speedup": lat["pruned"]["ratio_to_first"],
            "speedup_of_medians": lat["original"]["median_ms"] / max(lat["pruned"]["median_ms"], 1e-12),
            "max_abs_diff_masked_vs_pruned": diff,
            "latency": {"device": "cpu", "batch": latency_batch, "repeats": latency_repeats,
                        "threads": lat["original"]["threads"],
                        "statistic": "median ms; speedup = median over repeats of original/pruned time in the "
                                     "same repeat",
                        "detail": lat},
        })
    else:
        pruned_info.update({"reason": f"not supported: {reason}"})
    t_prune_s = time.perf_counter() - t0

    # ---- files
    config = {**acfg, "afcc": {"layers": names, "threshold": t_main, "thresholds": sweep, **settings,
                               "normalise": normalise, "probe_pool": pool}}
    meta = {"spec": spec, "config": config, "accuracy": accs, "threshold": t_main,
            "retrained": retrain_epochs > 0, "data": data.describe()}
    save(rd.file("afcc_model.pt"), main["net"], main["masks"], meta)
    files = ["afcc.csv", "afcc_thresholds.csv", "afcc.png", "afcc_model.pt"]
    if pruned_net is not None:
        save(rd.file("afcc_pruned.pt"), pruned_net, pruned_masks, meta)
        write_csv(rd.file("afcc_pruning.csv"), pruning_rows, PRUNING_COLUMNS)
        files += ["afcc_pruned.pt", "afcc_pruning.csv"]
    write_csv(rd.file("afcc.csv"), rows, AFCC_COLUMNS)
    write_csv(rd.file("afcc_thresholds.csv"), sweep_rows, THRESHOLD_COLUMNS + ["main"])
    title = f"AFCC: {spec.model} on {data.name}, {names[0]}" + (f"..{b}" if len(names) > 1 else "")
    plot_afcc(sweep_rows, rd.file("afcc.png"), title=title, acc_before=acc_before)
    afcc = {
        "version": FORMAT_VERSION,
        "layers": names,
        "kind": "fc" if len(names) == 1 else "conv+fc",
        "threshold": t_main,
        "analysis": {"threshold": analysis_threshold, "normalise": normalise, "probe_pool": pool,
                     "probe_mode": acfg.get("probe_mode"), "sfp_hash": _sfp_hash(acfg, cfg)},
        "masked": rows,
        "dilution": {m.key: m.dilution for m in main["masks"]},
        "dilution_total": _total_dilution(main["masks"]),
        "fc_dilution": _total_dilution(main["masks"], "fc"),
        "accuracy": accs,
        "afcc_beats_random": (accs["retrained"] >= accs["random_retrained"]),
        "retrain": {**settings, "optimizer": "sgd", "nesterov": False, "schedule": "constant",
                    "batch_norm": "eval mode: running statistics frozen; affine parameters of masked blocks trained",
                    "masks": "re-applied (weight.mul_(mask)) after every optimiser step",
                    "trainable": trainable, "engine": ctx.engine, "engine_note": ctx.note,
                    "history": main["history"], "random_history": main["random_history"]},
        "random_control": "per filter the same number of kept connections (FC: output units; conv: input filters), "
                          f"placed at random; {random_draws} draw(s), draw k from torch.Generator seeded {seed}+k; "
                          "acc_random_* are means over the draws",
        "thresholds": sweep_rows,
        "note": MASK_NOTE,
        "files": files,
        "timings": {"main_s": t_main_s, "thresholds_s": t_sweep_s, "pruning_s": t_prune_s,
                    "total_s": time.perf_counter() - t_start},
        "environment": environment(),
    }
    results = rd.read_json("results.json")  # re-read: keep every other key as it is now
    results["afcc"] = afcc
    results["afcc_pruned"] = pruned_info
    write_json(rd.file("results.json"), results)
    return {**afcc, "pruned": pruned_info, "run_dir": str(rd.path)}


def plot_afcc(rows: list[dict], path, title: str = "", acc_before: float | None = None) -> Path:
    """``afcc.png``: test accuracy against dilution, AFCC and the random control, at each threshold."""
    from .report import _figure, save_figure

    plt = _figure()
    rows = sorted(rows, key=lambda r: r["dilution"])
    x = [r["dilution"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(x, [r["acc_retrained"] for r in rows], "o-", color="tab:blue", label="AFCC, retrained")
    sd = [r.get("acc_random_retrained_sd") or 0.0 for r in rows]
    draws = rows[0].get("random_draws", 1) if rows else 1
    ax.errorbar(x, [r["acc_random_retrained"] for r in rows], yerr=sd if any(sd) else None, fmt="s-", color="tab:red",
                capsize=3, label="random control, retrained" + (f" (mean ± sd of {draws} draws)" if draws > 1 else ""))
    ax.plot(x, [r["acc_masked"] for r in rows], "o:", color="tab:blue", alpha=0.5, label="AFCC, masked (no retraining)")
    ax.plot(x, [r["acc_random_masked"] for r in rows], "s:", color="tab:red", alpha=0.5,
            label="random, masked (no retraining)")
    if acc_before is not None:
        ax.axhline(acc_before, color="0.4", lw=1, ls="--", label=f"before masking ({acc_before:.3f})")
    for r in rows:
        ax.annotate(f"t={r['threshold']:g}", (r["dilution"], r["acc_retrained"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    ax.set_xlabel("dilution (removed / total masked weights)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title or "AFCC: accuracy against dilution", fontsize=10)
    return save_figure(fig, Path(path))


def print_afcc(out: dict, echo=print) -> None:
    """The short table the CLI prints."""
    a = out["accuracy"]
    echo(f"AFCC on {', '.join(out['layers'])} at threshold {out['threshold']:g}; retraining: "
         f"{out['retrain']['epochs']} epoch(s), lr {out['retrain']['lr']:g} ({out['retrain']['engine']})")
    echo(f"{'layer':<16}{'kind':<6}{'dilution':>9}{'kept':>10}{'total':>10}{'no-conn filters':>17}")
    for r in out["masked"]:
        echo(f"{r['layer']:<16}{r['kind']:<6}{r['dilution']:>9.4f}{r['kept']:>10}{r['total']:>10}"
             f"{r['filters_without_connection']:>17}")
    n = a.get("random_draws", 1)
    spread = f" ± {a['random_retrained_sd']:.4f} (sd of {n} draws)" if n > 1 else ""
    echo(f"accuracy: before {a['before']:.4f}  masked {a['masked']:.4f}  retrained {a['retrained']:.4f}  |  random"
         f"{' (mean)' if n > 1 else ''}: masked {a['random_masked']:.4f}  retrained {a['random_retrained']:.4f}{spread}")
    p = out.get("pruned") or {}
    if p.get("supported"):
        f = "; ".join(f"{k} {v['filters_before']}->{v['filters_after']}" for k, v in p["filters"].items())
        echo(f"physical removal: filters {f}; params {p['original']['params']} -> {p['pruned']['params']}; MACs "
             f"{p['original']['macs']} -> {p['pruned']['macs']}; CPU latency (batch {p['latency']['batch']}) "
             f"{p['original']['latency_ms']:.2f} -> {p['pruned']['latency_ms']:.2f} ms (paired speed-up "
             f"x{p['speedup']:.2f}); accuracy pruned "
             f"{p['accuracy']['pruned']:.4f}, from retrained {p['accuracy']['pruned_retrained']:.4f}")
    else:
        echo(f"physical removal: {p.get('reason', 'not supported')}")
    echo(f"{'threshold':>9}{'dilution':>10}{'AFCC':>8}{'random':>8}   (accuracy after retraining)")
    for r in out["thresholds"]:
        echo(f"{r['threshold']:>9g}{r['dilution']:>10.4f}{r['acc_retrained']:>8.4f}{r['acc_random_retrained']:>8.4f}")
    echo(f"files in {out.get('run_dir', '.')}: {', '.join(out['files'])} (results.json: afcc, afcc_pruned)")


# ============================================================================ command line

def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``afcc`` subcommand to an argparse ``subparsers`` object (``cli.build_parser``)."""
    p = subparsers.add_parser(
        "afcc", help="dilute an analysed run by its filters' cluster connections (AFCC), retrain, compare with a "
                     "random control, and remove filters physically",
        description="AFCC (METHOD.md stage 5) on a run analysed by filterlens analyze. Writes afcc.csv, "
                    "afcc_thresholds.csv, afcc_pruning.csv, afcc.png, afcc_model.pt (masked: zeros in dense tensors, "
                    "no speed-up), afcc_pruned.pt (filters physically removed) and the afcc / afcc_pruned entries "
                    "of results.json.")
    p.add_argument("--run-dir", required=True, help="a run directory analysed by filterlens analyze")
    p.add_argument("--layers", default=None,
                   help="consecutive analysed layers: last:N, indices or dotted names; conv masks between each pair "
                        "plus the deepest layer's FC mask (default: the deepest analysed layer, FC mask only)")
    p.add_argument("--retrain-epochs", type=int, default=3, help="epochs of masked retraining, 0 for none (default: 3)")
    p.add_argument("--retrain-lr", type=float, default=0.01,
                   help="SGD learning rate of the retraining; momentum 0.9, batch 100, constant (default: 0.01)")
    p.add_argument("--threshold", type=float, default=None,
                   help="cluster threshold in (0, 1) (default: the analysis' threshold)")
    p.add_argument("--thresholds", default="0.2,0.3,0.4",
                   help="thresholds of the accuracy-against-dilution plot, '' for none (default: 0.2,0.3,0.4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random control and the retraining order (default: 0)")
    p.add_argument("--random-draws", type=int, default=3,
                   help="random controls per threshold, draw k seeded seed+k; mean and sd reported (default: 3)")
    p.add_argument("--retrain-augment", action="store_true",
                   help="use the dataset's training augmentation when retraining (default: off)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def cmd_afcc(args) -> int:
    """``filterlens afcc``: run :func:`run_afcc` with the flags and print the table."""
    out = run_afcc(args.run_dir, layers=args.layers, retrain_epochs=args.retrain_epochs, retrain_lr=args.retrain_lr,
                   threshold=args.threshold, seed=args.seed, progress=not args.no_progress,
                   thresholds=args.thresholds, augment=getattr(args, "retrain_augment", False),
                   random_draws=getattr(args, "random_draws", 3))
    print_afcc(out)
    return 0
