"""Tests of training through the real command line: resume after a kill, refusal without
--resume, the finished-run short cut, Fashion-MNIST accuracy, and the files a run writes."""
from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY_TRAIN_ARGS, assert_user_error, cli_env, copy_run, run_cli

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def read_log(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def state_dict_of(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["model"]


# ================================================================================ resume

RESUME_BASE = ["--dataset", "digits", "--epochs", "3", "--seed", "0", "--no-progress"]
# From fast to slow: if a run finishes before it can be killed after epoch 1, the next
# setting makes every epoch longer (more, smaller steps; a wider model).
SLOWER = [["--model", "vgg_tiny", "--batch-size", "16"],
          ["--model", "vgg_tiny", "--batch-size", "4"],
          ["--model", "vgg_small", "--batch-size", "4"],
          ["--model", "vgg_small", "--batch-size", "2", "--width-mult", "2"]]


def _logged_epochs(run_dir: Path) -> int:
    try:
        return len(read_log(run_dir / "train_log.csv"))
    except (FileNotFoundError, csv.Error):
        return 0


def _train_and_kill_after_epoch_1(args: list[str], run_dir: Path, cwd: Path):
    """Start training, SIGKILL it once train_log.csv has one epoch row (the checkpoint is written
    before the log). Returns the epoch count at the kill, or None when it finished first."""
    with open(cwd / f"{run_dir.name}.out", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "filterlens", "train", *args, "--run-dir", str(run_dir)],
                                cwd=cwd, env=cli_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if _logged_epochs(run_dir) >= 1:
                    proc.send_signal(signal.SIGKILL)
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.002)
            else:
                proc.kill()
                pytest.fail(f"training with {args} logged no epoch in 300 s")
        finally:
            proc.wait(timeout=60)
    if proc.returncode != -signal.SIGKILL:
        assert proc.returncode == 0, (cwd / f"{run_dir.name}.out").read_text()
        return None  # finished before the kill landed
    if (run_dir / "model.pt").exists() or not (run_dir / "checkpoint.pt").exists():
        return None
    # the checkpoint, not the log, is what --resume continues from (it is written first)
    done = int(torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["epoch"])
    return done if 1 <= done < 3 else None


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A run directory left by a training killed after its first epoch (of 3), and its args."""
    base = tmp_path_factory.mktemp("interrupted")
    for i, extra in enumerate(SLOWER):
        args = RESUME_BASE + extra
        run_dir = base / f"B{i}"
        done = _train_and_kill_after_epoch_1(args, run_dir, base)
        if done is not None:
            assert (run_dir / "checkpoint.pt").exists(), "killed after an epoch but no checkpoint.pt"
            assert not (run_dir / "model.pt").exists()
            assert 1 <= _logged_epochs(run_dir) <= done
            return {"args": args, "dir": run_dir, "epoch": done, "base": base}
    pytest.fail(f"every setting {SLOWER} finished all 3 epochs before it could be killed")


def test_interrupted_training_resumed_gives_the_same_weights(interrupted, tmp_path):
    args = interrupted["args"]
    b = copy_run(interrupted["dir"], tmp_path / "B")
    a = tmp_path / "A"
    rc, out, err = run_cli("train", *args, "--run-dir", a, cwd=tmp_path)
    assert rc == 0, out + err
    rc, out, err = run_cli("train", *args, "--run-dir", b, "--resume", cwd=tmp_path)
    assert rc == 0, out + err
    assert f"resuming from epoch {interrupted['epoch']} of 3" in out
    assert "Traceback" not in out + err

    sa, sb = state_dict_of(a / "model.pt"), state_dict_of(b / "model.pt")
    assert sa.keys() == sb.keys() and len(sa) > 0
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs between the uninterrupted and the resumed run"
    # the per-epoch history is the same too (apart from wall time)
    la, lb = read_log(a / "train_log.csv"), read_log(b / "train_log.csv")
    assert len(la) == len(lb) == 3
    for ra, rb in zip(la, lb):
        ra.pop("seconds"), rb.pop("seconds")
        assert ra == rb
    assert not (b / "checkpoint.pt").exists()  # finished: the checkpoint is gone, model.pt stays
    # the training's time counts every epoch, those before the interruption too (was: only the resumed ones)
    logged = sum(float(r["seconds"]) for r in read_log(b / "train_log.csv"))
    assert json.loads((b / "train.json").read_text())["seconds"] >= logged


def test_without_resume_an_unfinished_run_is_refused(interrupted, tmp_path):
    b = copy_run(interrupted["dir"], tmp_path / "B")
    before = {name: (b / name).read_bytes() for name in ("checkpoint.pt", "config.json", "train_log.csv")}
    rc, out, err = run_cli("train", *interrupted["args"], "--run-dir", b, cwd=tmp_path)
    assert_user_error(rc, out, err, "--resume", str(b))
    for name, data in before.items():
        assert (b / name).read_bytes() == data, f"{name} changed"
    assert not (b / "model.pt").exists()


def test_resume_with_another_config_is_refused(interrupted, tmp_path):
    b = copy_run(interrupted["dir"], tmp_path / "B")
    before = (b / "checkpoint.pt").read_bytes()
    args = [a if a != "3" else "4" for a in interrupted["args"]]  # --epochs 4
    rc, out, err = run_cli("train", *args, "--run-dir", b, "--resume", cwd=tmp_path)
    assert_user_error(rc, out, err, "--overwrite")
    assert (b / "checkpoint.pt").read_bytes() == before


# ================================================================================ finished runs

def test_same_config_twice_does_nothing(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    rc, out, err = run_cli("train", *TINY_TRAIN_ARGS, "--run-dir", run, cwd=tmp_path)
    assert rc == 0, out + err
    assert "nothing to do" in out
    assert "epoch   1" not in out  # no training
    after = {p.name: p.read_bytes() for p in run.iterdir()}
    assert after.keys() == before.keys()
    assert after["model.pt"] == before["model.pt"]
    assert after["train.json"] == before["train.json"]
    assert after["train_log.csv"] == before["train_log.csv"]


def test_run_files_are_consistent(tiny_run):
    """vgg_tiny on digits, 2 epochs, lr 0.05 with cosine decay (the defaults)."""
    import json

    # the marker of a folder filterlens made; the lock file stays (an OS lock on it, released when the process
    # ends); no checkpoint, no temporary file
    assert sorted(p.name for p in tiny_run.iterdir()) == [".filterlens", ".filterlens.lock", "config.json",
                                                          "model.pt", "stages.json", "train.json", "train_log.csv"]
    stages = json.loads((tiny_run / "stages.json").read_text())
    assert set(stages) == {"config", "train"} and set(stages["train"]["sha256"]) == {"model.pt", "train.json"}
    log = read_log(tiny_run / "train_log.csv")
    assert [int(r["epoch"]) for r in log] == [1, 2]
    for r in log:
        for key in ("train_accuracy", "test_accuracy"):
            assert 0.0 <= float(r[key]) <= 1.0
        for key in ("train_loss", "test_loss"):
            assert math.isfinite(float(r[key])) and float(r[key]) > 0
    # cosine annealing over 2 epochs: after epoch e the rate is 0.05 * (1 + cos(pi * e / 2)) / 2
    for r in log:
        e = int(r["epoch"])
        assert float(r["lr"]) == pytest.approx(0.05 * (1 + math.cos(math.pi * e / 2)) / 2, abs=1e-6)

    summary = json.loads((tiny_run / "train.json").read_text())
    assert summary["epochs"] == 2
    assert len(summary["history"]) == 2
    assert summary["test_accuracy"] == pytest.approx(float(log[-1]["test_accuracy"]), abs=1e-6)
    assert summary["model"]["model"] == "vgg_tiny"
    assert summary["model"]["num_labels"] == 10 and summary["model"]["in_channels"] == 1
    assert summary["data"]["train_size"] + summary["data"]["test_size"] == 1797
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["epochs"] == 2 and config["model"] == "vgg_tiny" and config["dataset"] == "digits"

    # the printed per-epoch lines carry the logged numbers
    out = (tiny_run.parent / "stdout.txt").read_text()
    lines = [l for l in out.splitlines() if l.lstrip().startswith("epoch")]
    assert len(lines) == 2
    for line, r in zip(lines, log):
        assert f"{float(r['test_accuracy']):.4f}" in line
        assert f"{float(r['train_loss']):.4f}" in line
    assert f"test accuracy {summary['test_accuracy']:.4f}" in out
    # two epochs of a tiny network: judged by the rule from its own log (a tail of both epochs), said when not met
    conv = summary["convergence"]
    last, tail = log[-1], [float(r["test_accuracy"]) for r in log]
    met = float(last["train_accuracy"]) >= 0.98 and abs(float(last["test_accuracy"]) - sum(tail) / 2) <= 0.01
    assert conv["converged"] is met and conv["plateau_epochs"] == 2
    assert ("not converged" in out) is (not met)


def _history(train, test):
    return [{"epoch": i + 1, "train_accuracy": a, "test_accuracy": b} for i, (a, b) in enumerate(zip(train, test))]


@pytest.mark.parametrize("train, test, converged, why", [
    # plateaued: the last five of 25 epochs hold 0.905-0.91, the last 0.909; fits its training set
    ([0.5] * 20 + [0.99] * 5, [0.5] * 20 + [0.905, 0.91, 0.906, 0.908, 0.909], True, ""),
    # still climbing: 0.86 -> 0.90 over the last fifth, the last 0.90 is 2 points above their mean 0.88
    ([0.99] * 25, [0.5] * 20 + [0.86, 0.87, 0.88, 0.89, 0.90], False, "+0.0200 from the mean of the last 5"),
    # flat but underfit: training accuracy 0.95
    ([0.95] * 10, [0.9] * 10, False, "training accuracy 0.9500 < 0.98"),
])
def test_convergence_rule_on_made_up_histories(train, test, converged, why):
    from filterlens.train import convergence

    got = convergence(_history(train, test))
    assert got["converged"] is converged and why in got["reason"]
    assert convergence(_history([0.99], [0.9]))["converged"] is None  # one epoch: nothing to judge
    # the window is a fifth of the epochs, at least two: 1,000 epochs of a 3-label subset judge the last 200
    assert convergence(_history([0.99] * 1000, [0.9] * 1000))["plateau_epochs"] == 200


def test_reported_accuracy_is_the_saved_models(tiny_run):
    """Evaluate model.pt ourselves on the digits test split, in the precision train.json says its evaluation ran in
    (bfloat16 autocast on a CPU with bfloat16 units): the same accuracy as train.json."""
    import json

    from filterlens.data import load_data
    from filterlens.models import ModelSpec, build_model, load_checkpoint

    data = load_data("digits")
    spec = ModelSpec("vgg_tiny", 10, 1, 8)
    model = build_model(spec)
    load_checkpoint(tiny_run / "model.pt", model, spec)
    model.eval()
    summary = json.loads((tiny_run / "train.json").read_text())
    dtype = {"bfloat16": torch.bfloat16, "float32": None}[summary["precision"]["evaluation"]["precision"]]
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        x = data.test.normalise(data.test.images)
        pred = model(x).argmax(1)
    acc = (pred == data.test.labels).float().mean().item()
    assert abs(acc - summary["test_accuracy"]) <= 1 / len(data.test) + 1e-9


# ================================================================================ Fashion-MNIST

@pytest.mark.slow
@pytest.mark.skipif(not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason=f"Fashion-MNIST idx files absent from {FASHION_DIR} "
                           "(apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_one_epoch_reaches_80_percent(tmp_path):
    rc, out, err = run_cli("train", "--dataset", "fashion-mnist", "--model", "vgg_small", "--train-samples", "30000",
                           "--lr", "0.02", "--batch-size", "64", "--epochs", "1", "--seed", "0", "--no-progress",
                           "--run-dir", tmp_path / "fm", cwd=tmp_path)
    assert rc == 0, out + err
    import json

    summary = json.loads((tmp_path / "fm" / "train.json").read_text())
    assert summary["data"]["train_size"] == 30000 and summary["data"]["test_size"] == 10000
    assert summary["data"]["label_names"][0] == "T-shirt/top"
    assert summary["test_accuracy"] >= 0.80, out


# ================================================================================ torch.compile

@pytest.mark.slow
@pytest.mark.skipif(not any(Path(p, "g++").exists() or Path(p, "c++").exists()
                            for p in __import__("os").environ.get("PATH", "").split(":")),
                    reason="torch.compile on the CPU needs a C++ compiler (inductor)")
def test_compiled_training_matches_eager(tmp_path):
    """--compile trains the same network as eager mode (same seed, same batches: the same losses up to
    floating-point order), and model.pt holds the plain module's weights (no torch.compile wrapper
    names), so it loads wherever an eager run's checkpoint does."""
    args = ["--dataset", "digits", "--model", "vgg_tiny", "--epochs", "1", "--train-samples", "256",
            "--test-samples", "128", "--batch-size", "64", "--seed", "0", "--no-progress", "--device", "cpu",
            "--no-amp"]  # float32: bfloat16 rounds the two graphs' different operation orders apart
    runs = {}
    cache = tmp_path / "inductor"
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        env = {**cli_env(), "TORCHINDUCTOR_CACHE_DIR": str(cache)}
        proc = subprocess.run([sys.executable, "-m", "filterlens", "train", *args, *extra, "--run-dir",
                               str(tmp_path / name)], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # inductor wrote its generated kernels for the compiled run only: the option took effect
        assert any(cache.rglob("*.py")) == (name == "compiled"), name
        runs[name] = (read_log(tmp_path / name / "train_log.csv")[0], state_dict_of(tmp_path / name / "model.pt"))
    (log_e, sd_e), (log_c, sd_c) = runs["eager"], runs["compiled"]
    assert float(log_c["train_loss"]) == pytest.approx(float(log_e["train_loss"]), rel=1e-3)
    assert sd_c.keys() == sd_e.keys()
    assert not any("_orig_mod" in k for k in sd_c)
    for k in sd_e:
        if sd_e[k].is_floating_point():
            assert torch.allclose(sd_c[k], sd_e[k], atol=1e-3, rtol=1e-3), k
    # and the test accuracy reported for it is that of the saved weights
    assert abs(float(log_c["test_accuracy"]) - float(log_e["test_accuracy"])) <= 2 / 128


def test_warmup_then_cosine_learning_rates():
    """--warmup-epochs W ramps the rate linearly to --lr over W epochs (lr*(e+1)/(W+1)), then the schedule runs
    over the remaining epochs (cosine: lr*(1+cos(pi*(e-W)/(E-W)))/2), written out here from their definitions."""
    from filterlens.config import Config
    from filterlens.train import _optimizer, _scheduler

    model = torch.nn.Linear(3, 2)
    for opt_name, kind in (("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)):
        cfg = Config(epochs=7, lr=0.1, warmup_epochs=2, optimizer=opt_name)
        opt = _optimizer(cfg, model)
        assert type(opt) is kind
        sched = _scheduler(cfg, opt)
        seen = []
        for _ in range(cfg.epochs):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        want = [0.1 * (e + 1) / 3 for e in range(2)] + [0.1 * (1 + math.cos(math.pi * (e - 2) / 5)) / 2
                                                         for e in range(2, 7)]
        assert seen == pytest.approx(want, rel=1e-9, abs=1e-12)
    cfg = Config(epochs=4, lr=0.1)  # no warm-up: the plain cosine schedule
    opt = _optimizer(cfg, model)
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["nesterov"]
    sched = _scheduler(cfg, opt)
    assert type(sched) is torch.optim.lr_scheduler.CosineAnnealingLR


def test_min_steps_raises_the_epochs_of_a_small_training(tmp_path):
    """--min-steps 40 on 5 labels of digits (about 180 training images, 3 batches of 64 per epoch): the training
    runs ceil(40 / 3) = 14 epochs instead of --epochs 2, its schedule over those 14 (the cosine reaches its end);
    a training with enough batches keeps --epochs."""
    import json

    from filterlens.config import Config
    from filterlens.train import epochs_of

    assert epochs_of(Config(epochs=2, min_steps=40), 3) == 14
    assert epochs_of(Config(epochs=2, min_steps=40), 100) == 2
    assert epochs_of(Config(epochs=0, min_steps=40), 3) == 0  # epochs 0: the weights as they are
    rc, out, err = run_cli("train", "--dataset", "digits", "--labels", "first:5", "--model", "vgg_tiny",
                           "--epochs", "2", "--min-steps", "40", "--train-samples", "180", "--seed", "0",
                           "--no-progress", "--run-dir", tmp_path / "r", cwd=tmp_path)
    assert rc == 0, out + err
    summary = json.loads((tmp_path / "r" / "train.json").read_text())
    n_train = summary["data"]["train_size"]
    per_epoch = -(-n_train // 64)
    assert summary["epochs"] == -(-40 // per_epoch) and summary["steps"] >= 40
    lrs = [row["lr"] for row in summary["history"]]
    assert len(lrs) == summary["epochs"] and lrs[-1] < 1e-6  # the cosine ran over the raised epochs
