"""Reading a layer's output as the forward pass goes by, and stopping the pass there: the one place filterlens
puts hooks on a model.

``with taps(model, {name: Tap(module_path, read, pre)}, stop=deepest): run(model, x)`` calls ``read`` with the
hooked module's inputs (``pre``: a forward pre-hook, ``read(module, args)``) or its inputs and output (a forward
hook, ``read(module, args, output)``) every time that module runs, and, after the ``stop`` tap has read, ends
the forward pass (:func:`run` swallows that), so nothing after the deepest layer needed is computed. The hooks
it added, and only those, are removed on leaving the block, also when something raised. Used by the capture
engine (:mod:`filterlens.capture`), layer listing (:mod:`filterlens.models.layers`) and AFCC's hooked trunk
(:mod:`filterlens.afcc.diluted`).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Mapping

import torch.nn as nn


class StopForward(Exception):
    """Raised after the last tap a pass needs: nothing after it is computed."""


@dataclass(frozen=True)
class Tap:
    """Where to read (a module's dotted path), what to call with what it sees, and whether before it runs."""

    module: str
    read: Callable
    pre: bool = False


@contextmanager
def taps(model: nn.Module, wanted: Mapping[str, Tap], stop: str | None = None):
    """Hooks for every tap of ``wanted`` inside the block (see the module docstring); removed on leaving it."""
    handles = []
    try:
        for name, tap in wanted.items():
            module = model.get_submodule(tap.module)

            def hook(*args, _name=name, _tap=tap):
                _tap.read(*args)
                if _name == stop:
                    raise StopForward

            handles.append(module.register_forward_pre_hook(hook) if tap.pre else module.register_forward_hook(hook))
        yield handles
    finally:
        for h in handles:
            h.remove()


def run(model: nn.Module, *inputs):
    """``model(*inputs)``, ended early by a tap's :class:`StopForward` (then None is returned)."""
    try:
        return model(*inputs)
    except StopForward:
        return None
