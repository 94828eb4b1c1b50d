"""Fingerprints: what a model's weights are, and whether a file filterlens saved still holds what it saved.

* :func:`weights_fingerprint`: the sha256 of a model's ``state_dict`` (every entry's name, dtype, shape and
  bytes, in name order; wherever the tensors live and however they are laid out). An analysis records the
  fingerprint of the model it analysed, and every call that pairs a model with an analysis compares it.
* :func:`state_digest`: the sha256 of a whole saved object (nested dicts, lists, tensors, numbers, strings).
  filterlens writes it into the checkpoints and AFCC files it saves (``"sha256"``) and checks it when it reads
  them back: a flipped byte is refused, never loaded.
"""
from __future__ import annotations

import hashlib

import torch

DIGEST_KEY = "sha256"  # the key of a saved object's own digest (state_digest of the rest)


def _tensor_bytes(h, t: torch.Tensor) -> None:
    t = t.detach()
    if t.is_sparse or t.is_quantized:
        t = t.to_dense() if t.is_sparse else t.dequantize()
    t = t.cpu().contiguous().reshape(-1)
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.view(torch.uint8).numpy())


def weights_fingerprint(model_or_state) -> str:
    """The sha256 (hex) of a model's weights and buffers: ``model.state_dict()`` (or a state dict given), each
    entry's name, dtype, shape and bytes in name order."""
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    h = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        if not torch.is_tensor(value):
            continue
        h.update(name.encode("utf-8") + b"\0")
        _tensor_bytes(h, value)
    return h.hexdigest()


def state_digest(obj) -> str:
    """The sha256 (hex) of a saved object: nested dicts (keys in order), lists and tuples, tensors (dtype, shape,
    bytes) and plain values (their repr). A dict's own ``"sha256"`` entry is left out."""
    h = hashlib.sha256()

    def walk(o):
        if torch.is_tensor(o):
            h.update(b"T")
            _tensor_bytes(h, o)
        elif isinstance(o, dict):
            h.update(b"{")
            for k in sorted(o, key=repr):
                if k == DIGEST_KEY and o is obj:
                    continue
                h.update(repr(k).encode("utf-8") + b":")
                walk(o[k])
            h.update(b"}")
        elif isinstance(o, (list, tuple)):
            h.update(b"[")
            for v in o:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(o).encode("utf-8") + b";")

    walk(obj)
    return h.hexdigest()


def with_digest(state: dict) -> dict:
    """``state`` with its digest (:func:`state_digest`) under ``"sha256"``."""
    return {**state, DIGEST_KEY: state_digest(state)}


def digest_matches(state: dict) -> bool | None:
    """Whether a loaded object still holds what was saved: True or False where it carries its digest, None where
    it carries none (written before filterlens saved one, or by another program)."""
    if not isinstance(state, dict) or not isinstance(state.get(DIGEST_KEY), str):
        return None
    return state_digest(state) == state[DIGEST_KEY]
