"""Tests of filterlens.models: architectures, layer discovery, layer selection, checkpoints.

Expected shapes come from the published architectures (VGG-16: 13 3x3 convs with widths
64,64,128,128,256,256,256,512x6 and a 2x2 max-pool after convs 2, 4, 7, 10, 13 -- METHOD.md
and Simonyan & Zisserman 2015; EfficientNet-B0: Tan & Le 2019, table 1) or from forward
hooks the tests register themselves.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from filterlens.errors import FilterlensError
from filterlens.models import (
    ModelSpec,
    build_model,
    list_layers,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    select_layers,
)

VGG16_WIDTHS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
POOL_AFTER = {2, 4, 7, 10, 13}  # 1-based conv numbers


def vgg16_sizes(s: int) -> list[int]:
    """Spatial size after each of VGG-16's 13 layers (a layer includes its pool), derived from
    POOL_AFTER with ceil-halving (equal to floor-halving for the powers of two used here)."""
    out = []
    for i in range(1, 14):
        if i in POOL_AFTER:
            s = -(-s // 2)
        out.append(s)
    return out


assert vgg16_sizes(32) == [32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2, 1]  # as METHOD.md's pools give

# (model, input size) -- sizes where each architecture is valid and cheap on a CPU
MODELS = [("vgg16", 32), ("vgg16_slim", 32), ("vgg_small", 32), ("vgg_tiny", 8), ("efficientnet_b0", 64),
          ("vgg16_imagenet", 64), ("resnet18", 64)]

_cache: dict = {}


def get_model(name: str, num_labels: int = 10, in_channels: int = 3, size: int = 32) -> nn.Module:
    """Built once per session (vgg16_imagenet takes seconds); tests must not change them."""
    key = (name, num_labels, in_channels, size)
    if key not in _cache:
        torch.manual_seed(0)
        _cache[key] = build_model(ModelSpec(name, num_labels, in_channels, size))
    return _cache[key]


def hooked_shapes(model: nn.Module, names: list[str], x: torch.Tensor) -> dict:
    """Output shapes (without batch) of the named modules, from our own forward hooks."""
    shapes, handles = {}, []
    for n in names:
        handles.append(model.get_submodule(n).register_forward_hook(
            lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:]))))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return shapes


def no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ================================================================================ list_layers

@pytest.mark.parametrize("name,size", MODELS)
def test_list_layers_names_and_shapes_match_forward_hooks(name, size):
    model = get_model(name, 7, 3, size)
    model.train()
    layers = list_layers(model, (3, size, size))
    assert layers, "no layers found"
    assert model.training, "list_layers must restore the caller's mode"
    assert no_hooks_left(model)
    paths = dict(model.named_modules())
    assert [l.index for l in layers] == list(range(len(layers)))
    assert len({l.name for l in layers}) == len(layers)
    for l in layers:
        assert l.name in paths and l.name != "", f"{l.name} is not a named_modules() path"
    shapes = hooked_shapes(model, [l.name for l in layers], torch.zeros(1, 3, size, size))
    for l in layers:
        assert tuple(l.shape) == shapes[l.name], (l.name, l.shape, shapes[l.name])
        assert l.units == l.shape[0]
        assert l.features == l.shape[0] * l.shape[1] * l.shape[2]


@pytest.mark.parametrize("name,size", MODELS)
def test_forward_has_one_column_per_label(name, size):
    model = get_model(name, 7, 3, size)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert tuple(out.shape) == (2, 7)


@pytest.mark.parametrize("name,size", [m for m in MODELS if m[0] != "vgg16_imagenet"])
def test_one_input_channel(name, size):
    model = get_model(name, 10, 1, size)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, size, size))
    assert tuple(out.shape) == (2, 10)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1
    layers = list_layers(model, (1, size, size))
    assert layers and no_hooks_left(model)


def test_vgg16_cifar_form():
    model = get_model("vgg16", 100, 3, 32)
    layers = list_layers(model, (3, 32, 32))
    assert len(layers) == 13
    assert [l.units for l in layers] == VGG16_WIDTHS
    assert [l.shape[1] for l in layers] == vgg16_sizes(32)
    assert [l.shape[2] for l in layers] == vgg16_sizes(32)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    # VGG-16's conv weights: 14,710,464 (the well-known 14.7M of its convolutional part)
    assert sum(c.weight.numel() for c in convs) == 14_710_464
    # each analysable layer holds exactly one conv (Conv-BN-ReLU with its pool)
    for l in layers:
        assert sum(isinstance(m, nn.Conv2d) for m in model.get_submodule(l.name).modules()) == 1
    with torch.no_grad():
        assert tuple(model.eval()(torch.zeros(3, 3, 32, 32)).shape) == (3, 100)


def test_vgg16_on_other_input_sizes():
    """28x28 (MNIST) and 8x8 (digits) inputs: ceil-mode pools keep every layer at least 1x1."""
    for size in (28, 8):
        model = build_model(ModelSpec("vgg16_slim", 10, 1, size))
        layers = list_layers(model, (1, size, size))
        assert len(layers) == 13
        assert [l.shape[1] for l in layers] == vgg16_sizes(size)


def test_vgg16_slim_has_vgg16_shape():
    layers = list_layers(get_model("vgg16_slim", 10, 3, 32), (3, 32, 32))
    assert len(layers) == 13
    assert [l.shape[1] for l in layers] == vgg16_sizes(32)
    assert [l.units for l in layers] == [w // 8 for w in VGG16_WIDTHS]  # 1/8 width (models.py docstring)


def test_vgg16_imagenet_layers_end_at_relu_or_pool():
    """torchvision's vgg16_bn: 13 layers, each ending at the ReLU of its conv or the pool after it."""
    model = get_model("vgg16_imagenet", 10, 3, 64)
    layers = list_layers(model, (3, 64, 64))
    assert len(layers) == 13
    assert [l.units for l in layers] == VGG16_WIDTHS
    assert [l.shape[1] for l in layers] == vgg16_sizes(64)
    for i, l in enumerate(layers, start=1):
        want = nn.MaxPool2d if i in POOL_AFTER else nn.ReLU
        assert isinstance(model.get_submodule(l.name), want), (l.name, i)


def test_efficientnet_b0_stages():
    """Tan & Le (2019), table 1: stem 32 (stride 2), MBConv stages 16, 24, 40, 80, 112, 192, 320
    with strides 1, 2, 2, 2, 1, 2, 1, then the 1x1 conv to 1280."""
    model = get_model("efficientnet_b0", 10, 3, 64)
    layers = list_layers(model, (3, 64, 64), "stages")
    assert [l.units for l in layers] == [32, 16, 24, 40, 80, 112, 192, 320, 1280]
    assert [l.shape[1] for l in layers] == [32, 32, 16, 8, 4, 4, 2, 2, 2]
    # the default layers are its blocks: the stem, the 16 MBConv blocks (1, 2, 2, 3, 3, 4, 1 per stage), the head
    blocks = list_layers(model, (3, 64, 64))
    assert len(blocks) == 18 and blocks[0].name == "features.0" and blocks[-1].name == "features.8"
    assert [l.units for l in blocks[1:-1]] == [16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192,
                                                  320]


def test_list_layers_small_input_error_leaves_no_hooks():
    model = get_model("vgg_small", 10, 3, 32)
    with pytest.raises(FilterlensError, match="5, 32, 32"):
        list_layers(model, (5, 32, 32))  # wrong channel count: the forward pass raises
    assert no_hooks_left(model)


# ================================================================================ select_layers

@pytest.fixture(scope="module")
def vgg16_layers():
    return list_layers(get_model("vgg16", 100, 3, 32), (3, 32, 32))


@pytest.mark.parametrize("spec,want", [
    ("all", list(range(13))),
    (None, list(range(13))),
    ("-1", [12]),
    ("0,2", [0, 2]),
    ("2,0", [0, 2]),  # returned in network order
    ("last:2", [11, 12]),
    ("last:13", list(range(13))),
    ("features.3", [3]),
    ("features.12,0", [0, 12]),
    ("features.5,5,-8", [5]),  # the same layer three ways, once
    ("-13", [0]),
    ([1, "features.4"], [1, 4]),
])
def test_select_layers(vgg16_layers, spec, want):
    picked = select_layers(vgg16_layers, spec)
    assert [l.index for l in picked] == want
    assert all(l is vgg16_layers[l.index] for l in picked)


@pytest.mark.parametrize("spec,needles", [
    ("13", ["13"]),
    ("-14", ["-14"]),
    ("0,99", ["99"]),
    ("features.13", ["features.13"]),
    ("conv1", ["conv1"]),
    ("featurs.3", ["featurs.3", "did you mean 'features.3'"]),
])
def test_select_layers_errors_list_valid_layers(vgg16_layers, spec, needles):
    with pytest.raises(FilterlensError) as exc:
        select_layers(vgg16_layers, spec)
    msg = str(exc.value)
    for n in needles:
        assert n in msg, msg
    assert "features.0" in msg and "features.12" in msg, f"valid layers not listed: {msg}"
    assert "\n" not in msg


@pytest.mark.parametrize("spec", ["last:0", "last:14", "last:x"])
def test_select_layers_bad_last(vgg16_layers, spec):
    with pytest.raises(FilterlensError, match=spec):
        select_layers(vgg16_layers, spec)


# ================================================================================ checkpoints

def _randomised(spec: ModelSpec, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(spec)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)  # non-default BN statistics must travel too
    return model


def test_checkpoint_round_trip(tmp_path):
    spec = ModelSpec("vgg_tiny", 4, 1, 8)
    model = _randomised(spec, 1)
    save_checkpoint(tmp_path / "c.pt", model, spec, ["a", "b", "c", "d"], {"epoch": 3})
    fresh = _randomised(spec, 2)
    assert not torch.equal(fresh.state_dict()["features.0.conv.weight"], model.state_dict()["features.0.conv.weight"])
    state = load_checkpoint(tmp_path / "c.pt", fresh, spec)
    a, b = model.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert state["label_names"] == ["a", "b", "c", "d"] and state["epoch"] == 3
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), fresh.eval()(x))


def test_plain_state_dict_loads(tmp_path):
    spec = ModelSpec("vgg_tiny", 10, 3, 32)
    model = _randomised(spec, 3)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    fresh = _randomised(spec, 4)
    load_checkpoint(tmp_path / "sd.pt", fresh, spec)
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k])


def test_checkpoint_of_another_architecture_refused(tmp_path):
    spec = ModelSpec("vgg_tiny", 10, 3, 32)
    save_checkpoint(tmp_path / "c.pt", _randomised(spec, 0), spec, list("abcdefghij"))
    other = ModelSpec("vgg_small", 10, 3, 32)
    target = build_model(other)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(FilterlensError, match="vgg_tiny") as exc:
        load_checkpoint(tmp_path / "c.pt", target, other)
    assert "vgg_small" in str(exc.value)
    for k, v in target.state_dict().items():  # nothing half-loaded
        assert torch.equal(v, before[k])
    # without a spec to compare, the state_dict mismatch is still refused
    with pytest.raises(FilterlensError, match="c.pt"):
        load_checkpoint(tmp_path / "c.pt", build_model(other), None)


def test_checkpoint_of_another_label_count_refused(tmp_path):
    spec = ModelSpec("vgg_tiny", 10, 3, 32)
    save_checkpoint(tmp_path / "c.pt", _randomised(spec, 0), spec, list("abcdefghij"))
    five = ModelSpec("vgg_tiny", 5, 3, 32)
    with pytest.raises(FilterlensError, match="label count") as exc:
        load_checkpoint(tmp_path / "c.pt", build_model(five), five)
    assert "10" in str(exc.value) and "5" in str(exc.value)
    with pytest.raises(FilterlensError):  # a plain state_dict: caught by the head's shape
        torch.save(_randomised(spec, 0).state_dict(), tmp_path / "sd.pt")
        load_checkpoint(tmp_path / "sd.pt", build_model(five), five)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_checkpoint_with_nan_refused(tmp_path, bad):
    spec = ModelSpec("vgg_tiny", 10, 3, 32)
    model = _randomised(spec, 0)
    with torch.no_grad():
        model.features[1].conv.weight[0, 0, 1, 1] = bad
    save_checkpoint(tmp_path / "c.pt", model, spec, list("abcdefghij"))
    with pytest.raises(FilterlensError, match="features.1.conv.weight"):
        load_checkpoint(tmp_path / "c.pt", build_model(spec), spec)


def test_not_a_checkpoint_refused(tmp_path):
    import os

    (tmp_path / "junk.pt").write_bytes(os.urandom(4096))
    with pytest.raises(FilterlensError, match="junk.pt"):
        read_checkpoint(tmp_path / "junk.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(FilterlensError, match="list.pt"):
        read_checkpoint(tmp_path / "list.pt")
    torch.save({"epoch": 3, "note": "hello"}, tmp_path / "dict.pt")
    with pytest.raises(FilterlensError, match="dict.pt"):
        read_checkpoint(tmp_path / "dict.pt")
    with pytest.raises(FilterlensError, match="missing.pt"):
        read_checkpoint(tmp_path / "missing.pt")


def test_unknown_model_suggests_the_closest():
    with pytest.raises(FilterlensError, match="did you mean 'vgg_small'"):
        build_model(ModelSpec("vgg_smal", 10))
    with pytest.raises(FilterlensError, match="resnt18"):
        build_model(ModelSpec("resnt18", 10))


# ------------------------------------------------------------------------------ the layer protocol

class _OwnLayers(nn.Module):
    """A user's model naming its layers with filterlens_layers() (the README's example)."""

    filterlens_family = "mine"

    def __init__(self, names=("stem", "body.2")):
        super().__init__()
        self.names = list(names)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        return self.head(self.body(self.stem(x)))

    def filterlens_layers(self):
        return self.names


def test_own_layers_method_names_the_layers():
    assert [l.name for l in list_layers(_OwnLayers(), (3, 16, 16))] == ["stem", "body.2"]


@pytest.mark.parametrize("bad", ["body.9", "nope", ""])
def test_own_layers_method_with_a_name_that_is_no_module_is_one_line(bad):
    # before: an internal AttributeError ("Sequential has no attribute 9")
    with pytest.raises(FilterlensError) as info:
        list_layers(_OwnLayers(["stem", bad]), (3, 16, 16))
    msg = str(info.value)
    assert "filterlens_layers()" in msg and repr(bad) in msg and "\n" not in msg


def test_own_layers_method_comes_before_the_family_rules():
    # a model with a transformer's layout that names its own layers: its method wins (the README's rule 1)
    class Own(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                          nn.ReLU())
            self.fc = nn.Linear(8, 10)
            attn = nn.Module()
            attn.proj, attn.num_heads = nn.Linear(8, 8), 2
            block = nn.Module()
            block.attn = attn
            self.blocks = nn.ModuleList([block])  # a transformer's layout (timm's blocks.i.attn.proj), unused here

        def forward(self, x):
            return self.fc(self.features(x).mean((2, 3)))

        def filterlens_layers(self):
            return ["features.1"]  # the VGG-like rule alone would read features.0 and features.2's chain

    assert [l.name for l in list_layers(Own(), (3, 16, 16))] == ["features.1"]
