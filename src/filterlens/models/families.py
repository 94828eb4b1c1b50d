"""Which modules are a model's layers, family by family (../shared/METHOD.md, "Units and layers beyond VGG").

:func:`discover` names, before any shape is known, the modules whose outputs are the model's
*blocks* (the default layers) and its coarser *stages* (``--layers stages``):

=================  ===========================================================================
family             blocks (in forward order)
=================  ===========================================================================
VGG (ours, tv)     one Conv-BN-ReLU with the max-pool right after it; AlexNet likewise
ResNet (tv, ours)  the stem (after its max-pool), then every residual block after its addition
                   and ReLU (Wide ResNet, ResNeXt, the CIFAR ResNets alike)
DenseNet           every dense block and every transition (after the stem's pool)
MobileNetV2/V3     the stem, every inverted-residual block, the last 1x1 conv
EfficientNet B/V2  the stem, every (fused) MBConv block, the head conv; stages: its nine ``features``
RegNet             the stem and every residual block; ShuffleNetV2: the stem, every block, conv5
SqueezeNet         the stem's pool and every Fire module
ConvNeXt, Swin     the stem and every block (Swin's outputs are channels-last: N x H x W x C)
GoogLeNet, Incep.  the stem's pool and every Inception module
ViT, DeiT          every encoder block; its units are its attention heads (timm, torchvision, ours)
timm models        ``feature_info`` names the stages; a stage's blocks are its ``blocks`` (or its
                   children when it is a Sequential), found the same way for every timm family
anything else      its top-level children whose output is a 4-D map (said so by ``filterlens layers``)
=================  ===========================================================================

Node layers (``--layers nodes``, :mod:`.nodes`), beside the blocks: the hidden FC layers of a CNN's classifier
head (torchvision's VGG and AlexNet: ``classifier.1``, ``classifier.4``) and each transformer block's MLP
(``blocks.i.mlp``; torchvision's ``encoder.layers.encoder_layer_i.mlp``), its hidden nodes as units.

Stages are the families' own stage containers (ResNet's ``layer1``..``layer4`` with the stem,
EfficientNet's nine ``features``, timm's ``feature_info``); where a family has none (VGG,
MobileNet, SqueezeNet, GoogLeNet) a stage ends where the spatial resolution next drops.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from ..errors import FilterlensError, closest
from .nodes import head_nodes, mlp_nodes


@dataclass
class Discovery:
    """The layer candidates of one model (module paths), before their shapes are known."""

    family: str
    blocks: list[str]
    stages: list[str] | None = None  # None: a stage ends where the resolution drops (see layers.py)
    channels_last: set[str] = field(default_factory=set)  # modules whose output is N x H x W x C
    fallback: bool = False  # no family rule matched: top-level children with 4-D outputs
    # transformer blocks: layer -> (the attention module path to hook, layout (units.py), number of heads)
    heads: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    # node layers (not blocks: chosen with --layers nodes or by name): layer -> (module to hook, layout, 0)
    nodes: dict[str, tuple[str, str, int]] = field(default_factory=dict)


def _kids(module: nn.Module, prefix: str) -> list[str]:
    return [f"{prefix}.{n}" if prefix else n for n, _ in module.named_children()]


def _is_container(m: nn.Module) -> bool:
    """A stage container: every child is itself a composite module (a block), as in ``Sequential(block, block)``;
    ``Sequential(conv, bn, act)`` is a block, not a container."""
    kids = list(m.children())
    return bool(kids) and all(any(True for _ in k.children()) for k in kids)


def _blocks_of(model: nn.Module, stage: str) -> list[str]:
    """A stage's blocks: its ``blocks`` container's children, its own children when it is a container,
    else the stage itself."""
    m = model.get_submodule(stage)
    inner = getattr(m, "blocks", None)
    if isinstance(inner, (nn.Sequential, nn.ModuleList)) and len(inner) > 0:
        return _kids(inner, f"{stage}.blocks")
    if _is_container(m):
        return _kids(m, stage)
    return [stage]


def _flat_chain(model: nn.Module, path: str) -> list[str]:
    """A flat ``features`` Sequential of conv, batch norm, activations and pools (VGG, AlexNet): each conv with
    what follows it up to the next conv, the pool included."""
    kids = list(model.get_submodule(path).named_children())
    names, i = [], 0
    while i < len(kids):
        if isinstance(kids[i][1], nn.Conv2d):
            j = i + 1
            while j < len(kids) and isinstance(kids[j][1], (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU)):
                j += 1
            if j < len(kids) and isinstance(kids[j][1], (nn.MaxPool2d, nn.AvgPool2d)):
                j += 1
            names.append(f"{path}.{kids[j - 1][0]}")
            i = j
        else:
            i += 1
    return names


def _has(model: nn.Module, *names: str) -> bool:
    kids = dict(model.named_children())
    return all(n in kids for n in names)


def _resnet(model):
    stem = "maxpool" if not isinstance(getattr(model, "maxpool", nn.Identity()), nn.Identity) else "relu"
    stages = [n for n in ("layer1", "layer2", "layer3", "layer4") if hasattr(model, n)]
    blocks = [stem] + [b for s in stages for b in _blocks_of(model, s)]
    return Discovery("resnet", blocks, [stem] + stages)


def _densenet(model):
    feats = model.features
    stem = next((f"features.{n}" for n in ("pool0", "norm0") if hasattr(feats, n)), None)
    parts = [f"features.{n}" for n, _ in feats.named_children() if n.startswith(("denseblock", "transition"))]
    blocks = ([stem] if stem else []) + parts
    stages = ([stem] if stem else []) + [p for p in parts if "denseblock" in p]
    return Discovery("densenet", blocks, stages)


def _features_family(family: str, stage_kids: bool):
    """MobileNet, EfficientNet, ConvNeXt, Swin: ``features`` holds the stem, stage containers (or blocks), the
    head. ``stage_kids``: the containers' children are the blocks (EfficientNet, ConvNeXt, Swin); ConvNeXt's and
    Swin's downsampling modules between two stages are neither blocks nor stages."""
    def rule(model):
        names = _kids(model.features, "features")
        if not stage_kids:
            return Discovery(family, names, None)
        blocks, stages = [], []
        for i, n in enumerate(names):
            container = _is_container(model.get_submodule(n))
            if family in ("convnext", "swin") and not container and 0 < i < len(names) - 1:
                continue
            blocks += _blocks_of(model, n) if container else [n]
            stages.append(n)
        return Discovery(family, blocks, stages)
    return rule


def _regnet(model):
    stages = _kids(model.trunk_output, "trunk_output")
    return Discovery("regnet", ["stem"] + [b for s in stages for b in _blocks_of(model, s)], ["stem"] + stages)


def _shufflenet(model):
    stages = [n for n in ("stage2", "stage3", "stage4") if hasattr(model, n)]
    blocks = ["maxpool"] + [b for s in stages for b in _blocks_of(model, s)] + (["conv5"] if hasattr(model, "conv5")
                                                                                 else [])
    return Discovery("shufflenet", blocks, ["maxpool"] + stages + (["conv5"] if hasattr(model, "conv5") else []))


def _squeezenet(model):
    kids = list(model.features.named_children())
    first_pool = next(n for n, m in kids if isinstance(m, nn.MaxPool2d))
    fires = [n for n, m in kids if type(m).__name__ == "Fire"]
    return Discovery("squeezenet", [f"features.{first_pool}"] + [f"features.{n}" for n in fires])


def _inception(model):
    kids = [n for n, m in model.named_children()]
    stem = "maxpool2" if "maxpool2" in kids else kids[0]
    mods = [n for n, m in model.named_children() if type(m).__name__.startswith(("Inception", "Inception3"))
            and not type(m).__name__.startswith("InceptionAux")]
    return Discovery("inception", [stem] + mods)


def _vgg_like(family: str):
    def rule(model):
        return Discovery(family, _flat_chain(model, "features"))
    return rule


def _swin_channels_last(model, found: Discovery) -> Discovery:
    found.channels_last = set(found.blocks) | set(found.stages or [])
    return found


# torchvision class name -> rule (timm classes of the same name are handled by the timm rule first)
_TORCHVISION = {
    "VGG": _vgg_like("vgg"), "AlexNet": _vgg_like("alexnet"), "ResNet": _resnet, "DenseNet": _densenet,
    "MobileNetV2": _features_family("mobilenet", False), "MobileNetV3": _features_family("mobilenet", False),
    "EfficientNet": _features_family("efficientnet", True), "RegNet": _regnet, "ShuffleNetV2": _shufflenet,
    "SqueezeNet": _squeezenet, "ConvNeXt": _features_family("convnext", True),
    "SwinTransformer": lambda m: _swin_channels_last(m, _features_family("swin", True)(m)),
    "GoogLeNet": _inception, "Inception3": _inception,
}


def _timm(model) -> Discovery | None:
    """timm: ``feature_info`` names the stages; a stage's siblings in the same container are stages too
    (EfficientNet's feature_info skips some), and each stage's blocks are found as for every family."""
    info = getattr(model, "feature_info", None)
    if not info or type(model).__module__.split(".")[0] != "timm":
        return None
    modules = [f["module"] for f in info]
    if type(model).__name__ == "DenseNet":
        return _densenet(model)
    stages: list[str] = []
    for m in modules:
        parent, _, _ = m.rpartition(".")
        container = model.get_submodule(parent) if parent else None
        group = _kids(container, parent) if isinstance(container, (nn.Sequential, nn.ModuleList)) else [m]
        for g in group:
            if g not in stages:
                stages.append(g)
    blocks = [b for s in stages for b in _blocks_of(model, s)]
    found = Discovery(f"timm:{type(model).__name__.lower()}", blocks, modules)
    if getattr(model, "output_fmt", "NCHW") == "NHWC":  # timm says so itself (Swin, ...)
        found.channels_last = set(blocks) | set(modules)
    return found


def _vit(model) -> Discovery | None:
    """Vision transformers: every encoder block is a layer, its attention heads are its units. timm's layout
    (and filterlens' vit_tiny_cifar): ``blocks.i.attn`` with ``num_heads`` and an output projection ``proj``;
    torchvision's: ``encoder.layers.encoder_layer_i.self_attention``, an ``nn.MultiheadAttention``."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) and all(
            isinstance(getattr(getattr(b, "attn", None), "proj", None), nn.Linear)
            and isinstance(getattr(b.attn, "num_heads", None), int) for b in blocks):
        names = _kids(blocks, "blocks")
        heads = {n: (f"{n}.attn.proj", "heads:proj", int(model.get_submodule(n).attn.num_heads)) for n in names}
        return Discovery("vit", names, names, heads=heads)
    encoder = getattr(getattr(model, "encoder", None), "layers", None)
    if type(model).__name__ == "VisionTransformer" and isinstance(encoder, nn.Sequential):
        names = _kids(encoder, "encoder.layers")
        heads = {n: (f"{n}.self_attention", "heads:mha", int(model.get_submodule(n).self_attention.num_heads))
                 for n in names}
        return Discovery("vit", names, names, heads=heads)
    return None


def discover(model: nn.Module) -> Discovery:
    """The blocks, stages and node layers of ``model`` by its family (see the module docstring)."""
    found = _blocks(model)
    found.nodes = {**(mlp_nodes(model, found.blocks) if found.heads else {}), **head_nodes(model)}
    return found


def _own_layers(model: nn.Module) -> Discovery:
    """The layers a model names with its own ``filterlens_layers()``: module paths as ``named_modules()`` names
    them, each checked (one line naming a path that is no module, and the model's top-level modules)."""
    names = [str(n) for n in getattr(model, "filterlens_layers")()]  # the model's own method (not typed on Module)
    modules = dict(model.named_modules())
    for name in names:
        if not name or name not in modules:
            top = ", ".join(n for n, _ in model.named_children())
            raise FilterlensError(f"{type(model).__name__}.filterlens_layers() names {name!r}, which is no module of "
                                  f"the model{closest(name, [n for n in modules if n])}; give module paths as "
                                  f"named_modules() names them (its top-level modules: {top})")
    return Discovery(getattr(model, "filterlens_family", "vgg"), names)


def _blocks(model: nn.Module) -> Discovery:
    if hasattr(model, "filterlens_layers"):  # the model's own word comes first
        return _own_layers(model)
    found = _vit(model) or _timm(model)
    if found is not None:
        return found
    rule = _TORCHVISION.get(type(model).__name__)
    if rule is None and _has(model, "conv1", "layer1"):
        rule = _resnet  # any ResNet-shaped model (filterlens' CIFAR ResNets, a user's own)
    if rule is not None:
        try:
            return rule(model)
        except (AttributeError, StopIteration):
            pass  # not the layout the rule knows: fall back
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential) and any(isinstance(m, nn.Conv2d) for m in features.children()):
        return Discovery("vgg-like", _flat_chain(model, "features"))  # a flat conv chain, as VGG's
    if isinstance(features, nn.Sequential):  # a user's features-style model: its children
        return Discovery("unknown", _kids(features, "features"), fallback=True)
    skip = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Dropout, nn.Identity, nn.GroupNorm,
            nn.LayerNorm, nn.Flatten, nn.Linear, nn.AdaptiveAvgPool2d)
    return Discovery("unknown", [n for n, m in model.named_children() if not isinstance(m, skip)], fallback=True)
