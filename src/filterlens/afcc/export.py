"""Saving and loading a diluted (masked or pruned) network: one versioned file, format ``filterlens-afcc``."""
from __future__ import annotations

import copy
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..errors import FilterlensError
from ..files import torch_save
from ..fingerprint import digest_matches, with_digest
from ..models import ModelSpec, build_model
from .diluted import DilutedNet, hook_trunk
from .masks import LayerMask
from .removal import remove_units

FORMAT = "filterlens-afcc"
FORMAT_VERSION = 1
MASK_NOTE = ("masks: weights set to exactly 0.0 inside dense tensors (same shapes, parameters and compute as the "
             "unmasked network: no speed-up by themselves); pruned: units (filters, heads, nodes) whose outgoing "
             "weights are all masked are physically removed (smaller dense convs, batch norms, Linear layers and FC: "
             "real savings, identical outputs)")


def _spec_dict(spec):
    if spec is None:
        return None
    if is_dataclass(spec) and not isinstance(spec, type):
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
    structure = {k: info.get(k) for k in ("mode", "source", "trunk_len", "convs", "linears", "nodes", "deepest",
                                          "input_size", "pool_hw", "fc_shape_original", "layer_shapes", "unit")}
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
    return torch_save(path, with_digest(state))  # load() checks the digest: a flipped byte is refused


def _read_file(path: Path) -> dict:
    """The contents of an AFCC file, refused in one line where it is missing, not a PyTorch file, not filterlens'
    format or version, or damaged (its sha256 differs from the one saved with it)."""
    if path.is_dir():
        raise FilterlensError(f"AFCC file '{path}' is a directory, not a file; give the file filterlens afcc wrote "
                              "(RUN_DIR/afcc_model.pt or afcc_pruned.pt)")
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
    if digest_matches(state) is False:
        raise FilterlensError(f"AFCC file '{path}' is damaged: what it holds differs from the sha256 filterlens saved "
                              "with it (a changed byte); it is not loaded: use an intact copy or run filterlens afcc "
                              "again")
    return state


def _trunk(base: nn.Module, info: dict, unfit: str, what: str) -> nn.Sequential:
    """The saved network's trunk rebuilt from ``base`` (deep-copied): the first modules of its ``features`` (a
    prefix trunk) or the whole network stopped at the deepest layer by a hook; ``unfit`` and ``what`` open and
    close the one line that refuses an architecture without them."""
    if info["mode"] == "prefix":
        feats = getattr(base, info["source"], None)
        if not isinstance(feats, nn.Sequential) or len(feats) < info["trunk_len"]:
            have = len(feats) if isinstance(feats, nn.Sequential) else "none"
            raise FilterlensError(f"{unfit} (it needs '{info['source']}' with at least "
                                  f"{info['trunk_len']} modules, the model has {have}); {what}")
        trunk = nn.Sequential(*[copy.deepcopy(m) for m in list(feats.children())[: info["trunk_len"]]])
    else:
        if info["deepest"] not in dict(base.named_modules()):
            raise FilterlensError(f"{unfit} (no layer '{info['deepest']}'); {what}")
        trunk = hook_trunk(copy.deepcopy(base), info.get("unit") or {"name": info["deepest"]})
    return trunk


def load(path, model=None, device="cpu"):
    """Rebuild a working diluted (or pruned) network from a file written by :func:`save`.

    The architecture comes from the file's ModelSpec (:func:`filterlens.models.build_model`),
    or from ``model`` (e.g. your own class; it is deep-copied, never modified); then the same
    truncation, FC and, for a pruned file, the same filter removal; then the saved state.
    Returns the network in eval mode, with ``afcc_masks`` (list of :class:`LayerMask`) and
    ``afcc_meta`` attributes. A file that does not fit the architecture is a
    :class:`FilterlensError` with one line.
    """
    path = Path(path)
    state = _read_file(path)
    spec = state["spec"]
    what = f"it was made from model {spec.get('model')!r} ({spec.get('num_labels')} labels)"
    base = model if model is not None else build_model(ModelSpec(**spec))
    info = state["info"]
    trunk = _trunk(base, info, f"'{path}' does not fit this architecture", what)
    L, C, H, W = info["fc_shape_original"]
    full = {**info, "layers": list(state["layers"]), "pool": state["pool"], "pruned": None, "spec": spec,
            "original_shapes": state["original_shapes"]}
    net = DilutedNet(trunk, nn.Linear(C * H * W, L, bias=False), (L, C, H, W), info["pool_hw"], full)
    if state.get("pruned"):
        try:
            shapes = info["layer_shapes"]
            removed = {l: [c for c in range(int(shapes[l][0])) if c not in set(kept)]
                       for l, kept in state["pruned"].items()}
            net = remove_units(net, removed)
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

