"""Tests of filterlens.probes (METHOD.md stage 2) on digits with a briefly trained vgg_small.

References: scikit-learn's LogisticRegression on the same cached features, the authors'
optimiser (METHOD.md) run here on the same features, NumPy float64 recomputations of the
accuracies, per-label means and single-filter votes, and a hook that counts the samples the
frozen network really sees.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import said
from filterlens.capture import Capture, FeatureCache, capture_pass
from filterlens.config import Config
from filterlens.loaders import Feed, make_loader
from filterlens.models import list_layers, select_layers
from filterlens.precision import for_inference
from filterlens.probes import ProbeRecipe, ProbeSet, train_probes
from filterlens.train import load_trained, train

EPOCHS_SHORT = 10  # probe epochs of the fast/paper/stream comparisons
N_TRAIN, N_TEST = 1347, 450  # digits' fixed 75/25 split




@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("probes-run")
    cfg = Config(dataset="digits", model="vgg_small", epochs=8, seed=0, progress=False)
    summary = train(cfg, run)
    model, cfg, data, _ = load_trained(run)
    assert summary["test_accuracy"] > 0.9  # a trained backbone, so the probes have something to find
    layers = list_layers(model, (1, 8, 8))
    return model, data, layers


@pytest.fixture(scope="module")
def cached(trained):
    """Every layer's features of train and test, captured here (not by train_probes), in the precision the probes
    capture them (bfloat16 on a CPU with bfloat16 units, else float32; filterlens.precision) and cached as they
    cache them (bfloat16 or float16)."""
    model, data, layers = trained
    prec = for_inference("cpu", True, model)
    dtype = torch.bfloat16 if prec.dtype == torch.bfloat16 else torch.float16
    with Capture(model, layers, precision=prec) as cap:
        tr = FeatureCache(cap.layers, len(data.train), dtype=dtype)
        te = FeatureCache(cap.layers, len(data.test), dtype=dtype)
        capture_pass(cap, make_loader(data, "train", 128), [tr])
        capture_pass(cap, make_loader(data, "test", 128), [te])
        cls = cap.layers
    return cls, tr, te


class _SampleCounter:
    """Counts the samples that pass through a module (how many forward passes were made)."""

    def __init__(self, module: nn.Module):
        self.samples = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, m, i, o):
        self.samples += o.shape[0]

    def remove(self):
        self.handle.remove()


def _run(trained, **settings):
    model, data, layers = trained
    counter = _SampleCounter(model.features[0])
    try:
        cfg = Config(progress=False, seed=0, **settings)
        chosen = select_layers(layers, cfg.layers)
        with said() as lines:
            res = train_probes(model, chosen, Feed(data, seed=cfg.seed), cfg)
    finally:
        counter.remove()
    return res, counter.samples, lines


@pytest.fixture(scope="module")
def fast30(trained):
    return _run(trained)  # the defaults: fast mode, 30 epochs


@pytest.fixture(scope="module")
def fast_short(trained):
    return _run(trained, probe_epochs=EPOCHS_SHORT)


@pytest.fixture(scope="module")
def stream_short(trained):
    return _run(trained, probe_epochs=EPOCHS_SHORT, engine="stream")


def _acc(weight: torch.Tensor, feats: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """Accuracy of the bias-free FC in float64, and how many samples are near a tie."""
    logits = feats.astype(np.float64) @ weight.reshape(weight.shape[0], -1).double().numpy().T
    top2 = np.sort(logits, axis=1)[:, -2:]
    near = int((top2[:, 1] - top2[:, 0] < 1e-4).sum())
    return float((logits.argmax(1) == labels).mean()), near


# ----------------------------------------------------------------------------- recipes


# end_epoch() is called without optimiser steps here, which torch warns about; harmless
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")
def test_paper_recipe_is_the_authors():
    r = ProbeRecipe.paper()
    assert (r.optimizer, r.lr, r.momentum, r.nesterov, r.weight_decay, r.batch_size, r.augment, r.epochs) == \
        ("sgd", 0.01, 0.975, True, 1e-3, 100, True, 200)
    from filterlens.capture import CaptureLayer
    from filterlens.models import Layer

    cl = CaptureLayer(Layer(0, "f", 4, (4, 2, 2)), (4, 2, 2))
    ps = ProbeSet([cl], 10, ProbeRecipe.paper(epochs=5, augment=False))
    fc, opt = ps.fcs["f"], ps.opt
    assert fc.bias is None and tuple(fc.weight.shape) == (10, 16)
    assert isinstance(opt, torch.optim.SGD)
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) == (0.01, 0.975, True, 1e-3)
    for k in range(1, 4):
        ps.end_epoch()
        assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.975**k, rel=1e-12)


def test_subset_trains_one_layer_alone():
    from filterlens.capture import CaptureLayer
    from filterlens.models import Layer

    cls = [CaptureLayer(Layer(i, f"l{i}", 2, (2, 2, 2)), (2, 2, 2)) for i in range(3)]
    ps = ProbeSet(cls, 4, ProbeRecipe.fast(epochs=2), seed=5)
    before = {n: fc.weight.detach().clone() for n, fc in ps.fcs.items()}
    one = ps.subset("l1")
    assert list(one.fcs) == ["l1"] and torch.equal(one.fcs["l1"].weight, before["l1"])
    g = torch.Generator().manual_seed(0)
    one.step("l1", torch.randn(6, 2, 2, 2, generator=g), torch.randint(0, 4, (6,), generator=g))
    assert not torch.equal(one.fcs["l1"].weight, before["l1"])
    for n in ps.fcs:  # the original set is untouched
        assert torch.equal(ps.fcs[n].weight, before[n])
    with pytest.raises(ValueError, match="every layer"):
        ps.step("l1", torch.randn(6, 2, 2, 2), torch.zeros(6, dtype=torch.long))


def test_probe_step_matches_autograd_cross_entropy():
    """The written-out gradient and step equal torch's cross-entropy autograd and optimiser."""
    import torch.nn.functional as F

    from filterlens.capture import CaptureLayer
    from filterlens.models import Layer

    cl = CaptureLayer(Layer(0, "f", 3, (3, 4, 4)), (3, 4, 4))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(37, 3, 4, 4, generator=g), torch.randint(0, 7, (37,), generator=g)
    for recipe in (ProbeRecipe.fast(epochs=2), ProbeRecipe.paper(epochs=2, augment=False)):
        ps = ProbeSet([cl], 7, recipe, seed=3)
        ref = torch.nn.Linear(48, 7, bias=False)
        ref.weight.data.copy_(ps.fcs["f"].weight)
        opt = type(ps.opt)(ref.parameters(), **{k: v for k, v in ps.opt.defaults.items()
                                                      if k in ("lr", "momentum", "nesterov", "weight_decay")})
        for _ in range(3):
            ps.step("f", x, y)
            loss = F.cross_entropy(ref(x.reshape(37, -1)), y)
            opt.zero_grad()
            loss.backward()
            torch.testing.assert_close(ps.fcs["f"].weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-7)
            opt.step()
            torch.testing.assert_close(ps.fcs["f"].weight, ref.weight, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")
def test_fast_recipe_is_as_documented():
    r = ProbeRecipe.fast()
    assert (r.optimizer, r.lr, r.epochs, r.batch_size, r.weight_decay, r.augment) == ("adam", 1e-2, 30, 100, 0.0, False)
    from filterlens.capture import CaptureLayer
    from filterlens.models import Layer

    ps = ProbeSet([CaptureLayer(Layer(0, "f", 4, (4, 2, 2)), (4, 2, 2))], 10, ProbeRecipe.fast(epochs=8))
    assert isinstance(ps.opt, torch.optim.Adam) and ps.fcs["f"].bias is None
    for k in range(1, 9):  # cosine decay to 0 over the epochs
        ps.end_epoch()
        assert ps.opt.param_groups[0]["lr"] == pytest.approx(1e-2 * (1 + math.cos(math.pi * k / 8)) / 2,
                                                                 abs=1e-12)


# ----------------------------------------------------------------------------- accuracy references


def test_last_layer_agrees_with_sklearn(fast30, cached):
    from sklearn.linear_model import LogisticRegression

    res = fast30[0]
    cls, tr, te = cached
    name = cls[-1].name
    assert res.layers[-1].name == name
    xtr = tr.features[name].float().numpy()
    xte = te.features[name].float().numpy()
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    with threadpool_limits(1):  # oversubscribed BLAS threads make lbfgs ~50x slower on a busy machine
        lr = LogisticRegression(max_iter=2000).fit(xtr, tr.labels.numpy())
    sk = lr.score(xte, te.labels.numpy())
    ours = res.layers[-1].accuracy
    assert sk > 0.9
    assert abs(ours - sk) <= 0.015, (ours, sk)


def _paper_optimiser(cls, tr, te, names, epochs: int, seed: int = 0) -> dict[str, float]:
    """The authors' optimiser (no augmentation) trained here on the cached features."""
    chosen = [cl for cl in cls if cl.name in names]
    ps = ProbeSet(chosen, 10, ProbeRecipe.paper(epochs=epochs, augment=False), seed=seed)
    gen = torch.Generator().manual_seed(seed + 12345)
    n = len(tr.labels)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, 100):
            idx = perm[s : s + 100]
            ps.step_all({cl.name: tr.features[cl.name][idx].float() for cl in chosen}, tr.labels[idx])
        ps.end_epoch()
    out = {}
    for cl in chosen:
        acc, _ = _acc(ps.weight(cl.name), te.features[cl.name].float().numpy(), te.labels.numpy())
        out[cl.name] = acc
    return out


def test_fast_reaches_paper_optimiser_same_epochs(fast_short, cached):
    res = fast_short[0]
    cls, tr, te = cached
    names = [cl.name for cl in cls[-2:]]
    paper = _paper_optimiser(cls, tr, te, names, EPOCHS_SHORT)
    fast = {r.name: r.accuracy for r in res.layers if r.name in names}
    print(f"{EPOCHS_SHORT} epochs: fast {fast}; paper optimiser {paper}")
    for n in names:
        assert fast[n] >= paper[n] - 0.005, (n, fast[n], paper[n])


def test_paper_optimiser_reference_learns(cached):
    # the reference used above is itself a working probe (guards the comparison)
    cls, tr, te = cached
    paper = _paper_optimiser(cls, tr, te, [cls[-1].name], 3)
    assert paper[cls[-1].name] > 0.9


# ----------------------------------------------------------------------------- engines


def test_cache_engine_one_pass(fast_short):
    res, samples, lines = fast_short
    assert res.mode == "fast" and res.engine == "memory" and res.forward_passes == 1
    assert res.recipe.epochs == EPOCHS_SHORT and not res.recipe.augment
    # the frozen network saw every sample exactly once, whatever the number of layers and epochs
    assert samples == N_TRAIN + N_TEST
    assert not any("stream" in l for l in lines)


def test_stream_engine_when_over_budget(stream_short, fast_short):
    res, samples, lines = stream_short
    assert res.mode == "fast" and res.engine == "stream"
    assert res.forward_passes == EPOCHS_SHORT + 1
    # one pass of the train split per epoch for ALL layers together, plus one test pass
    assert samples == EPOCHS_SHORT * N_TRAIN + N_TEST
    assert any("stream" in l for l in lines), lines  # says so
    assert "stream" in res.note
    cache = {r.name: r.accuracy for r in fast_short[0].layers}
    stream = {r.name: r.accuracy for r in res.layers}
    assert cache.keys() == stream.keys() and len(stream) == 6
    for n in cache:
        assert abs(cache[n] - stream[n]) <= 0.02, (n, cache[n], stream[n])
        assert stream[n] > 0.85


def test_paper_mode_streams_one_pass_per_epoch(trained):
    res, samples, lines = _run(trained, probe_mode="paper", probe_epochs=2, layers="last:2")
    assert res.mode == "paper" and res.engine == "stream"
    r = res.recipe
    assert (r.optimizer, r.lr, r.momentum, r.nesterov, r.weight_decay, r.batch_size, r.augment, r.epochs) == \
        ("sgd", 0.01, 0.975, True, 1e-3, 100, True, 2)
    assert res.forward_passes == 3
    assert samples == 2 * N_TRAIN + N_TEST  # never one pass per layer
    assert [l.name for l in res.layers] == ["features.4", "features.5"]
    assert all(l.accuracy > 0.5 for l in res.layers)


# ----------------------------------------------------------------------------- outputs


def test_result_shapes_and_label_counts(fast30, trained):
    res = fast30[0]
    _, data, layers = trained
    assert [r.name for r in res.layers] == [l.name for l in layers]
    for r, l in zip(res.layers, layers):
        assert tuple(r.weight.shape) == (10, *l.shape)
        assert tuple(r.label_means.shape) == (10, *l.shape)
        assert tuple(r.votes.shape) == (l.units, 10)
        assert r.units == l.units and r.features == l.features and tuple(r.shape) == l.shape
    np.testing.assert_array_equal(res.label_counts.numpy(), np.bincount(data.test.labels.numpy(), minlength=10))
    assert [row["layer"] for row in res.table()] == [l.name for l in layers]


def test_weights_reproduce_the_reported_accuracies(fast30, cached):
    # the saved (L, C, H, W) weight is laid out like the features: it gives back the accuracy
    res = fast30[0]
    _, tr, te = cached
    for r in res.layers:
        acc, near = _acc(r.weight, te.features[r.name].float().numpy(), te.labels.numpy())
        assert abs(acc - r.accuracy) <= near / N_TEST + 1e-12, (r.name, acc, r.accuracy)
        tacc, tnear = _acc(r.weight, tr.features[r.name].float().numpy(), tr.labels.numpy())
        assert r.train_accuracy is not None
        assert abs(tacc - r.train_accuracy) <= tnear / N_TRAIN + 1e-12
        assert r.accuracy > 0.9


def test_label_means_equal_numpy(fast30, trained):
    res = fast30[0]
    model, data, layers = trained
    labels = data.test.labels.numpy()
    x = data.test.normalise(data.test.images)
    model.eval()
    prec = for_inference("cpu", True, model)  # the maps as the capture computes them (bfloat16 where it can)
    with torch.no_grad(), prec.running(model), prec.autocast():
        for k, r in enumerate(res.layers):
            maps = nn.Sequential(*list(model.features)[: k + 1])(prec.batch(x)).double().numpy()
            expect = np.stack([maps[labels == i].mean(axis=0) for i in range(10)])
            np.testing.assert_allclose(r.label_means.numpy(), expect, rtol=1e-6, atol=1e-6)


def test_votes_equal_direct_count(fast30, cached):
    res = fast30[0]
    _, _, te = cached
    labels = te.labels.numpy()
    for r in res.layers:
        C, H, W = r.shape
        A = te.features[r.name].float().numpy().astype(np.float64).reshape(-1, C, H * W)
        Wt = r.weight.double().numpy().reshape(10, C, H * W)
        fields = np.einsum("ncs,jcs->ncj", A, Wt)  # h_{c,j}(x_n), float64
        winner = fields.argmax(axis=2)  # (N, C), first maximum on ties like torch
        expect = np.zeros((C, 10), dtype=np.int64)
        for c in range(C):
            expect[c] = np.bincount(winner[:, c], minlength=10)
        # float32 vs float64 may only disagree where the two best fields (nearly) tie; an all-zero
        # field row (a silent filter) is an exact tie in both and goes to unit 0 in both
        top2 = np.sort(fields, axis=2)[:, :, -2:]
        zero = np.all(fields == 0, axis=2)
        near = int((((top2[..., 1] - top2[..., 0]) < 1e-6 * (1 + np.abs(top2[..., 1]))) & ~zero).sum())
        got = r.votes.numpy()
        assert got.sum() == C * len(labels)
        assert np.all(got.sum(axis=1) == len(labels))
        assert np.abs(got - expect).sum() <= 2 * near, (r.name, np.abs(got - expect).sum(), near)


def test_the_probe_update_is_one_fused_kernel_on_the_cpu():
    """The probes' Adam and SGD run torch's fused update on the CPU (issue 28: 2.4x and 1.8x faster per step on a
    1,000 x 6,400 probe, benchmarks/probe_step.py); the step itself is checked against torch's reference optimiser
    above (test_probe_step_matches_autograd_cross_entropy), and the kind is recorded in probes.json."""
    from filterlens.capture import CaptureLayer
    from filterlens.models import Layer
    from filterlens.probes import optimiser_kernel

    cl = CaptureLayer(Layer(0, "f", 3, (3, 4, 4)), (3, 4, 4))
    for recipe in (ProbeRecipe.fast(epochs=1), ProbeRecipe.paper(epochs=1, augment=False)):
        opt = ProbeSet([cl], 7, recipe).opt
        assert opt.defaults["fused"] is True and not opt.defaults["foreach"]
    assert optimiser_kernel("cpu") == "fused" and optimiser_kernel("meta") == "foreach"


def test_bfloat16_step_of_several_layers_matches_autograd():
    """bfloat16 features (column views of one batch, as train_from_cache feeds them) take the bfloat16 products:
    every layer's gradient is its own cross-entropy gradient (autograd in float64 on the same bfloat16 values and
    the weights rounded to bfloat16, as the products see them) within the bfloat16 roundings of the product
    (twice the worst case of one rounding of each term and one of the sum), and each layer's optimiser state
    follows its own gradient."""
    import torch.nn.functional as F

    from filterlens.capture import CaptureLayer
    from filterlens.models import Layer

    shapes = {"a": (3, 4, 4), "b": (5, 2, 2), "c": (7, 1, 1)}
    cls = [CaptureLayer(Layer(i, n, s[0], s), s) for i, (n, s) in enumerate(shapes.items())]
    widths = [math.prod(s) for s in shapes.values()]
    g = torch.Generator().manual_seed(4)
    batch = torch.randn(29, sum(widths), generator=g).relu().to(torch.bfloat16)
    y = torch.randint(0, 6, (29,), generator=g)
    feats, a = {}, 0
    for cl, w in zip(cls, widths):
        feats[cl.name] = batch[:, a:a + w]
        a += w
    ps = ProbeSet(cls, 6, ProbeRecipe.fast(epochs=2), seed=5)
    for _ in range(2):
        before = {n: fc.weight.detach().clone() for n, fc in ps.fcs.items()}
        ps.step_all(feats, y)
        for name, x in feats.items():
            w = before[name].to(torch.bfloat16).double().requires_grad_()
            logits = x.double() @ w.T
            F.cross_entropy(logits, y).backward()
            # each term p_i x_i rounds once to bfloat16 (p) and the sum once more: at most 2^-8 of sum |p_i x_i|
            p = (torch.softmax(logits.detach(), 1) - F.one_hot(y, 6)) / len(y)
            bound = 2.0**-7 * (p.abs().T @ x.double().abs())
            assert ((ps.fcs[name].weight.grad.double() - w.grad).abs() <= bound).all(), name
            state = ps.opt.state[ps.fcs[name].weight]
            assert torch.equal(state["exp_avg_sq"] > 0, ps.fcs[name].weight.grad != 0)
            assert not torch.equal(ps.fcs[name].weight, before[name])
