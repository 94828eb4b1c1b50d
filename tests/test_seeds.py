"""Runs of one recipe over seeds (filterlens run --seeds): one resumable run per seed, the claims pooled over
them, a killed command resumed at the next seed, {seed} in --checkpoint, and the checks made before any work."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_env, run_cli, tiny_toml

CONFIG = tiny_toml(extra="[sfp]\nbootstrap = 20\n")


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(CONFIG)
    return path


def test_seeds_make_one_run_each_and_pool_their_claims(tmp_path):
    cfg = _config(tmp_path)
    rc, out, err = run_cli("run", cfg, "--seeds", "0,1", "--run-dir", tmp_path / "r", "--no-progress", cwd=tmp_path)
    assert rc == 0, out + err
    for s in (0, 1):
        conf = json.loads((tmp_path / "r" / f"seed-{s}" / "config.json").read_text())
        assert conf["seed"] == s and (tmp_path / "r" / f"seed-{s}" / "results.json").exists()
    pooled = json.loads((tmp_path / "r" / "pooled_claims.json").read_text())
    assert pooled["seeds"] == [0, 1]
    per = {s: json.loads((tmp_path / "r" / f"seed-{s}" / "results.json").read_text())["claims"] for s in (0, 1)}
    for row in pooled["pooled"]:
        mine = [next(c for c in per[s] if c["claim"] == row["claim"] and c["metric"] == row["metric"])
                for s in (0, 1)]
        assert row["per_seed"] == pytest.approx([c["value"] for c in mine], nan_ok=True)
        assert row["per_seed_verdicts"] == [c["verdict"] for c in mine]
        assert row["seeds_holds"] == sum(c["verdict"] == "holds" for c in mine)
    assert "pooled over the seeds of one recipe" in out and (tmp_path / "r" / "pooled_claims.csv").exists()
    # again: every seed's stages are cached, nothing recomputed
    rc, out2, err = run_cli("run", cfg, "--seeds", "0,1", "--run-dir", tmp_path / "r", "--no-progress", cwd=tmp_path)
    assert rc == 0 and out2.count("nothing read or written") == 2, out2 + err


@pytest.mark.slow  # 26-74 s each: the slow step of .ci/run (`make test-slow`)
def test_a_killed_seeds_command_resumes_at_the_next_seed(tmp_path):
    cfg = _config(tmp_path)
    cmd = [sys.executable, "-m", "filterlens", "run", str(cfg), "--seeds", "0,1", "--run-dir", str(tmp_path / "r"),
           "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while not (tmp_path / "r" / "seed-1").exists():  # seed 0 finished, seed 1 begun
        assert proc.poll() is None and time.time() < deadline, "the command ended before reaching seed 1"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "r" / "seed-0" / "report.html").exists()
    rc, out, err = run_cli("run", cfg, "--seeds", "0,1", "--run-dir", tmp_path / "r", "--no-progress", cwd=tmp_path)
    assert rc == 0, out + err
    first, second = out.split("==== seed 1")
    assert "nothing read or written" in first and "== stage train" in second  # seed 0 cached, seed 1 run
    assert (tmp_path / "r" / "pooled_claims.json").exists()


@pytest.mark.slow  # 26-74 s each: the slow step of .ci/run (`make test-slow`)
def test_seed_placeholder_in_checkpoint_loads_each_seeds_weights(tmp_path):
    """--checkpoint with {seed}: each seed's run starts from its own weights (the seed-1 run from the seed-1 file)."""
    for s in (0, 1):
        rc, out, err = run_cli("train", "--dataset", "digits", "--model", "vgg_tiny", "--epochs", "1", "--seed", str(s),
                               "--no-progress", "--run-dir", tmp_path / f"t{s}", cwd=tmp_path)
        assert rc == 0, out + err
    cfg = _config(tmp_path)
    rc, out, err = run_cli("run", cfg, "--seeds", "0,1", "--checkpoint", tmp_path / "t{seed}" / "model.pt",
                           "--epochs", "0", "--run-dir", tmp_path / "r", "--no-progress", cwd=tmp_path)
    assert rc == 0, out + err
    import torch

    for s in (0, 1):
        want = torch.load(tmp_path / f"t{s}" / "model.pt", weights_only=True)["model"]
        got = torch.load(tmp_path / "r" / f"seed-{s}" / "model.pt", weights_only=True)["model"]
        assert all(torch.equal(want[k], got[k]) for k in want)
    assert (json.loads((tmp_path / "r" / "seed-1" / "config.json").read_text())["checkpoint"]
            .endswith("t{seed}/model.pt"))


@pytest.mark.parametrize("seeds, message", [("", "is empty"), ("0,0", "repeat a seed"), ("1,²", "not an integer"),
                                            ("-1", "out of range"), ("a", "not an integer")])
def test_bad_seeds_are_one_line_and_change_nothing(tmp_path, seeds, message):
    cfg = _config(tmp_path)
    rc, out, err = run_cli("run", cfg, "--seeds", seeds, "--run-dir", tmp_path / "r", "--no-progress", cwd=tmp_path)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # 26-74 s each: the slow step of .ci/run (`make test-slow`)
def test_seeds_folder_refuses_a_users_folder_and_another_recipe(tmp_path):
    cfg = _config(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    rc, out, err = run_cli("run", cfg, "--seeds", "0", "--run-dir", mine, "--no-progress", cwd=tmp_path)
    assert rc == 2 and "files filterlens did not write" in err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    rc, out, err = run_cli("run", cfg, "--seeds", "0", "--run-dir", tmp_path / "r", "--no-progress", cwd=tmp_path)
    assert rc == 0, err
    rc, out, err = run_cli("run", cfg, "--seeds", "0", "--threshold", "0.4", "--run-dir", tmp_path / "r",
                           "--no-progress", cwd=tmp_path)
    assert rc == 2 and "another recipe" in err, err


def test_probe_seeds_put_the_probes_training_spread_into_the_intervals(tmp_path):
    """probe_seeds 3: two more probes per layer from other seeds (other weights and sample order), each with its
    weight (the last layer's bootstrap reads the test features: 4 positions per unit, 10 labels); the bootstrap's
    replicates then read probe b mod 3, and the intervals are at least as wide as a replicate set that reads the
    first probe only (the same test resamples)."""
    import numpy as np

    import filterlens
    from filterlens import sfp
    from filterlens.data import load_data
    from filterlens.models import ModelSpec, build_model, load_checkpoint

    rc, out, err = run_cli("train", "--dataset", "digits", "--model", "vgg_tiny", "--epochs", "2", "--seed", "0",
                           "--no-progress", "--run-dir", tmp_path / "t", cwd=tmp_path)
    assert rc == 0, err
    spec = ModelSpec("vgg_tiny", 10, 1, 8)
    model = build_model(spec)
    load_checkpoint(tmp_path / "t" / "model.pt", model, spec)
    a = filterlens.analyze(model, load_data("digits"), probe_epochs=3, probe_seeds=3, bootstrap=30, heatmaps="none",
                           progress=False)
    r = a.probes.layers[-1]
    assert r.bootstrap_input == "features" and r.extra_fields is None
    assert len(r.extra_weights) == 2 and len(r.extra_accuracy) == 2
    assert not torch_equal(r.weight, r.extra_weights[0]) and not torch_equal(r.extra_weights[0], r.extra_weights[1])
    labels = a.probes.test_labels.numpy()
    _, one = sfp.bootstrap_summary_from_features(r.test_features, r.weight, labels, 10, 30, 0, return_samples=True,
                                                 accuracy=True)
    _, three = sfp.bootstrap_summary_from_features(r.test_features, [r.weight, *r.extra_weights], labels, 10, 30, 0,
                                                   return_samples=True, accuracy=True)
    np.testing.assert_allclose(three["accuracy"][::3], one["accuracy"][::3])  # replicate 0, 3, ...: the first probe
    accs = [r.accuracy, *r.extra_accuracy]
    assert not np.allclose(three["accuracy"][1::3], one["accuracy"][1::3]) or len(set(accs)) == 1
    a.save(tmp_path / "a")
    from filterlens.analysis import Analysis

    again = Analysis.load(tmp_path / "a")
    assert len(again.probes.layers[-1].extra_weights) == 2


def torch_equal(x, y) -> bool:
    import torch

    return bool(torch.equal(x, y))


# ------------------------------------------------------------------------------ compare pools the seeds of a recipe

@pytest.fixture(scope="module")
def one_analysis():
    """A real small analysis (digits, vgg_tiny); the planted runs below are it, saved with planted claims."""
    import filterlens
    from filterlens.data import load_data
    from filterlens.models import ModelSpec, build_model

    model = build_model(ModelSpec("vgg_tiny", 10, 1, 8, 1.0, None))
    return filterlens.analyze(model, load_data("digits"), probe_epochs=1, heatmaps="none", progress=False)


def _planted(analysis, folder: Path, seed: int, centre: float, threshold: float = 0.3) -> Path:
    """``analysis`` saved as the run of ``seed``, its claim-1 row planted: 200 replicates of the rank correlation
    around ``centre``."""
    import copy

    import numpy as np

    from filterlens import claims

    a = copy.copy(analysis)
    a.meta = copy.deepcopy(analysis.meta)
    a.meta["config"].update(seed=seed, threshold=threshold)
    reps = np.random.default_rng(seed).normal(centre, 0.05, 200)
    low, high = claims.percentile_interval(reps)
    a.meta["claims"] = [{"claim": 1, "text": claims.CLAIMS[1], "metric": "accuracy", "statistic": "spearman_rho",
                         "value": float(np.median(reps)), "low": low, "high": high, "n": 5,
                         "verdict": claims.side_verdict(low, high, 1), "rule": "planted", "detail": "",
                         "replicates": reps.tolist()}]
    a.save(folder)
    return folder


@pytest.mark.slow  # 26-74 s each: the slow step of .ci/run (`make test-slow`)
def test_compare_pools_a_recipes_seeds_and_never_mixes_recipes_unasked(one_analysis, tmp_path):
    import jsonschema

    from filterlens.results import schema  # noqa: F401 - the package's schemas load
    agree = [_planted(one_analysis, tmp_path / f"a{s}", s, c) for s, c in ((0, 0.8), (1, 0.7), (2, 0.75))]
    rc, out, err = run_cli("compare", *agree, "--out", tmp_path / "ca", cwd=tmp_path)
    assert rc == 0, err
    pooled = json.loads((tmp_path / "ca" / "compare_pooled.json").read_text())
    from importlib import resources

    jsonschema.validate(pooled, json.loads(resources.files("filterlens").joinpath("pooled.schema.json").read_text()))
    (group,) = pooled["groups"]
    row = next(r for r in group["rows"] if r["metric"] == "accuracy")
    assert group["seeds"] == [0, 1, 2] and row["verdict"] == "holds" and row["seeds_holds"] == 3
    assert "share a recipe" in out and "pooled over the seeds" in out
    html = (tmp_path / "ca" / "compare.html").read_text()
    assert html.index("pooled over seeds") < html.index("<h2>Runs</h2>")  # near the top
    disagree = [_planted(one_analysis, tmp_path / f"d{s}", s, c) for s, c in ((0, 0.8), (1, 0.7), (2, -0.8))]
    rc, out, err = run_cli("compare", *disagree, "--out", tmp_path / "cd", cwd=tmp_path)
    assert rc == 0, err
    row = next(r for r in json.loads((tmp_path / "cd" / "compare_pooled.json").read_text())["groups"][0]["rows"]
               if r["metric"] == "accuracy")
    assert row["verdict"] == "cannot tell" and (row["seeds_holds"], row["seeds_fails"]) == (2, 1)
    # another recipe (another threshold): not pooled with them unless asked, and then the difference is said
    other = _planted(one_analysis, tmp_path / "o3", 3, 0.8, threshold=0.4)
    rc, out, err = run_cli("compare", agree[0], agree[1], other, "--out", tmp_path / "cm", cwd=tmp_path)
    assert rc == 0, err
    (group,) = json.loads((tmp_path / "cm" / "compare_pooled.json").read_text())["groups"]
    assert group["seeds"] == [0, 1]  # the two of one recipe only
    rc, out, err = run_cli("compare", agree[0], agree[1], other, "--out", tmp_path / "cp", "--pool", cwd=tmp_path)
    assert rc == 0, err
    (group,) = json.loads((tmp_path / "cp" / "compare_pooled.json").read_text())["groups"]
    assert group["seeds"] == [0, 1, 3] and "threshold" in group["note"] and "--pool" in out
    # the same seed twice is a rerun, not two seeds: compared, not pooled, and said
    again = _planted(one_analysis, tmp_path / "a0bis", 0, 0.8)
    rc, out, err = run_cli("compare", agree[0], again, "--out", tmp_path / "ct", cwd=tmp_path)
    assert rc == 0 and "same seed 0" in out, out + err
    assert json.loads((tmp_path / "ct" / "compare_pooled.json").read_text())["groups"] == []
