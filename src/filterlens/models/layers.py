"""Layers: the analysable modules of a model with their output shapes, and selecting among them.

Layers are named by their ``named_modules()`` dotted path. :func:`list_layers` returns a model's
*blocks* (its default layers, :mod:`.families` says which modules those are for each family) or
its *stages*, and on request its *node layers* (the hidden FC layers of a classifier head, each transformer
MLP: :mod:`.nodes`); every layer's shape is read from one forward pass on zeros, with the unit axis first:
``(units, H, W)`` for a conv map (a channels-last output, N x H x W x C, is read as such, not
guessed), ``(nodes, 1, 1)`` or ``(nodes, tokens, 1)`` for a node layer, so capture, probes, single-unit
analysis and AFCC all see units the same way. :func:`resolve_layers` applies a selection (``all``, ``nodes``,
``stages``, indices, ``last:N``, or any module's dotted path) and refuses anything unknown or out of range in
one line.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn

from ..checks import is_int_text
from ..errors import FilterlensError, closest
from ..hooks import Tap, taps
from ..utils import eval_mode
from .families import Discovery, discover
from .units import NODE_LAYOUTS, output_layout, reader

UNIT_KINDS = ("filter", "head", "node")


@dataclass
class Layer:
    """One analysable layer: its module path, position, units and the shape the probes see (units first).

    ``layout``: how the units are read (:mod:`.units`): ``NCHW`` (a conv map), ``NHWC`` (channels-last,
    permuted to units first), ``heads:proj`` / ``heads:mha`` (attention heads, ``shape`` = heads x tokens x
    d_head), ``nodes`` / ``nodes:in`` (the nodes of a fully connected layer, ``shape`` = nodes x 1 x 1, or
    nodes x tokens x 1 token by token). ``unit_kind``: ``filter`` for conv channels, ``head`` for attention
    heads, ``node`` for nodes.
    """

    index: int
    name: str
    units: int
    shape: tuple[int, int, int]
    unit_kind: str = "filter"
    layout: str = "NCHW"
    hook: str | None = None  # the module whose output (or input) gives the units, when not ``name`` itself
    tokens: str = "all"  # heads and token-wise nodes: which tokens the probe reads (all, cls, mean)

    @property
    def hook_module(self) -> str:
        """The module path the hook goes on to read the layer's units (``hook``, else the layer itself)."""
        return self.hook or self.name

    @property
    def filters(self) -> int:  # the name before units beyond filters existed
        """The layer's number of units (its name from before units beyond filters existed)."""
        return self.units

    @property
    def features(self) -> int:
        """The probe's input size: units x H x W of ``shape``."""
        c, h, w = self.shape
        return c * h * w

    def as_dict(self) -> dict:
        """The layer as plain data (``shape`` a list), with ``features``."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["features"] = self.features
        return d


def candidate_layers(model: nn.Module) -> list[str]:
    """Module paths of a model's blocks (before shapes are known)."""
    return discover(model).blocks


def _run_shapes(model: nn.Module, specs: dict[str, tuple[str, str, int]], input_size,
                tokens: str = "all") -> tuple[dict[str, tuple | None], dict[str, int], list[str], set[str]]:
    """One forward pass on zeros (eval mode, the caller's mode restored, every hook removed). ``specs``: layer ->
    (module to hook, layout, units); layout ``auto`` (a module named by the user): ``NCHW`` for a 4-D output,
    ``nodes`` for (N, F) or (N, T, F), written back into ``specs``. Returns each layer's units-first shape (None:
    no map of its layout), how often its module ran, the order in which the layers first ran, and the node layers
    that are token-wise ((N, T, F): the ``tokens`` option applies)."""
    shapes: dict[str, tuple | None] = {}
    token_wise: set[str] = set()
    calls: dict[str, int] = {}
    order: list[str] = []

    def tap(name, layout, units, path):
        pre, read = reader(layout, units, tokens)

        def record(*args):
            calls[name] = calls.get(name, 0) + 1
            if name not in shapes:
                order.append(name)
            now = layout
            if layout == "auto":
                now = output_layout(args[2]) or "NCHW"
                specs[name] = (path, now, units)
            out = read(*args) if layout != "auto" else reader(now, units, tokens)[1](*args)
            raw = args[1][0] if pre and args[1] else args[-1]
            if now in NODE_LAYOUTS and torch.is_tensor(raw) and raw.ndim == 3:
                token_wise.add(name)
            shapes[name] = tuple(out.shape[1:]) if out is not None else None
        return Tap(path, record, pre)

    try:
        with taps(model, {name: tap(name, layout, units, path) for name, (path, layout, units) in specs.items()}):
            device = next(model.parameters()).device
            with eval_mode(model), torch.no_grad():
                model(torch.zeros(1, *input_size, device=device))
    except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
        if isinstance(exc, FilterlensError):
            raise
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise _too_small(model, input_size, first) from None
    return shapes, calls, order, token_wise


SIZES = (8, 16, 24, 32, 48, 64, 75, 96, 112, 128, 160, 192, 224, 256, 299, 320, 384, 448, 512)


def smallest_input(model: nn.Module, input_size) -> int | None:
    """The smallest square input, among :data:`SIZES` above the given one, on which ``model`` runs (None: none)."""
    c, h, _ = input_size
    device = next(model.parameters()).device
    with eval_mode(model), torch.no_grad():
        for s in (s for s in SIZES if s > h):
            try:
                model(torch.zeros(1, c, s, s, device=device))
                return s
            except (RuntimeError, ValueError, AssertionError, IndexError):
                continue
    return None


def _too_small(model, input_size, why: str) -> FilterlensError:
    size = tuple(input_size)
    smallest = smallest_input(model, input_size)
    hint = (f"the smallest size it runs on is {smallest}: add --image-size {smallest}" if smallest else
            "no input size up to 512 works")
    return FilterlensError(f"the model does not run on inputs of size {size} ({why}); {hint}")


def _layer_of(name: str, shape, spec: tuple[str, str, int], tokens: str, token_wise: bool) -> Layer | None:
    if shape is None or len(shape) != 3:
        return None
    path, layout, _ = spec
    u, a, b = (int(v) for v in shape)
    kind = "head" if layout.startswith("heads") else "node" if layout in NODE_LAYOUTS else "filter"
    return Layer(0, name, u, (u, a, b), kind, layout, path if path != name else None,
                 tokens if kind == "head" or (kind == "node" and token_wise) else "all")


def _stage_ends(layers: list[Layer]) -> list[str]:
    """Where a family has no stage containers: a stage ends where the spatial resolution next drops."""
    out = []
    for a, b in zip(layers, layers[1:]):
        if b.shape[1:] != a.shape[1:]:
            out.append(a.name)
    return out + ([layers[-1].name] if layers else [])


@torch.no_grad()
def list_layers(model: nn.Module, input_size: tuple[int, int, int], which: str = "blocks",
                extra: list[str] | None = None, tokens: str = "all", nodes: bool = False) -> list[Layer]:
    """The analysable layers with their shapes for one input of ``input_size`` (C, H, W), in forward order.

    ``which``: ``blocks`` (the default layers) or ``stages``. ``nodes``: add the node layers the family rule
    finds (:mod:`.nodes`). ``extra``: further module paths (a user's dotted names: a node layer, or any module
    whose output is a 4-D map, or (N, F) or (N, T, F) nodes), measured in the same pass and placed in forward
    order among the others (indices count over the list returned). A module that runs more than once per
    forward, or gives neither a 4-D map nor nodes, is not a layer: a block like that is left out, a named one
    refused. ``tokens``: which tokens of a transformer block (its heads, its MLP's nodes) the probe reads (all,
    cls, mean). The model's train/eval mode is restored.
    """
    found = discover(model)
    extra = [n for n in (extra or []) if n not in found.blocks or which == "stages"]
    modules = dict(model.named_modules())
    for n in extra:
        if n not in modules or n == "":
            known = list(found.blocks) + list(found.nodes)
            raise FilterlensError(f"unknown layer '{n}'{closest(n, known)}; valid layers: "
                                  f"{', '.join(known[:20])}{', ...' if len(known) > 20 else ''}")
    node_names = list(found.nodes) if nodes else []
    names = list(dict.fromkeys(list(found.blocks) + list(found.stages or []) + node_names + extra))
    specs = {n: found.heads.get(n) or found.nodes.get(n)
             or (n, "NHWC" if n in found.channels_last else "NCHW" if n not in extra else "auto", 0) for n in names}
    shapes, calls, order, token_wise = _run_shapes(model, specs, input_size, tokens)
    for n in extra:
        if calls.get(n, 0) == 0:
            raise FilterlensError(f"module '{n}' does not run in the model's forward pass; name a module that does")
        if calls[n] > 1:
            raise FilterlensError(f"module '{n}' runs {calls[n]} times in one forward pass (a shared module); name "
                                  "a module that runs once")
        if shapes.get(n) is None:
            raise FilterlensError(f"module '{n}' gives neither a 4-D map (N x C x H x W) nor nodes (N x F or N x T x "
                                  "F); name a module that does")
    layer = {n: _layer_of(n, shapes.get(n), specs[n], tokens, n in token_wise) for n in names}
    made = {n: l for n, l in layer.items() if l is not None}
    blocks = [made[n] for n in order if n in found.blocks and n in made and calls[n] == 1]
    if which == "stages":
        wanted = set(found.stages or _stage_ends(blocks))
    elif which == "blocks":
        wanted = {l.name for l in blocks}
    else:
        raise ValueError(f"which must be 'blocks' or 'stages', not {which!r}")
    wanted |= set(extra) | {n for n in node_names if calls.get(n) == 1}
    chosen = [made[n] for n in order if n in wanted and n in made]
    return [replace(l, index=i) for i, l in enumerate(chosen)]


def describe(model: nn.Module) -> Discovery:
    """The family rule :func:`list_layers` applies to ``model`` (``fallback`` when none matched)."""
    return discover(model)


def resolve_layers(model: nn.Module, input_size: tuple[int, int, int], spec, tokens: str = "all") -> list[Layer]:
    """The layers a selection names, comma-separated: ``all`` (every block), ``stages`` (every stage), ``nodes``
    (every node layer: the hidden FC layers of a classifier head, each transformer MLP), indices and ``last:N``
    over the blocks, or dotted module paths (a block, a node layer, or any module that gives a 4-D map or nodes,
    measured in the same pass)."""
    text = ",".join(map(str, spec)) if isinstance(spec, (list, tuple)) else str(spec if spec is not None else "all")
    items = [t.strip() for t in text.split(",") if t.strip()]
    modules = dict(model.named_modules())
    found = discover(model)
    for t in items:  # a name that is no module: suggested among the layers and every module
        if t not in modules and t not in ("all", "stages", "nodes") and not t.startswith("last:") \
                and not t.lstrip("-").isdigit():
            known = list(found.blocks) + list(found.nodes)
            raise FilterlensError(f"unknown layer '{t}'{closest(t, known + list(modules))}; valid layers: "
                                  f"{', '.join(known[:20])}{', ...' if len(known) > 20 else ''}, nodes, or any "
                                  "module by its dotted path (filterlens layers --model M lists the layers)")
    blocks = set(found.blocks)
    extra = [t for t in items if t in modules and t not in blocks and t != ""]
    which = "stages" if "stages" in items else "blocks"
    return select_layers(list_layers(model, input_size, which, extra, tokens, nodes="nodes" in items), spec)


def select_layers(layers: list[Layer], spec) -> list[Layer]:
    """Choose layers by ``"all"`` (``"stages"``: the same, of a list of stages), ``"nodes"``, indices (negative
    allowed), ``"last:N"``, or dotted names, comma-separated. ``all``, indices and ``last:N`` count over the
    layers whose units are filters or heads (the blocks); ``nodes`` takes every node layer of ``layers``.

    Anything unknown or out of range is an error that lists the valid layers.
    """
    units = [l for l in layers if l.unit_kind != "node"]
    nodes = [l for l in layers if l.unit_kind == "node"]
    valid = ", ".join([f"{i}:{l.name}" for i, l in enumerate(units)] + (["nodes"] if nodes else [])
                      + [l.name for l in nodes])
    if len(valid) > 300:
        valid = valid[:300] + ", ... (filterlens layers --model M lists them)"
    if spec is None or spec in ("all", "stages"):
        return list(units)
    items = spec if isinstance(spec, (list, tuple)) else [t.strip() for t in str(spec).split(",") if t.strip()]
    if not items:
        raise FilterlensError(f"the layer list '{spec}' is empty; valid layers: {valid}")
    chosen: list[Layer] = []
    by_name = {l.name: l for l in layers}
    for item in items:
        text = str(item)
        if text in ("all", "stages"):
            picks = units
        elif text == "nodes":
            if not nodes:
                raise FilterlensError("the model has no node layer (no hidden FC layer in its classifier head, no "
                                      "transformer MLP); name a Linear module by its dotted path, or choose among: "
                                      f"{valid}")
            picks = nodes
        elif text.startswith("last:"):
            k = int(text[5:]) if is_int_text(text[5:]) else 0  # ASCII digits only (checks.parse_int's rule)
            if not 1 <= k <= len(units):
                raise FilterlensError(f"layer selection '{text}' is out of range; valid: last:1..last:{len(units)}")
            picks = units[-k:]
        elif is_int_text(text) and text not in by_name:
            i = int(text)
            if not -len(units) <= i < len(units):
                raise FilterlensError(f"layer index {i} is out of range; valid: {-len(units)}..{len(units) - 1} "
                                      f"({valid})")
            picks = [units[i]]
        elif text in by_name:
            picks = [by_name[text]]
        else:
            raise FilterlensError(f"unknown layer '{text}'{closest(text, by_name)}; valid layers: {valid}")
        for p in picks:
            if p not in chosen:
                chosen.append(p)
    return sorted(chosen, key=lambda l: l.index)
