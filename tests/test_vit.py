"""Vision transformers: attention heads as units (issue 17), with random weights.

The captured per-head outputs, concatenated and projected by the module's own output projection,
equal the attention module's output (torchvision's nn.MultiheadAttention, computed inside the hook;
timm's and filterlens' Attention, the input of ``attn.proj``); heads' matrices equal brute-force
silencing to 1e-5; the tokens option; no hook is left behind after a raising module; AFCC's head
removal gives the masked network's outputs, and is refused for packed nn.MultiheadAttention.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import LABELS, SIZE, assert_user_error, brute_force_matrices, run_cli, synthetic_data
from filterlens import afcc
from filterlens.analysis import analyze
from filterlens.capture import Capture, num_hooks
from filterlens.config import Config
from filterlens.errors import FilterlensError
from filterlens.models import ModelSpec, build_model, list_layers
from filterlens.models.units import mha_heads

MODELS = ["vit_b_16", "vit_tiny_cifar", "timm:vit_tiny_patch16_224", "timm:deit_tiny_patch16_224"]


def _model(name, size=SIZE):
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    torch.manual_seed(0)
    return build_model(ModelSpec(name, LABELS, 3, size)).eval()


def test_torchvision_heads_projected_by_out_proj_give_the_module_output():
    model = _model("vit_b_16")
    mha = model.encoder.layers.encoder_layer_3.self_attention
    box = {}
    handle = mha.register_forward_hook(lambda m, i, o: box.update(heads=mha_heads(m, *i[:3]), out=o[0]))
    try:
        with torch.no_grad():
            model(torch.randn(2, 3, SIZE, SIZE))
    finally:
        handle.remove()
    h = box["heads"]  # (N, heads, T, d)
    assert h.shape[1] == 12 and h.shape[3] == 64
    concat = h.transpose(1, 2).reshape(h.shape[0], h.shape[2], -1)
    torch.testing.assert_close(F.linear(concat, mha.out_proj.weight, mha.out_proj.bias), box["out"], rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("name", ["vit_tiny_cifar", "timm:vit_tiny_patch16_224"])
def test_timm_layout_heads_projected_by_proj_give_the_attention_output(name):
    model = _model(name)
    layers = list_layers(model, (3, SIZE, SIZE))
    layer = layers[2]
    attn = model.get_submodule(layer.hook.rpartition(".")[0])
    box = {}
    handle = attn.register_forward_hook(lambda m, i, o: box.update(out=o))
    try:  # the capture stops at the deepest layer: this one's attention runs to its end
        with Capture(model, [layer, layers[-1]]) as cap:
            heads = cap.forward(torch.randn(2, 3, SIZE, SIZE))[layer.name]  # (N, heads, T, d)
    finally:
        handle.remove()
    concat = heads.transpose(1, 2).reshape(heads.shape[0], heads.shape[2], -1)
    torch.testing.assert_close(attn.proj(concat), box["out"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_heads_matrices_equal_brute_force_silencing(name, monkeypatch):
    # the arithmetic of stage 3 against silencing, to float32 rounding: the network in float32 (a bfloat16 forward
    # pass rounds differently from one batch size to another; test_precision checks bfloat16 against float32)
    monkeypatch.setenv("FILTERLENS_CPU_BF16", "0")
    model = _model(name)
    data = synthetic_data()
    layers = list_layers(model, (3, SIZE, SIZE))
    assert all(l.unit_kind == "head" for l in layers)
    result = analyze(model, data, config=Config(layers="last:2", probe_epochs=1, heatmaps="none", progress=False),
                     device="cpu")
    assert [r["layer"] for r in result.layers] == [l.name for l in layers[-2:]]
    deepest = result.probes.layers[-1]
    assert deepest.shape == layers[-1].shape  # heads x tokens x d_head
    _, brute = brute_force_matrices(model, layers[-1], deepest.weight.double(), data)
    np.testing.assert_allclose(result.sfp[deepest.name].matrices_, brute, rtol=0, atol=1e-5 * np.abs(brute).max())
    assert {r["unit_kind"] for r in result.units} == {"head"}


def test_tokens_option_reads_all_cls_or_mean():
    model = _model("vit_tiny_cifar")
    x = torch.randn(3, 3, SIZE, SIZE)
    got = {}
    for tokens in ("all", "cls", "mean"):
        layer = list_layers(model, (3, SIZE, SIZE), tokens=tokens)[-1]
        with Capture(model, [layer]) as cap:
            got[tokens] = cap.forward(x)[layer.name]
    assert got["all"].shape == (3, 4, 65, 32) and got["cls"].shape == got["mean"].shape == (3, 4, 1, 32)
    torch.testing.assert_close(got["cls"][:, :, 0], got["all"][:, :, 0])
    torch.testing.assert_close(got["mean"][:, :, 0], got["all"].mean(2))


def test_no_hook_left_after_a_raising_attention():
    model = _model("vit_tiny_cifar")
    layer = list_layers(model, (3, SIZE, SIZE))[1]

    def boom(module, inputs):
        raise RuntimeError("boom")

    bad = model.blocks[1].attn.qkv.register_forward_pre_hook(boom)
    before = num_hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with Capture(model, [layer]) as cap:
            cap.forward(torch.randn(1, 3, SIZE, SIZE))
    assert num_hooks(model) == before
    bad.remove()
    assert num_hooks(model) == 0


@pytest.mark.parametrize("name", ["vit_tiny_cifar", "timm:vit_tiny_patch16_224"])
def test_afcc_removes_heads_without_changing_the_outputs(name):
    model = _model(name)
    layer = list_layers(model, (3, SIZE, SIZE))[-1]
    W = torch.randn(LABELS, *layer.shape)
    net = afcc.build_diluted(model, [layer.name], W, (3, SIZE, SIZE))
    clusters = [[[0, 1]], [], [[2]]] + [[[3]]] * (layer.units - 3)  # head 1 has no cluster
    masks = afcc.make_masks(net, {layer.name: clusters})
    afcc.apply_masks(net, masks)
    pruned, _, info = afcc.prune(net, masks)
    assert info[layer.name]["removed"] == [1]
    attn = pruned.trunk[0].model.get_submodule(layer.hook.rpartition(".")[0])
    assert attn.num_heads == layer.units - 1 and attn.qkv.out_features == 3 * (layer.units - 1) * attn.head_dim
    x = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), net(x), rtol=1e-5, atol=1e-5)
    assert afcc.count_macs(pruned, (3, SIZE, SIZE))["macs"] < afcc.count_macs(net, (3, SIZE, SIZE))["macs"]


def test_head_removal_in_packed_multihead_attention_is_refused():
    model = _model("vit_b_16")
    layer = list_layers(model, (3, SIZE, SIZE))[-1]
    net = afcc.build_diluted(model, [layer.name], torch.randn(LABELS, *layer.shape), (3, SIZE, SIZE))
    masks = afcc.make_masks(net, {layer.name: [[]] + [[[0]]] * 11})
    with pytest.raises(FilterlensError, match="nn.MultiheadAttention"):
        afcc.prune(net, masks)
    # said before any work (issue 24, item 14): AFCC asks prune_support, and reports removal as not supported
    ok, reason = afcc.prune_support(net)
    assert not ok and "nn.MultiheadAttention" in reason


def test_cli_lists_vit_b_16_blocks_and_heads(tmp_path):
    rc, out, err = run_cli("layers", "--model", "vit_b_16", "--dataset", "cifar10", cwd=tmp_path)
    assert rc == 0, err
    rows = [line.split() for line in out.splitlines() if "encoder.layers.encoder_layer_" in line]
    heads = [r for r in rows if r[0] != "-"]
    assert len(heads) == 12 and all(r[2] == "12" and r[3] == "head" for r in heads)
    # issue 30: each block's MLP listed beside it, its 3072 hidden nodes as units (chosen by name or --layers nodes)
    nodes = [r for r in rows if r[0] == "-"]
    assert len(nodes) == 12 and all(r[1].endswith(".mlp") and r[2] == "3072" and r[3] == "node" for r in nodes)
    rc, out, err = run_cli("layers", "--model", "vit_b_16", "--dataset", "digits", cwd=tmp_path)
    assert_user_error(rc, out, err, "16x16 patches", "--image-size 16")
