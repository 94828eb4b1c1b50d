"""Tests of filterlens.capture (the one-pass activation engine, DESIGN.md "The capture engine").

References are computed independently of the hooks: by running the truncated network
(``nn.Sequential`` of the blocks up to a layer) by hand, by NumPy reductions in float64 and
by plain loops over adaptive-pooling bins.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from filterlens.capture import (
    Capture,
    CaptureLayer,
    FeatureCache,
    LabelMeanSink,
    capture_pass,
    num_hooks,
    pooled_shape,
)
from filterlens.data import load_data
from filterlens.errors import FilterlensError
from filterlens.loaders import make_loader
from filterlens.models import VGG, VGG_CONFIGS, Layer, list_layers, select_layers

INPUT = (1, 8, 8)




def _randomise_bn(model: nn.Module, seed: int) -> None:
    """Non-trivial BN affine parameters and running statistics, so that train-mode BN (batch
    statistics) and eval-mode BN (running statistics) give clearly different outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.num_batches_tracked.fill_(7)


def _vgg(seed: int = 0, cfg: str = "vgg_small") -> VGG:
    torch.manual_seed(seed)
    model = VGG(VGG_CONFIGS[cfg], num_labels=10, in_channels=1, image_size=8)
    _randomise_bn(model, seed + 100)
    return model


@pytest.fixture
def model() -> VGG:
    return _vgg(0)


@pytest.fixture
def layers(model):
    return list_layers(model, INPUT)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _x(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *INPUT, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _reference(model: VGG, upto: int, x: torch.Tensor) -> torch.Tensor:
    """Output of block ``upto`` computed by running the truncated network by hand, eval mode."""
    was = model.training
    model.eval()
    try:
        return nn.Sequential(*list(model.features)[: upto + 1])(x.clone()).clone()
    finally:
        model.train(was)


def _state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(before: dict, model: nn.Module) -> None:
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"capture changed {k}"


class _Boom(nn.Module):
    """Wraps a block and raises inside its forward."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        raise RuntimeError("boom inside block 3")


# ----------------------------------------------------------------------------- hooks


def test_sanity_the_vgg_layers(layers):
    # vgg_small on 8x8: [16,16,M,32,32,M,64,64,M]
    assert [l.name for l in layers] == [f"features.{i}" for i in range(6)]
    assert [l.shape for l in layers] == [(16, 8, 8), (16, 4, 4), (32, 4, 4), (32, 2, 2), (64, 2, 2), (64, 1, 1)]


def test_no_hook_left_after_normal_run(model, layers):
    before = num_hooks(model)
    with Capture(model, layers) as cap:
        assert num_hooks(model) == before + len(layers)  # ours are in place while inside
        cap.forward(_x())
        cap.forward(_x(3, seed=2))
    assert num_hooks(model) == before


def test_num_hooks_counts_forward_and_pre_hooks(model):
    # num_hooks is what the other tests rely on: check it against a direct count
    base = num_hooks(model)
    h1 = model.features[1].register_forward_hook(lambda *a: None)
    h2 = model.features[2].register_forward_pre_hook(lambda *a: None)
    assert num_hooks(model) == base + 2
    h1.remove()
    h2.remove()
    assert num_hooks(model) == base == 0


def test_unknown_layer_name_raises_and_leaves_no_hook(model, layers):
    before = num_hooks(model)
    with pytest.raises(FilterlensError):
        select_layers(layers, "features.9")
    bogus = Layer(0, "features.nope", 16, (16, 8, 8))
    with pytest.raises(FilterlensError, match="features.nope"):
        with Capture(model, [layers[0], bogus]):
            pass
    with pytest.raises(FilterlensError):
        Capture(model, [])
    assert num_hooks(model) == before


def test_non_map_layer_raises_and_leaves_no_hook(model, layers):
    # a layer whose output is not a 4-D map (the classifier) is refused during the pass;
    # the hooks are still removed and the caller's mode restored
    model.train()
    before = num_hooks(model)
    head = Layer(6, "classifier", 10, (10, 1, 1))
    with pytest.raises(FilterlensError, match="classifier"):
        with Capture(model, [layers[0], head]) as cap:
            cap.forward(_x())
    assert num_hooks(model) == before
    assert model.training


@pytest.mark.parametrize("training", [True, False])
def test_raising_module_leaves_no_hook_and_restores_mode(training):
    model = _vgg(3)
    layers = list_layers(model, INPUT)
    model.features[2] = _Boom(model.features[2])  # the 3rd block raises
    model.train(training)
    before = num_hooks(model)
    with pytest.raises(RuntimeError, match="boom inside block 3"):
        with Capture(model, layers) as cap:
            assert not model.training
            cap.forward(_x())
    assert num_hooks(model) == before
    assert model.training is training
    assert all(m.training is training for m in model.modules())


def test_raising_module_after_deepest_layer_is_never_run():
    # early stop: with only the first two layers selected, the raising 3rd block is not reached
    model = _vgg(3)
    layers = list_layers(model, INPUT)
    model.features[2] = _Boom(model.features[2])
    with Capture(model, layers[:2]) as cap:
        out = cap.forward(_x())
    assert set(out) == {"features.0", "features.1"}
    with pytest.raises(RuntimeError):  # positive control: the model itself does raise
        model(_x())


def test_users_own_hooks_survive(model, layers):
    calls = {"fwd": 0, "pre": 0}

    def fwd(m, i, o):
        calls["fwd"] += 1

    def pre(m, i):
        calls["pre"] += 1

    # on a selected layer (features.1) and on the model itself
    h1 = model.features[1].register_forward_hook(fwd)
    h2 = model.register_forward_pre_hook(pre)
    before = num_hooks(model)
    with Capture(model, layers) as cap:
        cap.forward(_x())
    assert num_hooks(model) == before
    assert h1.id in model.features[1]._forward_hooks
    assert h2.id in model._forward_pre_hooks
    calls.update(fwd=0, pre=0)
    model(_x())
    assert calls == {"fwd": 1, "pre": 1}  # still active after the capture
    # also after a capture that raised
    with pytest.raises(FilterlensError):
        with Capture(model, [layers[0], Layer(6, "classifier", 10, (10, 1, 1))]) as cap:
            cap.forward(_x())
    assert h1.id in model.features[1]._forward_hooks and num_hooks(model) == before
    h1.remove()
    h2.remove()


def test_forward_outside_with_block_is_refused(model, layers):
    cap = Capture(model, layers)
    with pytest.raises(RuntimeError):
        cap.forward(_x())
    with cap:
        cap.forward(_x())
    with pytest.raises(RuntimeError):
        cap.forward(_x())
    assert num_hooks(model) == 0


# ----------------------------------------------------------------------------- mode and state


@pytest.mark.parametrize("training", [True, False])
def test_mode_restored_and_state_unchanged(model, layers, training):
    model.train(training)
    before = _state(model)
    x = _x(32)
    with Capture(model, layers) as cap:
        assert not model.training and not any(m.training for m in model.modules())
        out = cap.forward(x)
    assert model.training is training
    assert all(m.training is training for m in model.modules())
    _assert_same_state(before, model)  # BN running stats and num_batches_tracked untouched
    # eval-mode BN was used: the captured map equals the eval-mode reference, and differs from
    # what train-mode BN (batch statistics) would give
    ref = _reference(model, 5, x)
    torch.testing.assert_close(out["features.5"], ref, rtol=1e-6, atol=1e-6)
    m2 = copy.deepcopy(model).train()
    with torch.no_grad():
        train_out = nn.Sequential(*list(m2.features))(x)
    assert (train_out - ref).abs().max() > 1e-3


def test_mixed_per_module_modes_restored(model, layers):
    # a common fine-tuning setup: model in train mode with frozen (eval-mode) batch norms
    model.train()
    frozen = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)][:2]
    for m in frozen:
        m.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    with Capture(model, layers) as cap:
        cap.forward(_x())
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_no_autograd_graph_and_model_grads_untouched(model, layers):
    x = _x()
    with Capture(model, layers) as cap:
        out = cap.forward(x)
    for t in out.values():
        assert not t.requires_grad and t.grad_fn is None
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- early stop


def test_nothing_after_deepest_layer_is_computed(model, layers):
    calls = {}

    def counter(name):
        def hook(m, i, o):
            calls[name] = calls.get(name, 0) + 1

        return hook

    handles = [model.get_submodule(n).register_forward_hook(counter(n))
               for n in ["features.0", "features.2", "features.3", "features.4", "features.5", "classifier"]]
    handles.append(model.features[3].conv.register_forward_hook(counter("features.3.conv")))
    # selected out of order: the deepest is features.2 whatever the order given
    with Capture(model, [layers[2], layers[0]]) as cap:
        out = cap.forward(_x())
        out = cap.forward(_x(5, seed=3))
    assert set(out) == {"features.0", "features.2"}
    assert calls == {"features.0": 2, "features.2": 2}
    # positive control: an ordinary forward does reach every counter
    calls.clear()
    model(_x())
    assert calls == {n: 1 for n in ["features.0", "features.2", "features.3", "features.4", "features.5",
                                    "classifier", "features.3.conv"]}
    for h in handles:
        h.remove()


# ----------------------------------------------------------------------------- copies


def test_captured_equals_truncated_network(model, layers):
    x = _x(24)
    with Capture(model, layers) as cap:
        out = cap.forward(x)
    assert list(out) and set(out) == {l.name for l in layers}
    for k, l in enumerate(layers):
        ref = _reference(model, k, x)
        assert out[l.name].shape == (24, *l.shape)
        assert out[l.name].dtype == torch.float32
        torch.testing.assert_close(out[l.name], ref, rtol=1e-6, atol=1e-6)


def test_captured_tensors_are_not_overwritten_by_later_batches(model, layers):
    x1, x2 = _x(8, seed=5), _x(8, seed=6)
    with Capture(model, layers) as cap:
        a = cap.forward(x1)
        b = cap.forward(x2)
        a_again = cap.forward(x1)
    for k, l in enumerate(layers):
        torch.testing.assert_close(a[l.name], _reference(model, k, x1), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(b[l.name], _reference(model, k, x2), rtol=1e-6, atol=1e-6)
        assert a[l.name].data_ptr() != a_again[l.name].data_ptr()


class _FlatVGG(nn.Module):
    """torchvision-VGG-BN-like flat ``features`` with in-place ReLUs."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def test_flat_vgg_with_inplace_relu_captures_copies():
    torch.manual_seed(0)
    model = _FlatVGG()
    _randomise_bn(model, 9)
    model.eval()
    found = list_layers(model, INPUT)
    assert [l.name for l in found] == ["features.3", "features.6", "features.10"]
    # The outputs of the batch norms are overwritten in place by the ReLU that follows:
    # captured tensors must be copies taken inside the hook.
    bns = [Layer(0, "features.1", 8, (8, 8, 8)), Layer(1, "features.5", 16, (16, 4, 4)),
           Layer(2, "features.8", 16, (16, 4, 4))]
    chosen = bns + [Layer(3, "features.10", 16, (16, 2, 2))]
    x = _x(20)
    with Capture(model, chosen) as cap:
        out = cap.forward(x)
    with torch.no_grad():
        for l, upto in zip(chosen, [1, 5, 8, 10]):
            ref = nn.Sequential(*list(model.features)[: upto + 1])(x.clone())
            if l.name != "features.10":
                assert (ref < -1e-3).any()  # the ReLU would have changed it: the test can fail
            torch.testing.assert_close(out[l.name], ref, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- probe_pool


def _adaptive_max_loop(a: np.ndarray, out_hw) -> np.ndarray:
    """Adaptive max-pool by its definition: bin i covers [floor(i*H/o), ceil((i+1)*H/o))."""
    n, c, h, w = a.shape
    oh, ow = out_hw
    res = np.empty((n, c, oh, ow), dtype=a.dtype)
    for i in range(oh):
        r0, r1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        for j in range(ow):
            c0, c1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            res[:, :, i, j] = a[:, :, r0:r1, c0:c1].max(axis=(2, 3))
    return res


def test_probe_pool_size(model, layers):
    x = _x(12)
    pool = ("size", (2, 2))
    with Capture(model, layers, pool=pool) as cap:
        out = cap.forward(x)
        shapes = {cl.name: cl.shape for cl in cap.layers}
    for k, l in enumerate(layers):
        ref = _reference(model, k, x).numpy()
        c, h, w = l.shape
        want = (c, min(h, 2), min(w, 2))
        assert shapes[l.name] == want
        assert tuple(out[l.name].shape) == (12, *want)
        if (h, w) == want[1:]:
            expect = ref  # maps no larger than the target are kept as they are
        else:
            # 8x8 -> 2x2 and 4x4 -> 2x2: the max over non-overlapping blocks
            expect = ref.reshape(12, c, 2, h // 2, 2, w // 2).max(axis=(3, 5))
        np.testing.assert_allclose(out[l.name].numpy(), expect, rtol=1e-6, atol=1e-6)


def test_probe_pool_size_not_dividing(model, layers):
    # 4x4 -> 3x3 has overlapping bins: compare with the definition, looped
    x = _x(6)
    with Capture(model, [layers[1]], pool=("size", (3, 3))) as cap:
        out = cap.forward(x)["features.1"]
    expect = _adaptive_max_loop(_reference(model, 1, x).numpy(), (3, 3))
    assert out.shape == (6, 16, 3, 3)
    np.testing.assert_allclose(out.numpy(), expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(16, 8, 8), (64, 32, 32), (512, 14, 14), (3, 224, 224), (64, 7, 7),
                                   (256, 56, 56), (10, 3, 3)])
@pytest.mark.parametrize("n", [64, 1000, 8192, 12345])
def test_pooled_shape_max_budget(shape, n):
    c, h, w = shape
    got = pooled_shape(shape, ("max", n))
    C, H, W = got
    assert C == c and 1 <= H <= h and 1 <= W <= w
    if c * h * w <= n:
        assert got == shape
    elif c <= n:  # (with more filters than N no pooling can fit; not specified)
        assert C * H * W <= n
        # the largest square reduction that fits: one more row and column would not
        s = H
        assert H == W == s
        assert s == h or c * (s + 1) ** 2 > n
    assert pooled_shape(shape, None) == shape


def test_capture_with_max_pool_budget(model, layers):
    x = _x(4)
    with Capture(model, layers, pool=("max", 300)) as cap:
        out = cap.forward(x)
        for cl in cap.layers:
            assert cl.features <= 300
            assert tuple(out[cl.name].shape) == (4, *cl.shape)
    # features.0 (16x8x8 = 1024 > 300) -> 16x4x4 = 256, the max over 2x2 blocks
    ref = _reference(model, 0, x).numpy().reshape(4, 16, 4, 2, 4, 2).max(axis=(3, 5))
    np.testing.assert_allclose(out["features.0"].numpy(), ref, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- sinks


@torch.no_grad()
def _split_maps(model, split, upto: int) -> np.ndarray:
    x = split.normalise(split.images)
    return _reference(model, upto, x).numpy()


def test_label_mean_sink_equals_numpy(model, layers, digits):
    with Capture(model, layers) as cap:
        sink = LabelMeanSink(cap.layers, digits.num_labels)
        seen = capture_pass(cap, make_loader(digits, "test", 64), [sink])
    labels = digits.test.labels.numpy()
    assert seen == len(labels) == 450
    np.testing.assert_array_equal(sink.counts.numpy(), np.bincount(labels, minlength=10))
    means = sink.means()
    for k, l in enumerate(layers):
        maps = _split_maps(model, digits.test, k).astype(np.float64)
        expect = np.stack([maps[labels == i].mean(axis=0) for i in range(10)])
        got = means[l.name]
        assert got.dtype == torch.float64 and tuple(got.shape) == (10, *l.shape)
        np.testing.assert_allclose(got.numpy(), expect, rtol=1e-6, atol=1e-6)


def test_label_mean_sink_accumulates_in_float64():
    # many copies of a value float32 cannot sum exactly
    layer = Layer(0, "f", 1, (1, 1, 1))
    from filterlens.capture import CaptureLayer

    sink = LabelMeanSink([CaptureLayer(layer, (1, 1, 1))], 2)
    v = np.float32(0.1)
    for _ in range(200):
        sink.update({"f": torch.full((500, 1, 1, 1), float(v))}, torch.zeros(500, dtype=torch.long))
    got = sink.means()["f"][0].item()
    # each batch is summed in float32 (one product: error about 1e-7 of the batch's sum), the batches in float64:
    # within 1e-6 relative; a float32 running sum over the 100,000 values would be off by ~1e-3
    assert abs(got - float(v)) < 1e-6 * float(v)
    assert sink.counts.tolist() == [100000.0, 0.0]


@pytest.mark.parametrize("on_disk", [False, True])
def test_feature_cache_holds_float16_features(model, layers, digits, tmp_path, on_disk):
    chosen = [layers[0], layers[3], layers[5]]
    directory = tmp_path / "cache" if on_disk else None
    n = len(digits.test)
    with Capture(model, chosen) as cap:
        cache = FeatureCache(cap.layers, n, directory, prefix="test")
        assert FeatureCache.nbytes(cap.layers, n) == 2 * n * (1024 + 128 + 64)
        assert not cache.complete
        capture_pass(cap, make_loader(digits, "test", 100), [cache])
        # one batch too many is refused
        with pytest.raises(RuntimeError):
            cache.update(cap.forward(digits.test.normalise(digits.test.images[:3])), digits.test.labels[:3])
    assert cache.complete
    np.testing.assert_array_equal(cache.labels.numpy(), digits.test.labels.numpy())
    for l in chosen:
        got = cache.features[l.name]
        assert got.dtype == torch.float16 and tuple(got.shape) == (n, l.features)
        ref = _split_maps(model, digits.test, l.index).reshape(n, -1).astype(np.float64)
        g = got.numpy().astype(np.float64)
        # float16: relative spacing 2**-10, so rounding error <= 2**-11 relative (normal range)
        # or <= 2**-25 absolute (subnormals); a little slack for float32 batch differences
        err = np.abs(g - ref)
        assert np.all(err <= 2.0**-11 * np.abs(ref) + 2.0**-24 + 1e-6), err.max()
        assert np.abs(ref).max() < 60000  # within float16 range: the comparison is meaningful
    assert cache.data.device.type == "cpu" and cache.labels.device.type == "cpu"  # the default: the host
    if on_disk:  # one memory-mapped file holds every layer's columns, another the labels
        files = {f.name: f for f in directory.iterdir()}
        assert sorted(files) == ["test.f16", "test.labels"]
        assert files["test.f16"].stat().st_size >= 2 * n * (1024 + 128 + 64)
        assert tuple(cache.data.shape) == (n, 1024 + 128 + 64)


# ----------------------------------------------------------------------------- layer selection


def _valid_listing(layers):
    return [f"{l.index}:{l.name}" for l in layers]


@pytest.mark.parametrize("spec", ["features.9", "feature.1", "conv1", "features.1,bogus"])
def test_unknown_layer_name_lists_valid_layers(layers, spec):
    with pytest.raises(FilterlensError) as exc:
        select_layers(layers, spec)
    msg = str(exc.value)
    assert "\n" not in msg
    assert spec.split(",")[-1] in msg
    for item in _valid_listing(layers):
        assert item in msg


@pytest.mark.parametrize("spec", ["6", "-7", "99", "0,6"])
def test_index_out_of_range_lists_valid_layers(layers, spec):
    with pytest.raises(FilterlensError) as exc:
        select_layers(layers, spec)
    msg = str(exc.value)
    assert spec.split(",")[-1] in msg
    for item in _valid_listing(layers):
        assert item in msg


@pytest.mark.parametrize("spec", ["last:0", "last:7", "last:x"])
def test_last_n_out_of_range(layers, spec):
    with pytest.raises(FilterlensError, match="last:1..last:6"):
        select_layers(layers, spec)


def test_select_layers_valid_specs(layers):
    names = lambda sel: [l.name for l in sel]  # noqa: E731
    assert names(select_layers(layers, "all")) == [f"features.{i}" for i in range(6)]
    assert names(select_layers(layers, "-1")) == ["features.5"]
    assert names(select_layers(layers, "5,features.0,-1")) == ["features.0", "features.5"]
    assert names(select_layers(layers, "last:2")) == ["features.4", "features.5"]
    assert names(select_layers(layers, ["features.3", 1])) == ["features.1", "features.3"]


def test_a_memory_mapped_cache_cannot_live_on_a_gpu(layers, tmp_path):
    """The memory-mapped file is host memory: asking for it on a GPU is refused before anything is written."""
    cls = [CaptureLayer(layers[0], layers[0].shape)]
    with pytest.raises(ValueError, match="host"):
        FeatureCache(cls, 4, tmp_path / "cache", device="cuda")
    assert not (tmp_path / "cache").exists()
