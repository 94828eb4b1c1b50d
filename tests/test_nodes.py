"""Nodes as units (issue 30): the nodes of fully connected layers (a classifier head's hidden layers) and of
transformer MLPs, with random or planted weights.

The captured nodes equal the modules' own activations (read by plain hooks here, not by filterlens' reader);
each node's matrix equals brute force: the network run with every other node of the layer silenced, the probe's
per-label outputs averaged by input label (P = 1 and P = T); discovery names the node layers of torchvision's
VGG, filterlens' VGG with FC layers and the ViT families; AFCC between two FC layers masks the Linear joining
them by the clusters' label sets, retrains and removes nodes physically with the same outputs; AFCC on a planted
MLP keeps the accuracy within claim 6's loss and beats its random control.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import LABELS, SIZE, run_cli, synthetic_data
from filterlens import afcc
from filterlens.analysis import analyze
from filterlens.capture import Capture
from filterlens.claims import AFCC_MAX_LOSS, HOLDS, depth_claims
from filterlens.config import Config
from filterlens.errors import FilterlensError
from filterlens.models import ModelSpec, build_model, list_layers, resolve_layers
from filterlens.models.nodes import node_links
from filterlens.models.vit_tiny import TinyViT

FC_CFG = "8,M,16,M,F32,F24"  # filterlens' VGG with two hidden FC layers of 32 and 24 nodes


def _vgg_fc(size=SIZE):
    torch.manual_seed(0)
    return build_model(ModelSpec("vgg", LABELS, 3, size, 1.0, FC_CFG)).eval()


def _small_vit(size=16, labels=LABELS, channels=3, width=32, depth=2):
    torch.manual_seed(0)
    return TinyViT(size, labels, channels, patch=4, depth=depth, heads=2, width=width, mlp_ratio=2).eval()


def _quiet(*args, **kwargs):
    pass


# ------------------------------------------------------------------------------ discovery and reading

@pytest.fixture(scope="module")
def tv_vgg11():
    import torchvision

    torch.manual_seed(0)  # random weights (PyTorch's default initialisation: torchvision's own takes seconds)
    return torchvision.models.vgg11(num_classes=LABELS, init_weights=False).eval()


def test_torchvision_vgg11_classifier_hidden_layers_are_node_layers(tv_vgg11):
    layers = resolve_layers(tv_vgg11, (3, SIZE, SIZE), "all,nodes")
    nodes = [l for l in layers if l.unit_kind == "node"]
    assert [(l.name, l.units, l.shape, l.layout) for l in nodes] == [
        ("classifier.1", 4096, (4096, 1, 1), "nodes"), ("classifier.4", 4096, (4096, 1, 1), "nodes")]
    assert [l.unit_kind for l in layers[:-2]] == ["filter"] * 8  # the 8 convs, then the FC layers (forward order)
    # the default selection and indices keep meaning the blocks; nodes are asked for
    assert all(l.unit_kind == "filter" for l in resolve_layers(tv_vgg11, (3, SIZE, SIZE), "all"))
    assert resolve_layers(tv_vgg11, (3, SIZE, SIZE), "-1")[0].name == "features.20"
    assert [l.name for l in resolve_layers(tv_vgg11, (3, SIZE, SIZE), "nodes")] == ["classifier.1", "classifier.4"]
    links = node_links(tv_vgg11, "classifier.4", "nodes", 4096)
    assert (links.producer, links.consumer) == ("classifier.3", "classifier.6")


def test_vit_families_name_each_mlp_as_a_node_layer():
    cases = {"vit_tiny_cifar": ("blocks.3.mlp", "blocks.3.mlp.2", 256, "blocks.3.mlp.0"),
             "vit_b_16": ("encoder.layers.encoder_layer_3.mlp", "encoder.layers.encoder_layer_3.mlp.3", 3072,
                          "encoder.layers.encoder_layer_3.mlp.0")}
    try:
        import timm  # noqa: F401

        cases["timm:vit_tiny_patch16_224"] = ("blocks.3.mlp", "blocks.3.mlp.fc2", 768, "blocks.3.mlp.fc1")
    except ImportError:
        pass
    for name, (layer, hook, nodes, producer) in cases.items():
        torch.manual_seed(0)
        model = build_model(ModelSpec(name, LABELS, 3, SIZE)).eval()
        got = {l.name: l for l in list_layers(model, (3, SIZE, SIZE), nodes=True)}
        l = got[layer]
        tokens = (SIZE // (4 if name == "vit_tiny_cifar" else 16)) ** 2 + 1
        assert (l.unit_kind, l.layout, l.hook, l.shape) == ("node", "nodes:in", hook, (nodes, tokens, 1)), name
        assert sum(k.unit_kind == "node" for k in got.values()) == sum(k.unit_kind == "head" for k in got.values())
        assert node_links(model, hook, "nodes:in", nodes).producer == producer


def test_filterlens_vgg_with_fc_layers_and_their_errors():
    model = _vgg_fc()
    nodes = [l for l in list_layers(model, (3, SIZE, SIZE), nodes=True) if l.unit_kind == "node"]
    assert [(l.name, l.units) for l in nodes] == [("classifier.1", 32), ("classifier.4", 24)]
    assert [type(m).__name__ for m in model.classifier] == ["Linear", "ReLU", "Dropout"] * 2 + ["Linear"]
    wide = build_model(ModelSpec("vgg16_fc", LABELS, 1, 28, 0.25))
    assert [m.out_features for m in wide.classifier if isinstance(m, nn.Linear)] == [128, 128, LABELS]
    for bad, needle in (("8,M,F32,16", "after a hidden FC layer"), ("F32", "no conv layer"), ("8,Fx", "'Fx'")):
        with pytest.raises(FilterlensError, match=needle):
            build_model(ModelSpec("vgg", LABELS, 3, SIZE, 1.0, bad))


def test_captured_nodes_are_the_modules_own_activations():
    vgg, vit = _vgg_fc(), _small_vit()
    box = {}
    hooks = [vgg.classifier[1].register_forward_hook(lambda m, i, o: box.update(fc=o.clone())),
             vit.blocks[1].mlp[1].register_forward_hook(lambda m, i, o: box.update(mlp=o.clone()))]
    try:
        x = torch.randn(3, 3, SIZE, SIZE)
        with torch.no_grad():
            vgg(x)
            vit(x[:, :, :16, :16])
        layer = resolve_layers(vgg, (3, SIZE, SIZE), "classifier.1")[0]
        with Capture(vgg, [layer]) as cap:
            got = cap.forward(x)[layer.name]
        torch.testing.assert_close(got, box["fc"][:, :, None, None])  # (N, F) -> (N, F, 1, 1)
        for tokens in ("all", "cls", "mean"):
            layer = resolve_layers(vit, (3, 16, 16), "blocks.1.mlp", tokens=tokens)[0]
            with Capture(vit, [layer]) as cap:
                got = cap.forward(x[:, :, :16, :16])[layer.name]
            want = {"all": box["mlp"], "cls": box["mlp"][:, :1], "mean": box["mlp"].mean(1, keepdim=True)}[tokens]
            torch.testing.assert_close(got, want.transpose(1, 2)[..., None], rtol=1e-5, atol=1e-6)
    finally:
        for h in hooks:
            h.remove()


# ------------------------------------------------------------------------------ the matrices by brute force

def _silenced_matrices(model, module, weight, data, tokens="all"):
    """Each node's matrix by brute force: the network run with every other node of the layer silenced (zeroed at
    ``module``'s output, which the rest of the forward pass then reads), the probe's outputs on that silenced
    activation, averaged by input label. ``weight``: the probe (L, F, P, 1); the activation, (N, F) or (N, T, F),
    is read here as the module gives it, without filterlens' reader."""
    L, F = weight.shape[0], weight.shape[1]
    x = data.test.resize(data.test.normalise(data.test.images))
    y = data.test.labels
    out = np.zeros((F, L, L))
    for u in range(F):
        keep = torch.zeros(F)
        keep[u] = 1.0
        box = {}

        def silence(m, i, o):
            box["a"] = o * keep  # every node but u silenced; returned, so the network goes on with it
            return box["a"]

        h = module.register_forward_hook(silence)
        try:
            with torch.no_grad():
                model(x)
        finally:
            h.remove()
        a = box["a"].double()
        if a.ndim == 2:
            logits = a @ weight.reshape(L, F).T
        else:  # (N, T, F) with the probe's positions: every token, the first, or their mean
            a = {"all": a, "cls": a[:, :1], "mean": a.mean(1, keepdim=True)}[tokens]
            logits = torch.einsum("ntf,jft->nj", a, weight[..., 0])
        for i in range(L):
            out[u, i] = logits[y == i].mean(0).numpy()
    return out


def test_fc_node_matrices_equal_silencing_the_other_nodes(monkeypatch):
    monkeypatch.setenv("FILTERLENS_CPU_BF16", "0")  # stage 3's arithmetic against float32 brute force
    model, data = _vgg_fc(), synthetic_data()
    result = analyze(model, data, config=Config(layers="classifier.4", probe_epochs=1, heatmaps="none",
                                                progress=False), device="cpu")
    r = result.probes.layers[0]
    assert (r.name, r.unit_kind, tuple(r.weight.shape)) == ("classifier.4", "node", (LABELS, 24, 1, 1))
    brute = _silenced_matrices(model, model.classifier[4], r.weight.double(), data)
    np.testing.assert_allclose(result.sfp["classifier.4"].matrices_, brute, rtol=0, atol=1e-6 * np.abs(brute).max())
    assert {f["unit_kind"] for f in result.units} == {"node"} and len(result.units) == 24


@pytest.mark.parametrize("tokens", ["all", "mean"])
def test_mlp_node_matrices_equal_silencing_the_other_nodes(tokens, monkeypatch):
    monkeypatch.setenv("FILTERLENS_CPU_BF16", "0")
    model, data = _small_vit(), synthetic_data(size=16)
    result = analyze(model, data, config=Config(layers="blocks.1.mlp", tokens=tokens, probe_epochs=1,
                                                heatmaps="none", progress=False), device="cpu")
    r = result.probes.layers[0]
    assert tuple(r.weight.shape) == (LABELS, 64, 17 if tokens == "all" else 1, 1)  # P = T tokens, or 1
    brute = _silenced_matrices(model, model.blocks[1].mlp[1], r.weight.double(), data, tokens)
    np.testing.assert_allclose(result.sfp["blocks.1.mlp"].matrices_, brute, rtol=0, atol=1e-6 * np.abs(brute).max())


# ------------------------------------------------------------------------------ AFCC

def _label_sets(clusters):
    return [set(j for c in unit for j in c) for unit in clusters]


def test_afcc_between_fc_layers_masks_the_linear_joining_them_and_removes_nodes(tmp_path):
    model = _vgg_fc(16)
    names = ["classifier.1", "classifier.4"]
    layers = resolve_layers(model, (3, 16, 16), ",".join(names))
    net = afcc.build_diluted(model, names, torch.randn(LABELS, 24, 1, 1), (3, 16, 16),
                             spec=ModelSpec("vgg", LABELS, 3, 16, 1.0, FC_CFG))
    g = torch.Generator().manual_seed(3)
    clusters = {l.name: [[[int(j)] for j in torch.randperm(LABELS, generator=g)[:int(k)]]
                         for k in torch.randint(0, 3, (l.units,), generator=g)] for l in layers}
    masks = afcc.make_masks(net, clusters)
    assert [(m.kind, m.param, m.prev) for m in masks] == [
        ("linear", "trunk.0.model.classifier.3.weight", "classifier.1"), ("fc", "fc.weight", None)]
    prev, cur = _label_sets(clusters["classifier.1"]), _label_sets(clusters["classifier.4"])
    by_hand = torch.tensor([[bool(cur[c] & prev[p]) for p in range(32)] for c in range(24)])
    assert torch.equal(masks[0].mask[:, :, 0, 0], by_hand)  # node c' of l-1 -> node c of l: shared labels
    afcc.apply_masks(net, masks)
    lin = net.trunk[0].model.classifier[3]
    assert bool((lin.weight[~by_hand] == 0).all()) and bool((lin.weight[by_hand] != 0).all())
    trainable = afcc.trainable_parameters(net, masks)
    assert set(trainable) == {"fc.weight", "trunk.0.model.classifier.3.weight", "trunk.0.model.classifier.3.bias"}
    x = torch.randn(40, 3, 16, 16)
    afcc.retrain(net, masks, [(x, torch.arange(40) % LABELS)] * 2, epochs=1, lr=0.1)
    assert bool((lin.weight[~by_hand] == 0).all())  # re-applied after every step
    pruned, pruned_masks, info = afcc.prune(net, masks)
    drop4 = [c for c in range(24) if not cur[c]]
    drop1 = [p for p in range(32) if not by_hand[[c for c in range(24) if c not in drop4]][:, p].any()]
    assert info["classifier.4"]["removed"] == drop4 and info["classifier.1"]["removed"] == drop1
    head = pruned.trunk[0].model.classifier
    assert (head[0].out_features, head[3].in_features, head[3].out_features, head[6].in_features) == (
        32 - len(drop1), 32 - len(drop1), 24 - len(drop4), 24 - len(drop4))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), net(x), rtol=1e-5, atol=1e-6)
    afcc.save(tmp_path / "p.pt", pruned, pruned_masks)
    back = afcc.load(tmp_path / "p.pt")
    with torch.no_grad():
        torch.testing.assert_close(back(x), pruned(x))


def test_mlp_node_removal_keeps_the_outputs_and_shrinks_both_linears():
    model = _small_vit()
    layer = resolve_layers(model, (3, 16, 16), "blocks.1.mlp")[0]
    net = afcc.build_diluted(model, [layer.name], torch.randn(LABELS, *layer.shape), (3, 16, 16))
    clusters = [[[u % LABELS]] if u % 3 else [] for u in range(layer.units)]
    masks = afcc.make_masks(net, {layer.name: clusters})
    afcc.apply_masks(net, masks)
    assert afcc.prune_support(net) == (True, "")
    pruned, _, info = afcc.prune(net, masks)
    removed = [u for u in range(64) if u % 3 == 0]
    assert info[layer.name]["removed"] == removed
    mlp = pruned.trunk[0].model.blocks[1].mlp
    assert (mlp[0].out_features, mlp[2].in_features, pruned.fc.in_features) == (64 - 22, 64 - 22, (64 - 22) * 17)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), net(x), rtol=1e-5, atol=1e-5)


def test_node_removal_is_refused_where_a_norm_sits_between_the_linear_and_the_nodes():
    # timm's Mlp with a norm over the hidden nodes: removing a node would change every other node's value
    timm_layers = pytest.importorskip("timm.layers")
    mlp = timm_layers.Mlp(8, 16, norm_layer=nn.LayerNorm)
    assert node_links(mlp, "fc2", "nodes:in", 16).producer is None
    plain = timm_layers.Mlp(8, 16)
    assert (node_links(plain, "fc2", "nodes:in", 16).producer, node_links(plain, "fc2", "nodes:in", 16).consumer) \
        == ("fc1", "fc2")


def _planted_mlp(labels=8):
    """A one-block ViT whose MLP node u fires (on the patch token) for label u mod ``labels`` only: one 4x4 patch, the
    label k image bright at pixel k; the patch embedding copies pixel d to width d, attention adds nothing, fc1
    reads width u mod labels (normalised, about 3.8 for the bright pixel, about -0.3 elsewhere) with weight 2 and
    bias -3: GELU(4.6) for its label, GELU(-3.5) ~ 0 otherwise."""
    model = _small_vit(size=4, labels=labels, channels=1, width=16, depth=1)
    block = model.blocks[0]
    with torch.no_grad():
        model.patch_embed.weight.zero_()
        for d in range(16):
            model.patch_embed.weight[d, 0, d // 4, d % 4] = 1.0
        model.patch_embed.bias.zero_()
        model.pos_embed.zero_()
        model.cls_token.zero_()
        block.attn.proj.weight.zero_()
        block.attn.proj.bias.zero_()
        block.mlp[0].weight.zero_()
        for u in range(block.mlp[0].out_features):
            block.mlp[0].weight[u, u % labels] = 2.0
        block.mlp[0].bias.fill_(-3.0)
    g = torch.Generator().manual_seed(0)

    def split(n):
        y = torch.arange(n) % labels
        x = 0.1 * torch.randn(n, 1, 4, 4, generator=g)
        x[torch.arange(n), 0, y // 4, y % 4] += 1.0
        return x, y

    return model, split(400), split(200)


def test_afcc_on_a_planted_mlp_keeps_the_accuracy_and_beats_its_random_control():
    model, train, test = _planted_mlp()
    result = analyze(model, train, test, config=Config(layers="all,nodes", probe_epochs=10, heatmaps="none",
                                                       progress=False), device="cpu")
    assert [(r["layer"], r["unit_kind"]) for r in result.layers] == [("blocks.0", "head"), ("blocks.0.mlp", "node")]
    clusters = result.sfp["blocks.0.mlp"].clusters_
    assert [sorted(j for c in unit for j in c) for unit in clusters] == [[u % 8] for u in range(32)]  # as planted
    out = afcc.apply(model, result, afcc_layers="blocks.0.mlp", retrain_epochs=2, random_draws=3,
                     afcc_thresholds="0.3", seed=0, progress=False)
    a = out.accuracy
    assert a["before"] >= 0.98
    assert a["before"] - a["retrained"] <= AFCC_MAX_LOSS  # claim 6's "without affecting accuracy"
    assert a["retrained"] > max(a["random_retrained_draws"]) + 0.2  # every random draw well below
    assert out.dilution_total == pytest.approx(7 / 8)
    assert out.claims[0]["verdict"] == HOLDS
    assert out.pruned["supported"] and out.pruned["filters"]["blocks.0.mlp"]["removed"] == []  # every node kept


def test_consecutive_mlps_are_not_joined_by_one_linear():
    model = _small_vit()
    names = ["blocks.0.mlp", "blocks.1", "blocks.1.mlp"]
    net = afcc.build_diluted(model, names, torch.randn(LABELS, 64, 17, 1), (3, 16, 16))
    with pytest.raises(FilterlensError, match="conv masks between 'blocks.0.mlp' and 'blocks.1'"):
        afcc.make_masks(net, {n: [[]] * 64 for n in names})


# ------------------------------------------------------------------------------ claims per unit kind

def test_depth_claims_are_per_unit_kind():
    rng = np.random.default_rng(0)
    kinds = ["head", "node"] * 5  # a ViT's blocks: heads, then the MLP's nodes, block after block
    acc = [0.1 * i if k == "head" else 1.0 - 0.1 * i for i, k in enumerate(kinds)]  # heads rise, nodes fall
    rows = [{"layer": f"l{i}", "unit_kind": k, "accuracy": a} for i, (k, a) in enumerate(zip(kinds, acc))]
    reps = {"accuracy": np.array(acc)[None, :] + rng.normal(0, 0.01, (200, 10))}
    got = {(r["unit_kind"], r["metric"]): r for r in depth_claims(rows, reps)}
    assert got[("head", "accuracy")]["value"] == pytest.approx(1.0) and got[("head", "accuracy")]["n"] == 5
    assert got[("head", "accuracy")]["verdict"] == HOLDS
    assert got[("node", "accuracy")]["value"] == pytest.approx(-1.0) and got[("node", "accuracy")]["verdict"] == \
        "does not hold"
    # over all ten layers in depth order the two trends would mix into one (rank correlation near 0)
    mixed = depth_claims([{**r, "unit_kind": "filter"} for r in rows], reps)
    assert abs(mixed[0]["value"]) < 0.5


def test_analyze_torchvision_vgg11_analyses_its_classifier_hidden_layers(tv_vgg11):
    result = analyze(tv_vgg11, synthetic_data(n_train=60, n_test=40), layers="-1,nodes", probe_epochs=1,
                     heatmaps="none", progress=False, device="cpu")
    assert [(r["layer"], r["unit_kind"], r["units"]) for r in result.layers] == [
        ("features.20", "filter", 512), ("classifier.1", "node", 4096), ("classifier.4", "node", 4096)]
    assert sum(f["unit_kind"] == "node" for f in result.units) == 2 * 4096
    assert {c.get("unit_kind") for c in result.claims} == {"filter", "node"}  # claims 1-3 per kind


# ------------------------------------------------------------------------------ the command line

def test_cli_layers_and_bad_node_selections(capsys):
    from filterlens.cli import main

    assert main(["layers", "--model", "vgg", "--vgg-cfg", FC_CFG, "--dataset", "digits"]) == 0
    rows = {line.split()[1]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.strip().startswith("-")}
    assert rows["classifier.1"][:4] == ["-", "classifier.1", "32", "node"]
    assert rows["classifier.4"][:4] == ["-", "classifier.4", "24", "node"]
    for argv, needles in (
            (["--model", "vgg_tiny", "--layers", "nodes"], ("no node layer", "dotted path")),
            (["--model", "vit_tiny_cifar", "--image-size", "16", "--layers", "blocks.0.attn.qkv,blocks.0.mlpx"],
             ("unknown layer 'blocks.0.mlpx'", "did you mean 'blocks.0.mlp'"))):
        assert main(["layers", "--dataset", "digits", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(n in err for n in needles), err


@pytest.mark.slow
def test_cli_analyze_torchvision_vgg11_lists_and_analyses_its_fc_layers(tmp_path):
    import csv

    run = tmp_path / "run"
    rc, out, err = run_cli("train", "--dataset", "digits", "--model", "vgg11_bn", "--image-size", "32", "--epochs",
                           "0", "--train-samples", "200", "--test-samples", "100", "--seed", "0", "--no-progress",
                           "--run-dir", run, cwd=tmp_path)
    assert rc == 0, err
    rc, out, err = run_cli("analyze", "--run-dir", run, "--layers", "all,nodes", "--probe-epochs", "1",
                           "--heatmaps", "none", "--no-progress", cwd=tmp_path)
    assert rc == 0, err
    printed = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("classifier.")}
    assert printed["classifier.1"][1:3] == ["node", "4096"] and printed["classifier.4"][1:3] == ["node", "4096"]
    with open(run / "layers.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["unit_kind"] for r in rows] == ["filter"] * 8 + ["node"] * 2
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    rc, out, err = run_cli("report", run, cwd=tmp_path)
    assert rc == 0, err
    html = (run / "report.html").read_text()
    assert '"name":"classifier.4","kind":"node"' in html  # the explorer shows the nodes as units


@pytest.mark.slow
def test_cli_run_vit_tiny_heads_and_mlp_nodes_end_to_end(tmp_path):
    import json

    toml = tmp_path / "vit.toml"
    toml.write_text('[data]\ndataset = "digits"\nimage_size = 16\ntrain_samples = 400\n[model]\n'
                    'model = "vit_tiny_cifar"\n[train]\nepochs = 1\nseed = 0\n[probes]\nlayers = "all,nodes"\n'
                    'probe_epochs = 2\n[sfp]\nbootstrap = 20\n[afcc]\nafcc = true\nafcc_layers = "blocks.5.mlp"\n'
                    'retrain_epochs = 1\nrandom_draws = 2\nafcc_thresholds = "0.3"\n')
    rc, out, err = run_cli("run", toml, "--run-dir", tmp_path / "run", "--no-progress", cwd=tmp_path)
    assert rc == 0, err
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [r["unit_kind"] for r in res["layers"]] == ["head", "node"] * 6
    depth = [c for c in res["claims"] if c["claim"] in (1, 2, 3)]
    assert [c["unit_kind"] for c in depth] == ["head"] * 5 + ["node"] * 5 and all(c["n"] == 6 for c in depth)
    assert res["afcc"]["layers"] == ["blocks.5.mlp"] and res["afcc_pruned"]["supported"]
    assert "accuracy [node]" in out  # one claims table, the metric labelled with its kind


def test_run_refuses_an_afcc_range_no_conv_or_linear_joins_before_any_work(tmp_path, capsys):
    from filterlens.cli import main

    toml = tmp_path / "fc.toml"
    toml.write_text(f'[data]\ndataset = "digits"\n[model]\nmodel = "vgg"\nvgg_cfg = "{FC_CFG}"\n[train]\nepochs = 1\n'
                    '[probes]\nlayers = "all,nodes"\n[afcc]\nafcc = true\nafcc_layers = "features.1,classifier.1"\n')
    assert main(["run", str(toml), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'features.1' and 'classifier.1' are not both conv layers" in err, err
    assert not (tmp_path / "run" / "train.json").exists()  # refused before training
