"""VGG in its CIFAR form (filterlens' own builders): ``features`` holds one Conv-BN-ReLU block per conv, with
the max-pool that follows it; ``vgg16`` has 13 such layers (METHOD.md: VGG-16's layers)."""
from __future__ import annotations

import torch.nn as nn

from ..checks import is_int_text
from ..errors import FilterlensError

# VGG configurations: numbers are conv widths, "M" a 2x2 max-pool after the previous conv.
VGG_CONFIGS = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    # VGG-16 shape (13 convs, same pools) at 1/8 width: the CPU stand-in for VGG-16.
    "vgg16_slim": [8, 8, "M", 16, 16, "M", 32, 32, 32, "M", 64, 64, 64, "M", 64, 64, 64, "M"],
    "vgg_small": [16, 16, "M", 32, 32, "M", 64, 64, "M"],
    "vgg_tiny": [8, "M", 16, "M"],
}


def init_conv_bn(model: nn.Module) -> None:
    """He (fan-out) initialisation of every conv, batch norms at weight 1 and bias 0 (filterlens' CNN builders)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


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
        init_conv_bn(self)

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))

    def filterlens_layers(self) -> list[str]:
        return [f"features.{i}" for i in range(len(self.features))]


def _scaled(cfg, mult):
    return [v if v == "M" else max(1, int(round(v * mult))) for v in cfg]


def _parse_vgg_cfg(text: str) -> list:
    out = []
    for tok in text.split(","):
        tok = tok.strip()
        if tok.upper() == "M":
            out.append("M")
        elif is_int_text(tok) and tok.isdigit() and int(tok) > 0:  # ASCII digits only (checks.parse_int's rule)
            out.append(int(tok))
        else:
            raise FilterlensError(f"VGG config token '{tok}' in '{text}' is invalid; use positive widths and M, e.g. 16,16,M,32,M")
    if not any(v != "M" for v in out):
        raise FilterlensError(f"VGG config '{text}' has no conv layer")
    for i, v in enumerate(out):  # an M is the max-pool after the conv before it: one per conv
        if v == "M" and (i == 0 or out[i - 1] == "M"):
            where = "starts with M" if i == 0 else f"has M twice in a row (token {i + 1})"
            raise FilterlensError(f"VGG config '{text}' {where}; each M pools the conv just before it, e.g. "
                                  "16,16,M,32,M")
    return out
