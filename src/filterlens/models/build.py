"""Building an architecture by name: filterlens' own, torchvision's, timm's; the ModelSpec checkpoints keep."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..errors import FilterlensError, closest
from .resnet_cifar import CIFAR_RESNET_DEPTHS, CifarResNet
from .user import build_user_model, is_reference
from .vgg import VGG, VGG_CONFIGS, _parse_vgg_cfg, _scaled
from .vit_tiny import VIT_CONFIGS, TinyViT


@dataclass
class ModelSpec:
    """Everything needed to rebuild an architecture (saved in checkpoints)."""

    model: str
    num_labels: int
    in_channels: int = 3
    image_size: int = 32
    width_mult: float = 1.0
    vgg_cfg: str | None = None  # explicit VGG widths, e.g. "16,16,M,32,M"


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_models() -> list[str]:
    """The model names ``--model`` takes: filterlens' own, then the forms of torchvision, timm and a
    user's callable."""
    return sorted(VGG_CONFIGS) + ["vgg"] + sorted(CIFAR_RESNET_DEPTHS) + [
        "resnet18_cifar"] + sorted(VIT_CONFIGS) + ["vgg16_imagenet", "<any torchvision classification model>",
        "timm:<name>", "path/to/file.py:factory", "package.module:callable"]


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Make a torchvision/timm model accept ``in_channels`` (pretrained RGB kernels are averaged)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return
            # torch keeps a Conv2d's kernel size, stride, padding and dilation as tuple[int, ...] (pairs), while its
            # constructor's annotations take int | tuple[int, int]
            new = nn.Conv2d(in_channels, module.out_channels,
                            module.kernel_size, module.stride, module.padding, module.dilation,  # type: ignore[arg-type]
                            module.groups if module.groups == 1 else in_channels, module.bias is not None)
            with torch.no_grad():
                w = module.weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
                new.weight.copy_(w * module.in_channels / in_channels)
                if module.bias is not None and new.bias is not None:  # made with a bias when the old one has one
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
    ``IMAGENET1K_V1``) for torchvision models; checkpoints are loaded by :func:`load_checkpoint`.
    ``path/to/file.py:factory`` or ``package.module:callable``: a user's own architecture (:mod:`.user`)."""
    name = spec.model
    if is_reference(name):
        if weights:
            raise FilterlensError(f"--weights '{weights}' is for torchvision/timm models; model '{name}' is your own "
                                  "(use --checkpoint for its weights)")
        return build_user_model(spec)
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

    if name in CIFAR_RESNET_DEPTHS or name == "resnet18_cifar":
        if weights:
            raise FilterlensError(f"--weights '{weights}' is for torchvision/timm models; model '{name}' has no "
                                  "pretrained weights (use --checkpoint for your own)")
        if name == "resnet18_cifar":  # torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool
            import torchvision

            model = torchvision.models.resnet18(weights=None, num_classes=spec.num_labels)
            model.conv1 = nn.Conv2d(spec.in_channels, 64, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
            return model
        return CifarResNet(CIFAR_RESNET_DEPTHS[name], spec.num_labels, spec.in_channels)

    if name in VIT_CONFIGS:
        if weights:
            raise FilterlensError(f"--weights '{weights}' is for torchvision/timm models; model '{name}' has no "
                                  "pretrained weights (use --checkpoint for your own)")
        c = VIT_CONFIGS[name]
        if spec.image_size % c["patch"]:
            raise FilterlensError(f"model '{name}' cuts images into {c['patch']}x{c['patch']} patches; image size "
                                  f"{spec.image_size} is not a multiple of {c['patch']}: use --image-size "
                                  f"{-(-spec.image_size // c['patch']) * c['patch']}")
        return TinyViT(spec.image_size, spec.num_labels, spec.in_channels, **c)

    if name.startswith("timm:"):
        return _timm_model(spec, weights)
    return _torchvision_model(spec, weights)


def _timm_model(spec: ModelSpec, weights: str | None) -> nn.Module:
    name = spec.model
    try:
        import timm
    except ImportError:
        raise FilterlensError(f"model '{name}' needs timm: pip install 'filterlens[timm]'") from None
    tname = name[5:]
    if tname not in timm.list_models():
        raise FilterlensError(f"unknown timm model '{tname}'{closest(tname, timm.list_models())}")
    kw: dict[str, Any] = dict(pretrained=bool(weights), num_classes=spec.num_labels, in_chans=spec.in_channels)
    try:
        try:  # transformers take the input size at construction; CNNs do not know the argument
            return timm.create_model(tname, img_size=spec.image_size, **kw)
        except TypeError:
            return timm.create_model(tname, **kw)
    except Exception as exc:  # noqa: BLE001 - the hub's errors differ by version; offline is the usual one
        if not weights:
            raise
        raise FilterlensError(f"the pretrained weights of timm model '{tname}' could not be loaded "
                              f"({type(exc).__name__}: {str(exc)[:100]}); without internet, copy the Hugging Face "
                              "cache (~/.cache/huggingface) from a machine that has them, or use --checkpoint "
                              "with a state_dict") from None


def _torchvision_model(spec: ModelSpec, weights: str | None) -> nn.Module:
    import torchvision

    name = spec.model
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
            raise FilterlensError(f"unknown weights '{weights}' for {tv_name}; "
                                  f"valid: DEFAULT, {', '.join(options)}") from None
        try:
            model = torchvision.models.get_model(tv_name, weights=w)
        except (OSError, RuntimeError) as exc:  # offline (URLError is an OSError) or a damaged download
            import os

            import torch.hub

            target = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(w.url))
            raise FilterlensError(f"the pretrained weights {tv_name} {w.name} could not be loaded "
                                  f"({type(exc).__name__}: {str(exc)[:100]}); without internet, download {w.url} "
                                  f"elsewhere and put it at {target}") from None
        _replace_head(model, spec.num_labels)
    else:
        extra: dict[str, bool | int] = ({"aux_logits": False, "init_weights": True}
                                        if tv_name in ("googlenet", "inception_v3") else {})
        if tv_name.startswith("vit_"):  # torchvision's ViTs take the input size at construction
            patch = int(tv_name.split("_")[-1])
            if spec.image_size % patch:
                raise FilterlensError(f"model '{tv_name}' cuts images into {patch}x{patch} patches; image size "
                                      f"{spec.image_size} is not a multiple of {patch}: use --image-size "
                                      f"{-(-spec.image_size // patch) * patch}")
            extra = {"image_size": spec.image_size}
        model = torchvision.models.get_model(tv_name, weights=None, num_classes=spec.num_labels, **extra)
    if spec.in_channels != 3:
        _replace_first_conv(model, spec.in_channels)
    return model
