"""VGG in its CIFAR form (filterlens' own builders): ``features`` holds one Conv-BN-ReLU block per conv, with
the max-pool that follows it; ``vgg16`` has 13 such layers (METHOD.md: VGG-16's layers). The head is one Linear,
or, with hidden FC layers (``F<n>`` entries after the convs; ``vgg16_fc``), the classic VGG classifier:
``Linear, ReLU, Dropout(0.5)`` per hidden layer, then the output Linear (torchvision's layout), whose hidden nodes
are node layers (``classifier.1``, ``classifier.4``)."""
from __future__ import annotations

import torch.nn as nn

from ..checks import is_int_text
from ..errors import FilterlensError

# VGG configurations: numbers are conv widths, "M" a 2x2 max-pool after the previous conv, "F<n>" (after the convs)
# a hidden fully connected layer of n nodes.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
VGG_CONFIGS = {
    "vgg16": _VGG16,
    # VGG-16 with the classic head: two hidden FC layers (512 nodes each, as CIFAR VGGs have; x width_mult)
    "vgg16_fc": _VGG16 + ["F512", "F512"],
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
        """The layer's map (N, cout, H', W'): Conv-BN-ReLU, then the pool (H' = H / 2 rounded up) if any."""
        return self.pool(self.relu(self.bn(self.conv(x))))


def _is_fc(v) -> bool:
    return isinstance(v, str) and v[:1] == "F"


class VGG(nn.Module):
    """VGG in its CIFAR form: ``features`` (one :class:`VGGBlock` per conv) and a linear head (``classifier``: one
    Linear, or a Sequential with the hidden FC layers the ``F<n>`` entries of ``cfg`` ask for)."""

    def __init__(self, cfg: list, num_labels: int = 10, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        hidden = [int(v[1:]) for v in cfg if _is_fc(v)]
        cfg_convs = [v for v in cfg if not _is_fc(v)]
        blocks, cin = [], in_channels
        for i, v in enumerate(cfg_convs):
            if v == "M":
                continue
            pool = i + 1 < len(cfg_convs) and cfg_convs[i + 1] == "M"
            blocks.append(VGGBlock(cin, int(v), pool))
            cin = int(v)
        self.features = nn.Sequential(*blocks)
        size = image_size
        for v in cfg_convs:
            if v == "M":
                size = -(-size // 2)
        self.flatten = nn.Flatten()
        self.classifier: nn.Module
        if hidden:
            head, width = [], cin * size * size
            for n in hidden:
                head += [nn.Linear(width, n), nn.ReLU(inplace=True), nn.Dropout(0.5)]
                width = n
            self.classifier = nn.Sequential(*head, nn.Linear(width, num_labels))
        else:
            self.classifier = nn.Linear(cin * size * size, num_labels)
        self.cfg = list(cfg)
        init_conv_bn(self)

    def forward(self, x):
        """Logits (N, L) of images (N, C, H, W)."""
        return self.classifier(self.flatten(self.features(x)))

    def filterlens_layers(self) -> list[str]:
        """The layer protocol (:mod:`.families`): the model's layers are its blocks ``features.0`` ..
        ``features.K-1``, one per conv."""
        return [f"features.{i}" for i in range(len(self.features))]


def _scaled(cfg, mult):
    return [v if v == "M" else f"F{max(1, int(round(int(v[1:]) * mult)))}" if _is_fc(v) else
            max(1, int(round(v * mult))) for v in cfg]


def _parse_vgg_cfg(text: str) -> list:
    out: list[int | str] = []
    for tok in text.split(","):
        tok = tok.strip()
        if tok.upper() == "M":
            out.append("M")
        elif is_int_text(tok) and tok.isdigit() and int(tok) > 0:  # ASCII digits only (checks.parse_int's rule)
            out.append(int(tok))
        elif tok[:1].upper() == "F" and tok[1:].isdigit() and int(tok[1:]) > 0:
            out.append(f"F{int(tok[1:])}")
        else:
            raise FilterlensError(f"VGG config token '{tok}' in '{text}' is invalid; use positive widths, M and "
                                  "F<nodes> (a hidden FC layer, after the convs), e.g. 16,16,M,32,M or "
                                  "16,M,32,M,F64,F64")
    if not any(v != "M" and not _is_fc(v) for v in out):
        raise FilterlensError(f"VGG config '{text}' has no conv layer")
    first_fc = next((i for i, v in enumerate(out) if _is_fc(v)), len(out))
    if any(not _is_fc(v) for v in out[first_fc:]):
        raise FilterlensError(f"VGG config '{text}' has a conv or M after a hidden FC layer (token {first_fc + 1}); "
                              "the F<nodes> entries come last, e.g. 16,M,32,M,F64,F64")
    for i, v in enumerate(out):  # an M is the max-pool after the conv before it: one per conv
        if v == "M" and (i == 0 or out[i - 1] == "M"):
            where = "starts with M" if i == 0 else f"has M twice in a row (token {i + 1})"
            raise FilterlensError(f"VGG config '{text}' {where}; each M pools the conv just before it, e.g. "
                                  "16,16,M,32,M")
    return out
