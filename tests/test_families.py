"""Every CNN family, its real layers (issue 16), with random weights on 32x32 inputs.

For each architecture: the blocks ``list_layers`` finds have the unit counts the modules' own
definitions give (a conv's out_channels, a batch norm's num_features, the branches of a
concatenation; not read from the outputs); ``analyze`` runs end to end on a few hundred samples;
for the deepest block, every unit's matrix equals brute-force silencing (zero every FC weight but
that unit's, run the FC, average by label) to 1e-5; the AFCC FC mask gives the masked FC's outputs;
and physical removal either gives the masked network's outputs or is refused in one line naming
the module that also reads the units.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import LABELS, SIZE, brute_force_matrices, synthetic_data
from filterlens import afcc
from filterlens.analysis import analyze
from filterlens.config import Config
from filterlens.errors import FilterlensError
from filterlens.models import ModelSpec, build_model, list_layers

TORCHVISION = ["vgg16", "resnet18", "resnet50", "resnet20", "wide_resnet50_2", "resnext50_32x4d", "densenet121",
               "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "efficientnet_v2_s", "regnet_y_400mf",
               "shufflenet_v2_x1_0", "squeezenet1_0", "convnext_tiny", "swin_t", "googlenet"]
TIMM = ["timm:resnet18", "timm:convnext_atto", "timm:efficientnet_b0"]


def _preceding_conv(model: nn.Module, name: str) -> nn.Conv2d:
    """The last Conv2d that runs before module ``name`` (for stems and flat chains ending in a pool/ReLU)."""
    last = None
    for n, m in model.named_modules():
        if n == name:
            return last
        if isinstance(m, nn.Conv2d):
            last = m
    raise AssertionError(name)


def own_channels(model: nn.Module, name: str) -> int:
    """A block's channel count from its own definition (never from its output)."""
    m = model.get_submodule(name)
    kind = type(m).__name__
    if kind == "VGGBlock":
        return m.conv.out_channels
    if kind == "BasicBlock":
        return m.bn2.num_features
    if kind == "Bottleneck":
        return m.bn3.num_features
    if kind == "InvertedResidual" and hasattr(m, "branch2"):  # ShuffleNetV2: two halves concatenated
        return 2 * [c for c in m.branch2.modules() if isinstance(c, nn.Conv2d)][-1].out_channels
    if kind in ("InvertedResidual", "MBConv", "FusedMBConv") and hasattr(m, "out_channels"):
        return m.out_channels
    if kind == "ResBottleneckBlock":
        return m.f.c[0].out_channels
    if kind == "Fire":
        return m.expand1x1.out_channels + m.expand3x3.out_channels
    if kind == "CNBlock":
        return m.block[0].out_channels
    if kind == "SwinTransformerBlock":
        return m.norm1.normalized_shape[0]
    if kind == "Inception":
        return sum([c for c in branch.modules() if isinstance(c, nn.Conv2d)][-1].out_channels
                   for branch in (m.branch1, m.branch2, m.branch3, m.branch4))
    if kind == "_DenseBlock":
        layers = list(m.values())
        return layers[0].norm1.num_features + sum(layer.conv2.out_channels for layer in layers)
    if kind == "_Transition":
        return m.conv.out_channels
    if kind == "ConvNeXtBlock":  # timm
        return m.conv_dw.out_channels
    if kind in ("DepthwiseSeparableConv", "InvertedResidual"):  # timm EfficientNet
        return (m.conv_pw if kind == "DepthwiseSeparableConv" else m.conv_pwl).out_channels
    if isinstance(m, nn.Sequential) and isinstance(m[0], nn.Conv2d):  # Conv2dNormActivation, RegNet's stem
        return m[0].out_channels
    if isinstance(m, nn.Conv2d):
        return m.out_channels
    if isinstance(m, (nn.MaxPool2d, nn.ReLU, nn.AvgPool2d, nn.BatchNorm2d)) or kind in ("ReLU", "MaxPool2d"):
        return _preceding_conv(model, name).out_channels  # a stem or a flat chain: what its conv gives
    raise AssertionError(f"no rule for {kind} ({name})")


@pytest.fixture(scope="module")
def data():
    return synthetic_data(n_train=200, n_test=100)  # a few hundred samples


@pytest.mark.slow  # about a minute on two workers: `make test-slow`, a step of .ci/run
@pytest.mark.parametrize("name", TORCHVISION + TIMM)
def test_family_end_to_end(name, data, monkeypatch):
    # float32 throughout: the AFCC check below compares the diluted network's float32 output with the captured
    # units; bfloat16's agreement with float32 is tests/test_precision.py's concern
    monkeypatch.setenv("FILTERLENS_CPU_BF16", "0")
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    torch.manual_seed(0)
    model = build_model(ModelSpec(name, LABELS, 3, SIZE)).eval()
    layers = list_layers(model, (3, SIZE, SIZE))
    assert len(layers) >= 5, [l.name for l in layers]
    for l in layers:  # units from the module's own definition; channels-last read as such
        assert l.units == own_channels(model, l.name), (l.name, l.units)
        assert l.shape[0] == l.units
    if name == "swin_t":
        assert all(l.layout == "NHWC" for l in layers)

    cfg = Config(layers="all", probe_epochs=1, heatmaps="none", seed=0, progress=False)
    result = analyze(model, data, config=cfg, device="cpu")
    assert [r["layer"] for r in result.layers] == [l.name for l in layers]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in result.layers)

    # the deepest block: unit matrices against brute-force silencing
    deepest = result.probes.layers[-1]
    W = deepest.weight.double()  # (L, C, H, W)
    C = W.shape[1]
    A, brute = brute_force_matrices(model, layers[-1], W, data)
    matrices = result.sfp[deepest.name].matrices_
    np.testing.assert_allclose(matrices, brute, rtol=0, atol=1e-5 * np.abs(brute).max())

    # AFCC: the FC mask of the deepest block, and its physical removal
    clusters = result.sfp[deepest.name].clusters_
    net = afcc.build_diluted(model, [deepest.name], deepest.weight, (3, SIZE, SIZE))
    masks = afcc.make_masks(net, {deepest.name: clusters})
    afcc.apply_masks(net, masks)
    x = data.test.resize(data.test.normalise(data.test.images[:16]))
    mask = masks[-1].mask.double()
    with torch.no_grad():
        want = A[:16].flatten(1) @ (W * mask).flatten(1).T
        got = net(x).double()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    try:
        pruned, _, info = afcc.prune(net, masks)
    except FilterlensError as exc:
        msg = str(exc)
        assert "\n" not in msg and "not supported" in msg, msg
        return
    removed = info[deepest.name]["removed"]
    assert pruned.fc.weight.shape[1] == (C - len(removed)) * int(np.prod(deepest.shape[1:]))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), net(x), rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_stages_keyword_and_dotted_paths():
    from filterlens.models import resolve_layers

    model = build_model(ModelSpec("resnet18", LABELS, 3, SIZE))
    stages = resolve_layers(model, (3, SIZE, SIZE), "stages")
    assert [l.name for l in stages] == ["maxpool", "layer1", "layer2", "layer3", "layer4"]
    picked = resolve_layers(model, (3, SIZE, SIZE), "layer2.0.conv1,-1")
    assert [l.name for l in picked] == ["layer2.0.conv1", "layer4.1"]
    assert picked[0].units == model.layer2[0].conv1.out_channels
    with pytest.raises(FilterlensError, match="unknown layer 'layer9'"):
        resolve_layers(model, (3, SIZE, SIZE), "layer9")
    with pytest.raises(FilterlensError, match="runs 2 times"):  # BasicBlock's relu runs twice
        resolve_layers(model, (3, SIZE, SIZE), "layer1.0.relu")


def test_unknown_family_falls_back_to_its_top_level_maps():
    from filterlens.models import describe

    model = nn.Sequential()
    model.add_module("a", nn.Conv2d(3, 4, 3))
    model.add_module("b", nn.Conv2d(4, 5, 3))
    model.add_module("flat", nn.Flatten())
    found = describe(model)
    assert found.fallback and found.family == "unknown"
    assert [l.name for l in list_layers(model, (3, 8, 8))] == ["a", "b"]


def test_a_model_too_small_for_the_input_names_the_smallest_size():
    model = build_model(ModelSpec("inception_v3", LABELS, 3, 32))
    with pytest.raises(FilterlensError, match="smallest size it runs on is 75: add --image-size 75"):
        list_layers(model, (3, 32, 32))
