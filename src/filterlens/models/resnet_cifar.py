"""ResNets in their CIFAR form (He, Zhang, Ren, Sun, "Deep residual learning", CVPR 2016, section 4.2).

``resnet20``/``32``/``56``/``110``: a 3x3 conv with 16 filters, three stages of n basic blocks each
(16, 32 and 64 filters, the second and third starting with stride 2; depth = 6n + 2), global
average pooling and a linear classifier; shortcuts are identities, zero-padded in channels and
subsampled where the shape changes (the paper's option A, no parameters). ``resnet18_cifar`` is
torchvision's ResNet-18 with a 3x3, stride-1 stem and no max-pool (built in :mod:`.build`). The
attribute names follow torchvision's ResNet (``conv1``, ``bn1``, ``relu``, ``layer1``...), so the
ResNet layer rule (the stem, then every block after its addition and ReLU) applies unchanged.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .vgg import init_conv_bn

CIFAR_RESNET_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56, "resnet110": 110}


class ShortcutA(nn.Module):
    """Option A: the identity, subsampled by ``stride`` and zero-padded from ``cin`` to ``cout`` channels."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.cin, self.cout, self.stride = cin, cout, stride

    def forward(self, x):
        """``x`` (N, cin, H, W) subsampled by ``stride`` and zero-padded to (N, cout, H', W')."""
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.cout - self.cin
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2)) if extra else x


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU: one layer (its units: ``cout`` filters)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = ShortcutA(cin, cout, stride) if stride != 1 or cin != cout else nn.Identity()
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x):
        """The block's output (N, cout, H', W'): ReLU of the two convs plus the shortcut."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR ResNet of ``depth`` = 6n + 2 layers (20, 32, 44, 56, 110, ...)."""

    def __init__(self, depth: int = 20, num_labels: int = 10, in_channels: int = 3, width: int = 16):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n + 2; {depth} is not")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            blocks = [BasicBlock(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_labels)
        init_conv_bn(self)

    def forward(self, x):
        """Logits (N, L) of images (N, C, H, W)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))
