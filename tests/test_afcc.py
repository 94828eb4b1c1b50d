"""Stage 5, AFCC (filterlens.afcc): masks, random control, masked retraining, export, physical removal, CLI.

Expected values are derived by hand from METHOD.md stage 5 (FC: filter c keeps unit j iff j is
in one of c's clusters; conv: kernel c' -> c kept iff the label sets intersect) and from the
architecture's sizes, not from the code's output.
"""
from __future__ import annotations

import copy
import csv
import json

import pytest
import torch

from filterlens import afcc
from filterlens.capture import num_hooks
from filterlens.errors import FilterlensError
from filterlens.models import ModelSpec, build_model


def _expand(conn, h, w):
    conn = torch.tensor(conn, dtype=torch.bool)
    return conn[:, :, None, None].expand(*conn.shape, h, w)


# ------------------------------------------------------------------------------ masks

def test_fc_mask_hand_example_and_dilution():
    # 3 filters, 4 labels: filter 0 -> units 0, 1; filter 1 -> none; filter 2 -> units 2, 3
    clusters = [[[0, 1]], [], [[2], [3]]]
    m = afcc.fc_mask(clusters, (4, 3, 1, 1))
    expected = _expand([[1, 0, 0],
                        [1, 0, 0],
                        [0, 0, 1],
                        [0, 0, 1]], 1, 1)
    assert m.dtype == torch.bool and m.shape == (4, 3, 1, 1)
    assert torch.equal(m, expected)
    assert int(m.sum()) == 4 and m.numel() == 12
    assert afcc.dilution(m) == pytest.approx(8 / 12, abs=0)
    # the same at 2x2 positions: every position of a kept (unit, filter) pair is kept
    m2 = afcc.fc_mask(clusters, (4, 3, 2, 2))
    assert torch.equal(m2, _expand([[1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 1]], 2, 2))
    assert int(m2.sum()) == 16 and afcc.dilution(m2) == pytest.approx(32 / 48, abs=0)


def test_conv_mask_intersections_including_empty_sets():
    prev = [[[0, 1]], [], [[2], [3]]]  # label sets {0,1}, {}, {2,3}
    nxt = [[[1]], [[3, 4]], [], [[0], [2]]]  # {1}, {3,4}, {}, {0,2}
    m = afcc.conv_mask(prev, nxt, (4, 3, 3, 3))
    expected = _expand([[1, 0, 0],   # {1} meets {0,1} only
                        [0, 0, 1],   # {3,4} meets {2,3} only
                        [0, 0, 0],   # empty set: every kernel removed
                        [1, 0, 1]],  # {0,2} meets {0,1} and {2,3}
                       3, 3)
    assert torch.equal(m, expected)
    assert int(m.sum()) == 4 * 9 and afcc.dilution(m) == pytest.approx(8 / 12, abs=0)
    # input filter 1 (no cluster) loses all its outgoing kernels
    assert not m[:, 1].any()
    # a layer without any cluster: everything removed
    none = afcc.conv_mask([[], []], [[], [], []], (3, 2, 1, 1))
    assert not none.any() and afcc.dilution(none) == 1.0


def test_mask_shape_errors_are_filterlens_errors():
    with pytest.raises(FilterlensError, match="given for 2 filters"):
        afcc.fc_mask([[[0]], []], (4, 3, 1, 1))
    with pytest.raises(FilterlensError, match="outside 0..3"):
        afcc.fc_mask([[[4]], [], []], (4, 3, 1, 1))
    with pytest.raises(FilterlensError):
        afcc.conv_mask([[[0]]], [[[0]], [[1]]], (3, 1, 3, 3))


def _random_clusters(n_filters, n_labels, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_filters):
        k = int(torch.randint(0, 4, (1,), generator=g))
        labels = torch.randperm(n_labels, generator=g)[:k].tolist()
        out.append([[j] for j in sorted(labels)])
    return out


def test_random_control_keeps_counts_per_filter_and_is_seeded():
    fc = afcc.fc_mask(_random_clusters(20, 10, 0), (10, 20, 2, 2))
    conv = afcc.conv_mask(_random_clusters(12, 10, 1), _random_clusters(20, 10, 2), (20, 12, 3, 3))
    for mask, kind, dim in ((fc, "fc", 0), (conv, "conv", 1)):
        r1 = afcc.random_mask(mask, kind, torch.Generator().manual_seed(5))
        r2 = afcc.random_mask(mask, kind, torch.Generator().manual_seed(5))
        r3 = afcc.random_mask(mask, kind, torch.Generator().manual_seed(6))
        assert r1.shape == mask.shape and r1.dtype == torch.bool
        # same number of kept connections per filter (FC: per column group c; conv: per output filter)
        assert torch.equal(afcc.connections(r1).sum(dim), afcc.connections(mask).sum(dim))
        assert int(r1.sum()) == int(mask.sum())
        # whole kernels / unit-filter blocks, like the AFCC masks
        flat = r1.reshape(r1.shape[0], r1.shape[1], -1)
        assert torch.equal(flat.any(2), flat.all(2))
        assert torch.equal(r1, r2)
        assert not torch.equal(r1, r3)
        assert not torch.equal(r1, mask)


# ------------------------------------------------------------------------------ a small VGG by hand

def _small_vgg(seed=0):
    """vgg '4,M,6,M' on 1x8x8 inputs: features.0 = conv 1->4 (8x8) + pool -> 4x4x4,
    features.1 = conv 4->6 (4x4) + pool -> 6x2x2. BN statistics randomised."""
    torch.manual_seed(seed)
    spec = ModelSpec("vgg", 4, 1, 8, vgg_cfg="4,M,6,M")
    model = build_model(spec)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval(), spec


# features.0: 4 filters with label sets {0}, {1}, {}, {2}
CL0 = [[[0]], [[1]], [], [[2]]]
# features.1: 6 filters with label sets {0}, {}, {1,2}, {}, {2}, {0,1}
CL1 = [[[0]], [], [[1, 2]], [], [[2]], [[0], [1]]]


def _diluted(model, spec, layers=("features.0", "features.1"), seed=1):
    w = torch.randn(4, 6, 2, 2, generator=torch.Generator().manual_seed(seed))
    return afcc.build_diluted(model, list(layers), w, (1, 8, 8), "none", spec)


def test_diluted_net_matches_the_model_and_leaves_it_untouched():
    model, spec = _small_vgg()
    model.train()  # the caller's mode must survive
    before = copy.deepcopy(model.state_dict())
    net = _diluted(model, spec)
    masks = afcc.make_masks(net, {"features.0": CL0, "features.1": CL1})
    afcc.apply_masks(net, masks)
    afcc.retrain(net, masks, [(torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,)))], epochs=1, lr=0.5)
    afcc.prune(net, masks)
    assert model.training
    assert num_hooks(model) == 0
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the unmasked diluted net = the layer's output (the model's features) through the FC
    fresh = _diluted(model, spec)
    x = torch.randn(5, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        ref = model.features(x).flatten(1) @ fresh.fc.weight.T
        assert torch.allclose(fresh(x), ref, atol=1e-6)
    assert fresh.info["mode"] == "prefix"
    assert [m.key for m in masks] == ["conv:features.1", "fc:features.1"]
    assert masks[0].param == "trunk.1.conv.weight" and masks[1].param == "fc.weight"


def test_masks_stay_applied_after_retraining_steps():
    model, spec = _small_vgg()
    net = _diluted(model, spec)
    masks = afcc.make_masks(net, {"features.0": CL0, "features.1": CL1})
    afcc.apply_masks(net, masks)
    frozen = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("trunk.0.")}
    start = {k: v.clone() for k, v in net.named_parameters()}
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(4)]
    hist = afcc.retrain(net, masks, batches, epochs=2, lr=0.2, momentum=0.9, weight_decay=0.05)
    assert len(hist) == 2
    params = dict(net.named_parameters())
    for m in masks:
        w = params[m.param].detach().reshape(m.mask.shape)
        assert (w[~m.mask] == 0.0).all(), f"{m.key}: a masked weight is not exactly zero"
        assert int((~m.mask).sum()) > 0
        # the kept weights did train
        assert not torch.equal(w[m.mask], start[m.param].detach().reshape(m.mask.shape)[m.mask])
    # frozen: the first layer (conv, BN affine and running statistics) and the masked block's BN statistics
    for k, v in frozen.items():
        assert torch.equal(net.state_dict()[k], v), k
    assert not torch.equal(params["trunk.1.bn.weight"], start["trunk.1.bn.weight"])  # BN affine trains
    assert all(p.requires_grad for p in net.parameters())  # the caller's flags are restored


# ------------------------------------------------------------------------------ export

def test_export_then_load_gives_identical_outputs_and_refuses_other_architectures(tmp_path):
    model, spec = _small_vgg()
    net = _diluted(model, spec)
    masks = afcc.make_masks(net, {"features.0": CL0, "features.1": CL1})
    afcc.apply_masks(net, masks)
    path = afcc.save(tmp_path / "m.pt", net, masks, {"config": {"threshold": 0.3}})
    state = torch.load(path, weights_only=True)
    assert state["format"] == "filterlens-afcc" and state["version"] == 1
    assert state["layers"] == ["features.0", "features.1"] and state["pruned"] is None
    assert state["probe_shape"] == [4, 6, 2, 2] and state["pool"] == "none"
    assert state["spec"]["vgg_cfg"] == "4,M,6,M" and state["config"] == {"threshold": 0.3}
    assert "no speed-up" in state["note"]
    w = state["state_dict"]["fc.weight"].reshape(4, 6, 2, 2)
    assert (w[~state["masks"][1]["mask"]] == 0).all()
    loaded = afcc.load(path)  # from the file alone
    assert not loaded.training
    x = torch.randn(7, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert [m.key for m in loaded.afcc_masks] == [m.key for m in masks]
    # the same from a model object of the right architecture
    other_weights, _ = _small_vgg(seed=9)
    with torch.no_grad():
        assert torch.equal(afcc.load(path, model=other_weights)(x), net(x))
    # wrong architectures: other widths, or a model without that layer
    wrong = build_model(ModelSpec("vgg", 4, 1, 8, vgg_cfg="4,M,8,M"))
    with pytest.raises(FilterlensError, match="does not fit this architecture") as exc:
        afcc.load(path, model=wrong)
    assert "\n" not in str(exc.value)
    with pytest.raises(FilterlensError, match="does not fit"):
        afcc.load(path, model=build_model(ModelSpec("vgg_tiny", 4, 1, 8)).features[:1])
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(FilterlensError, match="not a PyTorch file"):
        afcc.load(tmp_path / "junk.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(FilterlensError, match="not a filterlens AFCC file"):
        afcc.load(tmp_path / "other.pt")


# ------------------------------------------------------------------------------ physical removal

def test_pruned_model_same_outputs_fewer_params_and_macs(tmp_path):
    model, spec = _small_vgg()
    net = _diluted(model, spec)
    masks = afcc.make_masks(net, {"features.0": CL0, "features.1": CL1})
    afcc.apply_masks(net, masks)
    pruned, pmasks, info = afcc.prune(net, masks)
    # features.1: filters 1 and 3 have no cluster -> removed (4 of 6 kept);
    # features.0: filter 2 (no cluster) has no kept kernel to features.1 -> removed (3 of 4 kept)
    assert info["features.1"]["removed"] == [1, 3] and info["features.1"]["filters_after"] == 4
    assert info["features.0"]["removed"] == [2] and info["features.0"]["filters_after"] == 3
    assert pruned.trunk[0].conv.weight.shape == (3, 1, 3, 3)
    assert pruned.trunk[1].conv.weight.shape == (4, 3, 3, 3)
    assert pruned.trunk[1].bn.running_mean.shape == (4,)
    assert pruned.fc.weight.shape == (4, 4 * 2 * 2)
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(pruned(x), net(x), atol=1e-5, rtol=0)
    before, after = afcc.count_macs(net, (1, 8, 8)), afcc.count_macs(pruned, (1, 8, 8))
    # by hand: conv0 1->4 3x3 (36) + bn0 (8) + conv1 4->6 (216) + bn1 (12) + FC 4x24 (96)
    assert before["params"] == 36 + 8 + 216 + 12 + 96
    assert after["params"] == 27 + 6 + 108 + 8 + 64
    # MACs: conv0 4 ch x 8x8 x 9; conv1 6 ch x 4x4 x (4x9); FC 24 x 4
    assert before["macs"] == 4 * 64 * 9 + 6 * 16 * 36 + 24 * 4
    assert after["macs"] == 3 * 64 * 9 + 4 * 16 * 27 + 16 * 4
    # the remaining masked zeros are still masked in the pruned net
    for m in pmasks:
        w = dict(pruned.named_parameters())[m.param].detach().reshape(m.mask.shape)
        assert (w[~m.mask] == 0).all()
    # the pruned file loads back into a fresh model
    path = afcc.save(tmp_path / "p.pt", pruned, pmasks)
    with torch.no_grad():
        assert torch.equal(afcc.load(path)(x), pruned(x))
    assert torch.load(path, weights_only=True)["pruned"]["features.0"] == [0, 1, 3]


def test_pruning_fc_only_and_unsupported_architecture():
    model, spec = _small_vgg()
    net = _diluted(model, spec, layers=("features.1",))
    masks = afcc.make_masks(net, {"features.1": CL1})
    assert [m.kind for m in masks] == ["fc"]
    afcc.apply_masks(net, masks)
    pruned, _, info = afcc.prune(net, masks)
    assert info["features.1"]["filters_after"] == 4
    assert pruned.trunk[1].conv.weight.shape == (4, 4, 3, 3)  # input channels untouched
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(pruned(x), net(x), atol=1e-5, rtol=0)
    # a layer that is not a prefix of 'features': hooked trunk; Torch-Pruning removes its dead unit all the same
    tiny = torch.nn.Sequential()
    tiny.add_module("conv", torch.nn.Conv2d(1, 3, 3, padding=1))
    tiny.add_module("act", torch.nn.ReLU())
    hooked = afcc.build_diluted(tiny, ["conv"], torch.randn(2, 3, 8, 8), (1, 8, 8))
    assert hooked.info["mode"] == "hook"
    hm = afcc.make_masks(hooked, {"conv": [[[0]], [], [[1]]]})
    afcc.apply_masks(hooked, hm)
    pruned, _, info = afcc.prune(hooked, hm)
    assert info["conv"]["removed"] == [1] and pruned.fc.weight.shape == (2, 2 * 8 * 8)
    with torch.no_grad():
        assert torch.allclose(pruned(x), hooked(x), atol=1e-5, rtol=0)


class _Residual(torch.nn.Module):
    """relu(x + conv(x)): the block's output channels are also what its own conv reads."""

    def __init__(self, c):
        super().__init__()
        self.conv = torch.nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv(x))


def test_removal_across_a_residual_reader_is_refused_naming_the_reader():
    model = torch.nn.Sequential()
    model.add_module("stem", torch.nn.Conv2d(1, 3, 3, padding=1))
    model.add_module("block", _Residual(3))
    net = afcc.build_diluted(model, ["block"], torch.randn(2, 3, 8, 8), (1, 8, 8))
    masks = afcc.make_masks(net, {"block": [[[0]], [], [[1]]]})
    afcc.apply_masks(net, masks)
    with pytest.raises(FilterlensError, match="also read by .*block.conv"):
        afcc.prune(net, masks)


def test_non_consecutive_layers_are_refused():
    model = build_model(ModelSpec("vgg", 4, 1, 8, vgg_cfg="4,M,6,8,M"))
    with pytest.raises(FilterlensError, match="'features.1' lies between"):
        afcc.build_diluted(model, ["features.0", "features.2"], torch.zeros(4, 8, 2, 2), (1, 8, 8))
    with pytest.raises(FilterlensError, match="unknown layer 'features.7'"):
        afcc.build_diluted(model, ["features.7"], torch.zeros(4, 8, 2, 2), (1, 8, 8))


# ------------------------------------------------------------------------------ a run directory, end to end

@pytest.fixture(scope="module")
def analysed_run(tmp_path_factory):
    from filterlens.analysis import analyze_run
    from filterlens.config import Config
    from filterlens.train import train

    run = tmp_path_factory.mktemp("afcc") / "run"
    cfg = Config(dataset="digits", model="vgg_tiny", epochs=3, seed=0, progress=False, probe_epochs=4)
    train(cfg, run)
    analyze_run(run, overrides={"probe_epochs": 4, "progress": False, "heatmaps": "none"})
    return run


from filterlens.cli import cmd_afcc  # noqa: E402


def _afcc_args(*argv):
    from filterlens.cli import build_parser

    return build_parser().parse_args(["afcc", *map(str, argv)])


def test_cli_run_writes_csv_results_plot_and_loadable_models(analysed_run, capsys):
    before = json.loads((analysed_run / "results.json").read_text())
    rc = cmd_afcc(_afcc_args("--run-dir", analysed_run, "--layers", "last:2", "--retrain-epochs", "1",
                                  "--thresholds", "0.2,0.4", "--random-draws", "2", "--no-progress"))
    assert rc == 0
    printed = capsys.readouterr().out
    assert "AFCC on features.0, features.1" in printed and "physical removal" in printed
    with open(analysed_run / "afcc.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        cols, rows = reader.fieldnames, list(reader)
    for c in ("layer", "kind", "dilution", "kept", "total", "acc_before", "acc_masked", "acc_retrained",
              "acc_random_masked", "acc_random_retrained"):
        assert c in cols
    assert [(r["layer"], r["kind"]) for r in rows] == [("features.1", "conv"), ("features.1", "fc")]
    for r in rows:
        assert float(r["dilution"]) == pytest.approx(1 - int(r["kept"]) / int(r["total"]), abs=1e-6)
    # vgg_tiny on digits: conv features.0 -> features.1 is 16x8x3x3, the FC 10 x 16x2x2
    assert int(rows[0]["total"]) == 16 * 8 * 9 and int(rows[1]["total"]) == 10 * 16 * 4
    after = json.loads((analysed_run / "results.json").read_text())
    assert set(before) <= set(after) and after["layers"] == before["layers"] and after["config"] == before["config"]
    a = after["afcc"]
    assert a["layers"] == ["features.0", "features.1"]
    assert [t["threshold"] for t in a["thresholds"]] == [0.2, 0.3, 0.4]
    draws = a["accuracy"]["random_retrained_draws"]
    assert len(draws) == 2 and a["accuracy"]["random_retrained"] == pytest.approx(sum(draws) / 2, abs=1e-12)
    assert after["afcc_pruned"]["supported"] is True
    for f in ("afcc.png", "afcc_model.pt", "afcc_pruned.pt", "afcc_pruning.csv", "afcc_thresholds.csv"):
        assert (analysed_run / f).stat().st_size > 0, f
    # before masking = the layer's probe (float16 cache there, float32 here: at most a sample or two apart)
    assert a["accuracy"]["before"] == pytest.approx(a["accuracy"]["probe"], abs=2 / 450)
    # the exported models reproduce the reported accuracies on the test set
    from filterlens.loaders import make_loader
    from filterlens.train import load_trained

    _, _, data, _ = load_trained(analysed_run)
    test = make_loader(data, "test", 256)
    # in the precision AFCC recorded for its forward passes (bfloat16 where the CPU has it)
    from filterlens.precision import Precision

    rec = a["retrain"]["precision"]
    masked = afcc.load(analysed_run / "afcc_model.pt")
    prec = Precision(rec["precision"], "cpu", rec["channels_last"])
    assert afcc.accuracy(masked, test, precision=prec) == pytest.approx(a["accuracy"]["retrained"], abs=1e-9)
    pruned = afcc.load(analysed_run / "afcc_pruned.pt")
    assert afcc.accuracy(pruned, test, precision=prec) == pytest.approx(
        after["afcc_pruned"]["accuracy"]["pruned_retrained"], abs=1e-9)


def test_bad_input_is_one_line_naming_the_value(analysed_run, tmp_path):
    cases = [
        (dict(afcc_layers="features.9"), "features.9"),
        (dict(retrain_epochs=-1), "-1"),
        (dict(threshold=1.5), "1.5"),
        (dict(retrain_lr=0.0), "0.0"),
        (dict(afcc_thresholds="0.2,2"), "2"),
        (dict(retrain_batch_size=0), "0"),
        (dict(layers_typo=3), "layers_typo"),
    ]
    for overrides, needle in cases:
        with pytest.raises(FilterlensError) as exc:
            afcc.run_afcc(analysed_run, overrides)
        msg = str(exc.value)
        assert needle in msg and "\n" not in msg, msg
    # a trained but not analysed run
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.pt"):
        (bare / f).write_bytes((analysed_run / f).read_bytes())
    with pytest.raises(FilterlensError, match="filterlens analyze --run-dir"):
        cmd_afcc(_afcc_args("--run-dir", bare))
