"""The arithmetic each stage runs in (filterlens.precision): bfloat16 only where the hardware has it, the
detection forced both ways, the training rule, the caller's model untouched, and the precision recorded."""
from __future__ import annotations

import torch
import torch.nn as nn

from filterlens import precision as pr
from filterlens.models import ModelSpec, build_model


def _cuda(monkeypatch, bf16: bool):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    return torch.device("cuda", 0)


def test_cpu_detection_reads_the_flags_and_can_be_forced(monkeypatch):
    monkeypatch.delenv(pr.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(pr.platform, "machine", lambda: "x86_64")
    for flags, want in ((("fpu", "avx512f", "avx512_bf16"), True), (("fpu", "amx_tile", "amx_bf16"), True),
                        (("fpu", "avx512f", "avx2"), False), ((), False)):
        monkeypatch.setattr(pr, "_cpu_flags", lambda flags=flags: frozenset(flags))
        assert pr.cpu_has_bf16() is want, flags
    monkeypatch.setattr(pr.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(pr, "_cpu_flags", lambda: frozenset({"fp", "asimd", "bf16"}))
    assert pr.cpu_has_bf16()
    monkeypatch.setattr(pr, "_cpu_flags", lambda: frozenset({"fp", "asimd"}))
    assert not pr.cpu_has_bf16()
    monkeypatch.setenv(pr.CPU_BF16_ENV, "1")
    assert pr.cpu_has_bf16()
    monkeypatch.setattr(pr, "_cpu_flags", lambda: frozenset({"bf16"}))
    monkeypatch.setenv(pr.CPU_BF16_ENV, "0")
    assert not pr.cpu_has_bf16()


def test_inference_is_bfloat16_only_where_the_cpu_has_it(monkeypatch):
    model = build_model(ModelSpec("vgg_tiny", 10, 1, 8, 1.0, None))
    monkeypatch.setenv(pr.CPU_BF16_ENV, "0")
    off = pr.for_inference("cpu", True, model)
    assert off.name == "float32" and off.dtype is None and not off.channels_last
    with off.autocast():
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setenv(pr.CPU_BF16_ENV, "1")
    on = pr.for_inference("cpu", True, model)
    assert on.name == "bfloat16" and on.channels_last
    with on.autocast():
        assert torch.is_autocast_enabled("cpu")
        assert model(torch.zeros(2, 1, 8, 8)).dtype == torch.bfloat16
    assert pr.for_inference("cpu", False, model).name == "float32"  # --no-amp


def test_gpu_gets_bfloat16_or_float16(monkeypatch):
    model = nn.Linear(3, 2)
    assert pr.for_inference(_cuda(monkeypatch, True), True, model).name == "bfloat16"
    assert pr.for_inference(_cuda(monkeypatch, False), True, model).name == "float16"
    assert pr.for_training(_cuda(monkeypatch, True), False, model, (3,)).name == "float32"


def test_cpu_training_in_bfloat16_only_where_convolutions_dominate(monkeypatch):
    """A CNN (nearly all multiply-adds in convolutions) trains in bfloat16 with channels-last maps; a vision
    transformer (a conv patch embedding, but most work in linear layers) trains in float32."""
    monkeypatch.setenv(pr.CPU_BF16_ENV, "1")
    cnn = build_model(ModelSpec("resnet20", 10, 1, 28, 1.0, None))
    vit = build_model(ModelSpec("vit_tiny_cifar", 10, 1, 28, 1.0, None))
    assert pr.conv_share(cnn, (1, 28, 28)) > 0.99
    assert pr.conv_share(vit, (1, 28, 28)) < 0.05
    t = pr.for_training("cpu", True, cnn, (1, 28, 28))
    assert (t.name, t.channels_last) == ("bfloat16", True)
    v = pr.for_training("cpu", True, vit, (1, 28, 28))
    assert v.name == "float32" and "convolutions hold" in v.reason
    monkeypatch.setenv(pr.CPU_BF16_ENV, "0")
    assert pr.for_training("cpu", True, cnn, (1, 28, 28)).name == "float32"


def test_channels_last_leaves_the_callers_model_as_it_was(monkeypatch):
    """Inside the block the convolutions' weights are channels-last; afterwards the model holds the very tensors it
    had (same objects, values and strides), also when the block raised."""
    monkeypatch.setenv(pr.CPU_BF16_ENV, "1")
    model = build_model(ModelSpec("vgg_tiny", 10, 1, 8, 1.0, None)).eval()
    tensors = {k: v for k, v in model.state_dict(keep_vars=True).items()}
    data = {k: (v.data if isinstance(v, nn.Parameter) else v) for k, v in tensors.items()}
    before = {k: (v.clone(), v.stride()) for k, v in data.items()}
    p = pr.for_inference("cpu", True, model)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        want = model(x)
    with p.running(model) as net, torch.no_grad():
        assert net is model
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1]
        assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last)
                             and not c.weight.is_contiguous() for c in convs)
        with p.autocast():
            got = model(p.batch(x)).float()
    assert torch.allclose(got, want, atol=0.05 * float(want.abs().max()) + 1e-3)
    try:
        with p.running(model):
            raise KeyError("boom")
    except KeyError:
        pass
    after = model.state_dict(keep_vars=True)
    for k, v in after.items():
        assert v is tensors[k], k  # the same Parameter / buffer objects
        d = v.data if isinstance(v, nn.Parameter) else v
        assert d.data_ptr() == data[k].data_ptr() and torch.equal(d, before[k][0]) and d.stride() == before[k][1], k


def test_bfloat16_analysis_agrees_with_float32_and_says_so(monkeypatch, tmp_path):
    """The same trained network analysed with the CPU's bfloat16 path forced on and off: every layer's per-label
    mean maps agree within 1% of their largest value (bfloat16 keeps 8 significant bits: 0.4% per value), unit
    matrices correlate above 0.99, layer accuracies agree within 3 points (450 test images; the probes' own
    training amplifies rounding), and results.json records the precision each ran in."""
    import json

    import numpy as np

    import filterlens
    from filterlens.config import Config
    from filterlens.data import load_data
    from filterlens.train import train

    monkeypatch.setenv(pr.CPU_BF16_ENV, "0")
    run = tmp_path / "run"
    train(Config(dataset="digits", model="vgg_small", epochs=4, seed=0, progress=False), run)
    model = build_model(ModelSpec("vgg_small", 10, 1, 8, 1.0, None))
    from filterlens.models import load_checkpoint

    load_checkpoint(run / "model.pt", model, ModelSpec("vgg_small", 10, 1, 8, 1.0, None))
    data = load_data("digits")
    out = {}
    for flag in ("0", "1"):
        monkeypatch.setenv(pr.CPU_BF16_ENV, flag)
        a = filterlens.analyze(model, data, probe_epochs=20, heatmaps="none", progress=False)
        a.save(tmp_path / f"a{flag}")
        out[flag] = a
    f32, bf16 = out["0"], out["1"]
    # the two paths really computed differently (bfloat16 rounding shows in the means)
    assert any(not torch.equal(a.label_means, b.label_means) for a, b in zip(f32.probes.layers, bf16.probes.layers))
    for r32, rbf in zip(f32.probes.layers, bf16.probes.layers):
        scale = float(r32.label_means.abs().max())
        assert float((r32.label_means - rbf.label_means).abs().max()) <= 0.01 * scale, r32.name
        assert abs(r32.accuracy - rbf.accuracy) <= 0.03, (r32.name, r32.accuracy, rbf.accuracy)
        m32, mbf = f32.sfp[r32.name].matrices_.ravel(), bf16.sfp[r32.name].matrices_.ravel()
        assert np.corrcoef(m32, mbf)[0, 1] > 0.99, r32.name
    for flag, want in (("0", ("float32", "float32")), ("1", ("bfloat16", "bfloat16"))):
        rec = json.loads((tmp_path / f"a{flag}" / "results.json").read_text())["probes"]["precision"]
        assert (rec["precision"], rec["probe_products"]) == want, rec
        assert rec["cache"] == ("float16" if flag == "0" else "bfloat16")
