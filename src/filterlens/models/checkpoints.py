"""Checkpoints: a filterlens checkpoint (format, version, ModelSpec, label names, weights) or a plain state_dict."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import FilterlensError
from ..files import torch_save
from ..fingerprint import digest_matches, with_digest
from .build import ModelSpec

CHECKPOINT_FORMAT = "filterlens-checkpoint"
CHECKPOINT_VERSION = 1



def save_checkpoint(path, model: nn.Module, spec: ModelSpec, label_names: list[str], extra: dict | None = None):
    """Write a filterlens checkpoint to ``path`` atomically: format, version, ``spec``, label names, the
    model's state_dict and ``extra``, with a digest that reading checks."""
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "spec": asdict(spec),
             "label_names": list(label_names), "model": model.state_dict()}
    state.update(extra or {})
    return torch_save(path, with_digest(state))  # read_checkpoint checks the digest: a flipped byte is refused


def read_checkpoint(path) -> dict:
    """Load a filterlens checkpoint (or a plain state_dict) and check it is one."""
    path = Path(path)
    if path.is_dir():
        raise FilterlensError(f"checkpoint '{path}' is a directory, not a file; give the checkpoint file (e.g. "
                              "RUN_DIR/model.pt)")
    if not path.is_file():
        raise FilterlensError(f"checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FilterlensError(f"'{path}' is not a PyTorch checkpoint ({type(exc).__name__}); expected a file "
                              "written by filterlens train or torch.save(model.state_dict())") from None
    if not isinstance(state, dict):
        raise FilterlensError(f"'{path}' holds a {type(state).__name__}, not a checkpoint dict or state_dict")
    if state.get("format") == CHECKPOINT_FORMAT and digest_matches(state) is False:
        raise FilterlensError(f"checkpoint '{path}' is damaged: what it holds differs from the sha256 filterlens "
                              "saved with it (a changed byte); it is not loaded: use an intact copy or train again")
    if state.get("format") != CHECKPOINT_FORMAT:
        if all(torch.is_tensor(v) for v in state.values()) and state:
            return {"model": state, "spec": None}
        raise FilterlensError(f"'{path}' is not a filterlens checkpoint nor a state_dict")
    return state


def load_checkpoint(path, model: nn.Module, spec: ModelSpec | None = None) -> dict:
    """Load weights into ``model``; refuse another architecture or label count with one clear line."""
    state = read_checkpoint(path)
    saved = state.get("spec")
    if saved is not None and spec is not None:
        for key, label in (("model", "architecture"), ("num_labels", "label count"), ("in_channels", "input channels"),
                           ("width_mult", "width multiplier"), ("vgg_cfg", "VGG config")):
            if saved.get(key) != getattr(spec, key):
                raise FilterlensError(f"checkpoint '{path}' is for {label} {saved.get(key)!r}, not "
                                      f"{getattr(spec, key)!r}; use a matching --model/--labels or another checkpoint")
    sd = state["model"]
    for k, v in sd.items():
        if torch.is_floating_point(v) and not torch.isfinite(v).all():
            raise FilterlensError(f"checkpoint '{path}' has NaN or Inf values in '{k}'; it cannot be analysed")
    missing, unexpected = [], []
    own = model.state_dict()
    for k in own:
        if k not in sd:
            missing.append(k)
    for k in sd:
        if k not in own:
            unexpected.append(k)
    shape_bad = [k for k in sd if k in own and own[k].shape != sd[k].shape]
    if missing or unexpected or shape_bad:
        what = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected else
                f"shape of {shape_bad[0]} is {tuple(sd[shape_bad[0]].shape)}, "
                f"model has {tuple(own[shape_bad[0]].shape)}")
        raise FilterlensError(f"checkpoint '{path}' does not fit this architecture ({what}); it is for another "
                              "model or label count")
    model.load_state_dict(sd)
    return state
