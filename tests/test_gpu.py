"""The CUDA paths, checked against the CPU wherever a GPU is at hand (skipped elsewhere).

- training on the GPU (bfloat16 autocast, channels-last, and with --compile) reaches the CPU
  run's accuracy, and its model.pt is an ordinary CPU-loadable checkpoint;
- the probes on the GPU, with the feature cache resident on the GPU and with it staged through
  pinned host memory, give the CPU's per-label means and accuracies;
- torchrun with nccl on two GPUs (when there are two) matches one GPU, and only rank 0 writes.

cuDNN convolutions use TF32 by default on Ampere and later, so GPU features differ from the
CPU's in the 4th significant digit: the tolerances below are set for that, not for equality.
Run them with ``python -m pytest tests/test_gpu.py`` on a machine with a GPU.
``FILTERLENS_TEST_GPU_AS=cpu`` runs the same checks with the CPU standing in for the GPU (the
tests' own logic, on a machine without one; the CUDA-only branches are not reached then).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import run_cli

GPU = os.environ.get("FILTERLENS_TEST_GPU_AS", "cuda")
pytestmark = pytest.mark.skipif(GPU == "cuda" and not torch.cuda.is_available(), reason="no CUDA GPU on this machine")

TRAIN = ["--dataset", "digits", "--model", "vgg_tiny", "--epochs", "6", "--batch-size", "32", "--seed", "0",
         "--no-progress"]
ANALYZE = ["--layers", "all", "--probe-epochs", "5", "--no-progress"]


def _train(run: Path, *extra) -> dict:
    rc, out, err = run_cli("train", *TRAIN, *extra, "--run-dir", run)
    assert rc == 0, out + err
    return json.loads((run / "train.json").read_text())


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cpu") / "run"
    _train(run, "--device", "cpu")
    rc, out, err = run_cli("analyze", "--run-dir", run, *ANALYZE, "--device", "cpu")
    assert rc == 0, out + err
    return run


@pytest.mark.parametrize("extra", [[], ["--compile"]], ids=["eager", "compile"])
def test_training_on_the_gpu_matches_the_cpu(cpu_run, tmp_path, extra):
    gpu = _train(tmp_path / "run", "--device", GPU, *extra)
    cpu = json.loads((cpu_run / "train.json").read_text())
    assert gpu["test_accuracy"] > 0.85
    assert abs(gpu["test_accuracy"] - cpu["test_accuracy"]) < 0.05, (gpu["test_accuracy"], cpu["test_accuracy"])
    # model.pt holds plain CPU tensors of the unwrapped module: it loads and evaluates on the CPU
    from filterlens.loaders import make_loader
    from filterlens.train import evaluate, load_trained

    model, cfg, data, _ = load_trained(tmp_path / "run", device="cpu")
    ev = evaluate(model, make_loader(data, "test", 256), torch.device("cpu"))
    assert abs(ev["accuracy"] - gpu["test_accuracy"]) <= 0.01  # the GPU evaluated under bfloat16 autocast


def _probe(run: Path, device: str):
    from filterlens.loaders import Feed
    from filterlens.models import list_layers, select_layers
    from filterlens.probes import train_probes
    from filterlens.train import load_trained

    model, cfg, data, _ = load_trained(run, device=device)
    cfg = cfg.replace(layers="all", probe_mode="fast", probe_epochs=5, progress=False)
    layers = select_layers(list_layers(model, (data.in_channels, data.image_size, data.image_size)), cfg.layers)
    return train_probes(model, layers, Feed(data, device, seed=cfg.seed), cfg, progress=False)


@pytest.mark.parametrize("placement", ["gpu_cache", "pinned_host_staging"])
def test_probes_on_the_gpu_match_the_cpu(cpu_run, monkeypatch, placement):
    cpu = _probe(cpu_run, "cpu")
    if placement == "pinned_host_staging" and GPU != "cpu":  # no room on the GPU: the cache stays on the host
        total = torch.cuda.mem_get_info()[1]
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a, **k: (0, total))
    gpu = _probe(cpu_run, GPU)
    assert torch.equal(gpu.label_counts, cpu.label_counts)
    for a, b in zip(gpu.layers, cpu.layers):
        assert a.name == b.name
        torch.testing.assert_close(a.label_means, b.label_means, rtol=1e-2, atol=1e-3)
        assert abs(a.accuracy - b.accuracy) <= 0.03, (a.name, a.accuracy, b.accuracy)
        assert a.weight.device.type == "cpu" and a.votes.device.type == "cpu"


@pytest.mark.skipif(GPU == "cuda" and torch.cuda.device_count() < 2, reason="nccl across processes needs two GPUs")
def test_torchrun_nccl_on_two_gpus(cpu_run, tmp_path):
    import shutil

    from test_distributed import torchrun, writers

    run, log = tmp_path / "run", tmp_path / "writes.log"
    shutil.copytree(cpu_run, run)
    for name in ("layers.csv", "results.json", "probes.pt", "label_means.pt", "probes.json"):
        (run / name).unlink()
    rc, out, err = torchrun("analyze", "--run-dir", run, *ANALYZE, "--device", GPU, log=log)
    assert rc == 0, out + err
    assert set(writers(log)) == {"0"}
    one = torch.load(cpu_run / "label_means.pt", map_location="cpu", weights_only=True)
    two = torch.load(run / "label_means.pt", map_location="cpu", weights_only=True)
    assert torch.equal(one["counts"], two["counts"])
    for name in one["means"]:
        torch.testing.assert_close(two["means"][name], one["means"][name], rtol=1e-2, atol=1e-3)
    # and 2-GPU training runs (DDP over nccl) to a comparable model
    rc, out, err = torchrun("train", *TRAIN, "--device", GPU, "--run-dir", tmp_path / "train", log=log)
    assert rc == 0, out + err
    assert json.loads((tmp_path / "train" / "train.json").read_text())["test_accuracy"] > 0.85
