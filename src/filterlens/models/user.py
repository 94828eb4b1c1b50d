"""A user's own architecture by reference: ``path/to/file.py:factory`` or ``package.module:callable``.

The callable builds the ``nn.Module`` (``--checkpoint`` then loads its weights). It is given, by name,
whichever of these keyword arguments its signature has: ``num_labels`` / ``num_classes``,
``in_channels`` / ``in_chans``, ``image_size`` / ``img_size``; the rest is up to it. The reference is
recorded in config.json (a file path as given: run later commands from the same folder, or give an
absolute path). Every failure is one line: a missing file or module, a missing attribute, something
that is not callable, a call that raises, a result that is not an ``nn.Module``.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Mapping

import torch.nn as nn

from ..errors import FilterlensError, closest

ARGUMENTS = {"num_labels": "num_labels", "num_classes": "num_labels", "in_channels": "in_channels",
             "in_chans": "in_channels", "image_size": "image_size", "img_size": "image_size"}


def is_reference(name: str) -> bool:
    """``name`` points at a user's callable (``file.py:f`` or ``module:f``), not at a model of ours."""
    return isinstance(name, str) and ":" in name and not name.startswith("timm:")


def load_callable(reference: str):
    """The callable ``reference`` names (one line when it cannot be found)."""
    target, _, attr = reference.rpartition(":")
    if not target or not attr:
        raise FilterlensError(f"model '{reference}' is not FILE.py:CALLABLE nor package.module:CALLABLE")
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _load_file(Path(target), reference)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise FilterlensError(f"model '{reference}': module '{target}' cannot be imported ({exc}); give "
                                  "path/to/file.py:CALLABLE or an importable package.module:CALLABLE") from None
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - the user's module raised (or exited) while importing
            raise FilterlensError(f"model '{reference}': importing '{target}' raised {type(exc).__name__}: "
                                  f"{str(exc)[:120]}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n, None))]
            raise FilterlensError(f"model '{reference}': '{target}' has no attribute '{attr}'{closest(attr, names)}; "
                                  f"its callables: {', '.join(names[:12]) or 'none'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise FilterlensError(f"model '{reference}': '{attr}' is a {type(obj).__name__}, not a callable that builds "
                              "the model")
    return obj


def _load_file(path: Path, reference: str):
    if path.is_dir():
        raise FilterlensError(f"model '{reference}': '{path}' is a directory, not a Python file; give "
                              "path/to/file.py:CALLABLE")
    if not path.is_file():
        raise FilterlensError(f"model '{reference}': file '{path}' does not exist")
    if path.suffix != ".py":
        raise FilterlensError(f"model '{reference}': '{path}' is not a Python file (.py)")
    name = "filterlens_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # never for a .py file (its suffix has a loader)
        raise FilterlensError(f"model '{reference}': '{path}' cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - the user's file raised or exited (a syntax error included)
        del sys.modules[name]
        raise FilterlensError(f"model '{reference}': running '{path}' raised {type(exc).__name__}: "
                              f"{str(exc)[:120]}") from None
    return module


def build_user_model(spec) -> nn.Module:
    """Call the user's factory with the arguments its signature takes (see the module docstring)."""
    factory = load_callable(spec.model)
    values = {"num_labels": spec.num_labels, "in_channels": spec.in_channels, "image_size": spec.image_size}
    params: Mapping[str, inspect.Parameter]
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = {p: values[ARGUMENTS[p]] for p in params if p in ARGUMENTS}
    try:
        model = factory(**kwargs)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - the user's code raised or exited: one line naming what
        given = ", ".join(f"{k}={v}" for k, v in kwargs.items()) or "no arguments"
        raise FilterlensError(f"model '{spec.model}': calling it with {given} raised {type(exc).__name__}: "
                              f"{str(exc)[:120]}") from None
    if not isinstance(model, nn.Module):
        raise FilterlensError(f"model '{spec.model}' returned a {type(model).__name__}, not a torch.nn.Module")
    return model
