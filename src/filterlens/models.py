"""Architectures, layer discovery and checkpoints.

Layers are named by their ``named_modules()`` dotted path. :func:`list_layers`
returns the analysable layers of a model: for our VGGs each layer is one
Conv-BN-ReLU block together with the max-pool that follows it (``features.0`` ...),
for torchvision's VGG-BN the module whose output ends the block (the ReLU, or the
pool right after it), for EfficientNet-B0 and other ``features``-style models
the children of ``features`` (its stages), otherwise the top-level children whose
output is a 4-D map.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .errors import FilterlensError, closest

CHECKPOINT_FORMAT = "filterlens-checkpoint"
CHECKPOINT_VERSION = 1

# VGG configurations: numbers are conv widths, "M" a 2x2 max-pool after the previous conv.
VGG_CONFIGS = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    # VGG-16 shape (13 convs, same pools) at 1/8 width: the CPU stand-in for VGG-16.
    "vgg16_slim": [8, 8, "M", 16, 16, "M", 32, 32, 32, "M", 64, 64, 64, "M", 64, 64, 64, "M"],
    "vgg_small": [16, 16, "M", 32, 32, "M", 64, 64, "M"],
    "vgg_tiny": [8, "M", 16, "M"],
}


class VGGBlock(nn.Module):
    """One analysable VGG layer: Conv3x3-BN-ReLU, plus the max-pool that follows it (if any)."""

    def __init__(self, cin: int, cout: int, pool: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        # ceil_mode keeps 1x1 maps at 1x1, so VGG-16 also runs on 8x8 and 28x28 inputs
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True) if pool else nn.Identity()

    def forward(self, x):
        return self.pool(self.relu(self.bn(self.conv(x))))


class VGG(nn.Module):
    """VGG in its CIFAR form: ``features`` (one :class:`VGGBlock` per conv) and a linear head."""

    def __init__(self, cfg: list, num_labels: int = 10, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        blocks, cin = [], in_channels
        for i, v in enumerate(cfg):
            if v == "M":
                continue
            pool = i + 1 < len(cfg) and cfg[i + 1] == "M"
            blocks.append(VGGBlock(cin, int(v), pool))
            cin = int(v)
        self.features = nn.Sequential(*blocks)
        size = image_size
        for v in cfg:
            if v == "M":
                size = -(-size // 2)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(cin * size * size, num_labels)
        self.cfg = list(cfg)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))

    def filterlens_layers(self) -> list[str]:
        return [f"features.{i}" for i in range(len(self.features))]


@dataclass
class ModelSpec:
    """Everything needed to rebuild an architecture (saved in checkpoints)."""

    model: str
    num_labels: int
    in_channels: int = 3
    image_size: int = 32
    width_mult: float = 1.0
    vgg_cfg: str | None = None  # explicit VGG widths, e.g. "16,16,M,32,M"


def _scaled(cfg, mult):
    return [v if v == "M" else max(1, int(round(v * mult))) for v in cfg]


def _parse_vgg_cfg(text: str) -> list:
    out = []
    for tok in text.split(","):
        tok = tok.strip()
        if tok.upper() == "M":
            out.append("M")
        elif tok.isdigit() and int(tok) > 0:
            out.append(int(tok))
        else:
            raise FilterlensError(f"VGG config token '{tok}' in '{text}' is invalid; use positive widths and M, e.g. 16,16,M,32,M")
    if not any(v != "M" for v in out):
        raise FilterlensError(f"VGG config '{text}' has no conv layer")
    return out


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_models() -> list[str]:
    return sorted(VGG_CONFIGS) + ["vgg", "vgg16_imagenet", "efficientnet_b0", "<any torchvision classification model>",
                                  "timm:<name>"]


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Make a torchvision/timm model accept ``in_channels`` (pretrained RGB kernels are averaged)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return
            new = nn.Conv2d(in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                            module.dilation, module.groups if module.groups == 1 else in_channels,
                            module.bias is not None)
            with torch.no_grad():
                w = module.weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
                new.weight.copy_(w * module.in_channels / in_channels)
                if module.bias is not None:
                    new.bias.copy_(module.bias)
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], new)
            return


def _replace_head(model: nn.Module, num_labels: int) -> None:
    """Replace the last Linear layer when the label count differs (pretrained weights)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None or last[1].out_features == num_labels:
        return
    name, lin = last
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], nn.Linear(lin.in_features, num_labels, lin.bias is not None))


def build_model(spec: ModelSpec, weights: str | None = None) -> nn.Module:
    """Build an architecture. ``weights``: a torchvision weights name (e.g. ``DEFAULT``,
    ``IMAGENET1K_V1``) for torchvision models; checkpoints are loaded by :func:`load_checkpoint`."""
    name = spec.model
    if name in VGG_CONFIGS or name == "vgg":
        if weights:
            raise FilterlensError(f"--weights '{weights}' is for torchvision/timm models; model '{name}' has no "
                                  "pretrained weights (use --checkpoint for your own)")
        if name == "vgg":
            if not spec.vgg_cfg:
                raise FilterlensError("model 'vgg' needs --vgg-cfg, e.g. 16,16,M,32,M")
            cfg = _parse_vgg_cfg(spec.vgg_cfg)
        else:
            cfg = VGG_CONFIGS[name]
        return VGG(_scaled(cfg, spec.width_mult), spec.num_labels, spec.in_channels, spec.image_size)

    if name.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise FilterlensError(f"model '{name}' needs timm: pip install 'filterlens[timm]'") from None
        tname = name[5:]
        if tname not in timm.list_models():
            raise FilterlensError(f"unknown timm model '{tname}'{closest(tname, timm.list_models())}")
        return timm.create_model(tname, pretrained=bool(weights), num_classes=spec.num_labels,
                                 in_chans=spec.in_channels)

    import torchvision

    tv_name = {"vgg16_imagenet": "vgg16_bn"}.get(name, name)
    valid = _torchvision_names()
    if tv_name not in valid:
        raise FilterlensError(f"unknown model '{name}'{closest(name, list(VGG_CONFIGS) + valid)}; valid: "
                              f"{', '.join(sorted(VGG_CONFIGS))}, vgg, vgg16_imagenet, efficientnet_b0, any "
                              "torchvision classification model (filterlens layers --list-models), timm:<name>")
    if weights:
        enum = torchvision.models.get_model_weights(tv_name)
        try:
            w = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
        except KeyError:
            options = [m.name for m in enum]
            raise FilterlensError(f"unknown weights '{weights}' for {tv_name}; valid: DEFAULT, {', '.join(options)}") from None
        model = torchvision.models.get_model(tv_name, weights=w)
        _replace_head(model, spec.num_labels)
    else:
        model = torchvision.models.get_model(tv_name, weights=None, num_classes=spec.num_labels)
    if spec.in_channels != 3:
        _replace_first_conv(model, spec.in_channels)
    return model


# ----------------------------------------------------------------------------- layers

@dataclass
class Layer:
    """One analysable layer: its module path, position, filters and output shape (C, H, W)."""

    index: int
    name: str
    filters: int
    shape: tuple[int, int, int]

    @property
    def features(self) -> int:
        c, h, w = self.shape
        return c * h * w

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["features"] = self.features
        return d


def candidate_layers(model: nn.Module) -> list[str]:
    """Module paths whose outputs are the model's layers (before shapes are known)."""
    if hasattr(model, "filterlens_layers"):
        return list(model.filterlens_layers())
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        kids = list(features.named_children())
        if any(isinstance(m, nn.Conv2d) for _, m in kids):  # flat VGG-style: conv, bn, relu, [pool]
            names, i = [], 0
            while i < len(kids):
                if isinstance(kids[i][1], nn.Conv2d):
                    j = i + 1
                    while j < len(kids) and isinstance(kids[j][1], (nn.BatchNorm2d, nn.ReLU)):
                        j += 1
                    if j < len(kids) and isinstance(kids[j][1], nn.MaxPool2d):
                        j += 1
                    names.append(f"features.{kids[j - 1][0]}")
                    i = j
                else:
                    i += 1
            return names
        return [f"features.{n}" for n, _ in kids]  # EfficientNet, MobileNet, ...: its stages
    skip = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Dropout, nn.Identity, nn.GroupNorm,
            nn.LayerNorm)
    return [n for n, m in model.named_children() if not isinstance(m, skip)]


@torch.no_grad()
def list_layers(model: nn.Module, input_size: tuple[int, int, int]) -> list[Layer]:
    """The analysable layers with their output shapes for one input of ``input_size`` (C, H, W).

    Runs one forward pass on zeros in eval mode (the caller's mode is restored).
    """
    names = candidate_layers(model)
    shapes: dict[str, tuple] = {}
    handles = []
    try:
        for n in names:
            handles.append(model.get_submodule(n).register_forward_hook(
                lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:]) if torch.is_tensor(o) else None)))
        was_training = {m: m.training for m in model.modules()}
        model.eval()
        try:
            device = next(model.parameters()).device
            model(torch.zeros(1, *input_size, device=device))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FilterlensError(f"the model does not run on inputs of size {tuple(input_size)} ({first}); "
                                  "choose a larger --image-size or a model for small images") from None
        finally:
            for m, flag in was_training.items():
                m.training = flag
    finally:
        for h in handles:
            h.remove()
    layers = []
    for n in names:
        s = shapes.get(n)
        if s is not None and len(s) == 3:
            layers.append(Layer(len(layers), n, int(s[0]), (int(s[0]), int(s[1]), int(s[2]))))
    return layers


def select_layers(layers: list[Layer], spec) -> list[Layer]:
    """Choose layers by ``"all"``, indices (negative allowed), ``"last:N"``, or dotted names.

    Anything unknown or out of range is an error that lists the valid layers.
    """
    valid = ", ".join(f"{l.index}:{l.name}" for l in layers)
    if spec is None or spec == "all":
        return list(layers)
    items = spec if isinstance(spec, (list, tuple)) else [t.strip() for t in str(spec).split(",") if t.strip()]
    if not items:
        raise FilterlensError(f"the layer list '{spec}' is empty; valid layers: {valid}")
    chosen: list[Layer] = []
    by_name = {l.name: l for l in layers}
    for item in items:
        text = str(item)
        if text.startswith("last:"):
            try:
                k = int(text[5:])
            except ValueError:
                k = 0
            if not 1 <= k <= len(layers):
                raise FilterlensError(f"layer selection '{text}' is out of range; valid: last:1..last:{len(layers)}")
            picks = layers[-k:]
        elif text.lstrip("-").isdigit():
            i = int(text)
            if not -len(layers) <= i < len(layers):
                raise FilterlensError(f"layer index {i} is out of range; valid: {-len(layers)}..{len(layers) - 1} "
                                      f"({valid})")
            picks = [layers[i]]
        elif text in by_name:
            picks = [by_name[text]]
        else:
            raise FilterlensError(f"unknown layer '{text}'{closest(text, by_name)}; valid layers: {valid}")
        for p in picks:
            if p not in chosen:
                chosen.append(p)
    return sorted(chosen, key=lambda l: l.index)


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path, model: nn.Module, spec: ModelSpec, label_names: list[str], extra: dict | None = None):
    from .files import torch_save

    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "spec": asdict(spec),
             "label_names": list(label_names), "model": model.state_dict()}
    state.update(extra or {})
    return torch_save(path, state)


def read_checkpoint(path) -> dict:
    """Load a filterlens checkpoint (or a plain state_dict) and check it is one."""
    path = Path(path)
    if not path.is_file():
        raise FilterlensError(f"checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FilterlensError(f"'{path}' is not a PyTorch checkpoint ({type(exc).__name__}); expected a file "
                              "written by filterlens train or torch.save(model.state_dict())") from None
    if not isinstance(state, dict):
        raise FilterlensError(f"'{path}' holds a {type(state).__name__}, not a checkpoint dict or state_dict")
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
                f"shape of {shape_bad[0]} is {tuple(sd[shape_bad[0]].shape)}, model has {tuple(own[shape_bad[0]].shape)}")
        raise FilterlensError(f"checkpoint '{path}' does not fit this architecture ({what}); it is for another "
                              "model or label count")
    model.load_state_dict(sd)
    return state
