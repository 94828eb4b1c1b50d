"""`filterlens run`: the stage cache, kill-and-resume, bad input, and the report in a real browser."""
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_toml
from filterlens import memory

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "CI": "true"}

# a small, fast pipeline: vgg_tiny on digits, few epochs, no AFCC (AFCC has its own tests)
TOML = tiny_toml(epochs="{epochs}", probe_epochs=4, extra="[sfp]\nthreshold = 0.3\n")


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "filterlens", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=ENV, timeout=timeout, cwd=ROOT)


def write_cfg(tmp_path, epochs=4, extra=""):
    p = tmp_path / "cfg.toml"
    p.write_text(TOML.format(epochs=epochs) + extra)
    return p


RESULT_FILES = ("layers.csv", "filters.csv", "model.pt", "probes.pt", "label_means.pt", "results.json",
                "report.html", "accuracy.png")


def snapshot(d: Path) -> dict:
    return {f: ((d / f).read_bytes(), (d / f).stat().st_mtime_ns) for f in RESULT_FILES}


def test_second_run_is_cached_and_changes_nothing(tmp_path):
    cfg = write_cfg(tmp_path)
    d = tmp_path / "run"
    r = cli("run", str(cfg), "--run-dir", str(d), "--no-progress")
    assert r.returncode == 0, r.stderr
    for f in RESULT_FILES:
        assert (d / f).exists(), f
    before = snapshot(d)
    r = cli("run", str(cfg), "--run-dir", str(d), "--no-progress")
    assert r.returncode == 0, r.stderr
    # nothing recomputed (the run says so; its speed is no test's business: the machines are shared)
    assert "train cached, probes cached, sfp cached" in r.stdout and "nothing read or written" in r.stdout
    assert snapshot(d) == before  # same bytes, not even rewritten


def test_changed_threshold_redoes_only_stage_3_onwards(tmp_path):
    cfg = write_cfg(tmp_path)
    d = tmp_path / "run"
    assert cli("run", str(cfg), "--run-dir", str(d), "--no-progress").returncode == 0
    stages = json.loads((d / "stages.json").read_text())
    model, probes = (d / "model.pt").read_bytes(), (d / "probes.pt").read_bytes()
    r = cli("run", str(cfg), "--run-dir", str(d), "--no-progress", "--threshold", "0.5")
    assert r.returncode == 0, r.stderr
    assert "train cached, probes cached, sfp " in r.stdout and "== stage sfp" in r.stdout
    after = json.loads((d / "stages.json").read_text())
    assert after["train"] == stages["train"] and after["probes"] == stages["probes"]
    assert after["sfp"]["finished"] >= stages["sfp"]["finished"] and after["sfp"]["hash"] != stages["sfp"]["hash"]
    assert (d / "model.pt").read_bytes() == model and (d / "probes.pt").read_bytes() == probes
    assert json.loads((d / "results.json").read_text())["sfp"]["threshold"] == 0.5
    # --from forces a stage and everything after it
    r = cli("run", str(cfg), "--run-dir", str(d), "--no-progress", "--threshold", "0.5", "--from", "probes")
    assert r.returncode == 0 and "== stage probes" in r.stdout and "== stage train" not in r.stdout


def test_changed_dataset_is_refused_then_redone_with_overwrite(tmp_path):
    cfg = write_cfg(tmp_path)
    d = tmp_path / "run"
    assert cli("run", str(cfg), "--run-dir", str(d), "--no-progress").returncode == 0
    model = (d / "model.pt").read_bytes()
    r = cli("run", str(cfg), "--run-dir", str(d), "--no-progress", "--labels", "first:5")
    assert r.returncode == 2 and "another config" in r.stderr and "labels" in r.stderr
    assert (d / "model.pt").read_bytes() == model
    r = cli("run", str(cfg), "--run-dir", str(d), "--no-progress", "--labels", "first:5", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert "== stage train" in r.stdout and "== stage probes" in r.stdout
    assert json.loads((d / "results.json").read_text())["data"]["num_labels"] == 5


def test_corrupted_cache_is_detected_and_rebuilt(tmp_path):
    cfg = write_cfg(tmp_path)
    d = tmp_path / "run"
    assert cli("run", str(cfg), "--run-dir", str(d), "--no-progress").returncode == 0
    layers = (d / "layers.csv").read_bytes()
    blob = (d / "label_means.pt").read_bytes()
    (d / "label_means.pt").write_bytes(blob[: len(blob) // 2])  # truncated
    r = cli("run", str(cfg), "--run-dir", str(d), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "checksum" in r.stdout and "== stage probes" in r.stdout
    assert (d / "label_means.pt").read_bytes() == blob  # rebuilt, same content (seeded)
    assert (d / "layers.csv").read_bytes() == layers


@pytest.mark.parametrize("stage_marker", ["checkpoint.pt", pytest.param("probes.json", marks=pytest.mark.slow)])
def test_killed_run_resumes_to_the_same_results(tmp_path, stage_marker):
    """SIGKILL during training (after a checkpoint) or during the analysis, restart, same results."""
    cfg = write_cfg(tmp_path, epochs=12)
    ref = tmp_path / "ref"
    assert cli("run", str(cfg), "--run-dir", str(ref), "--no-progress").returncode == 0
    d = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "filterlens", "run", str(cfg), "--run-dir", str(d),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=ENV, cwd=ROOT)
    deadline = time.time() + 300
    marker = d / stage_marker
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (d / "report.html").exists(), "the run finished before it was killed"
    r = cli("run", str(cfg), "--run-dir", str(d), "--no-progress")
    assert r.returncode == 0, r.stderr
    for f in ("layers.csv", "filters.csv"):
        assert (d / f).read_bytes() == (ref / f).read_bytes(), f
    a = torch.load(d / "model.pt", weights_only=True)["model"]
    b = torch.load(ref / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _one_line_error(r, *needles, code=2):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("filterlens: error:"), r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize("extra,needles", [
    ("thresold = 0.4\n", ["thresold", "threshold"]),            # unknown key: the closest valid key suggested
    ("[train]\nepochs = \"ten\"\n", ["epochs", "ten"]),        # wrong type
    ("", ["1.5", "(0, 1)"]),                                     # threshold outside (0, 1): given as a flag below
    ("layers = \"\"\n", ["empty", "leave it out"]),            # empty layer list
    ("labels = \"first:11\"\n", ["11", "2..10"]),               # label count out of range
])
def test_bad_config_is_one_line_and_keeps_earlier_results(tmp_path, extra, needles):
    good = write_cfg(tmp_path)
    d = tmp_path / "run"
    assert cli("run", str(good), "--run-dir", str(d), "--no-progress").returncode == 0
    before = snapshot(d)
    bad = tmp_path / "bad.toml"
    # the keys are top-level: put them before the first table
    bad.write_text(extra + TOML.format(epochs=4) if not extra.startswith("[") else
                   TOML.format(epochs=4).replace("[train]\nepochs = 4", extra.strip()))
    # --overwrite too: even then a refused command must destroy nothing
    args = ["run", str(bad), "--run-dir", str(d), "--no-progress", "--overwrite"]
    if not extra:
        args += ["--threshold", "1.5"]
    _one_line_error(cli(*args), *needles)
    assert snapshot(d) == before
    assert json.loads((d / "config.json").read_text())["layers"] == "all"


def test_nan_checkpoint_is_refused(tmp_path):
    d = tmp_path / "run"
    assert cli("train", "--dataset", "digits", "--model", "vgg_tiny", "--epochs", "1", "--run-dir", str(d),
               "--no-progress").returncode == 0
    state = torch.load(d / "model.pt", weights_only=False)
    key = next(k for k in state["model"] if k.endswith("conv.weight"))
    state["model"][key][0, 0, 0, 0] = float("nan")
    from filterlens.fingerprint import with_digest

    torch.save(with_digest(state), tmp_path / "nan.pt")  # saved whole (with its digest): the NaN is what is wrong
    r = cli("train", "--dataset", "digits", "--model", "vgg_tiny", "--epochs", "1", "--checkpoint",
            str(tmp_path / "nan.pt"), "--run-dir", str(tmp_path / "other"), "--no-progress")
    _one_line_error(r, "NaN", key)


def test_label_without_test_sample_is_named(tmp_path):
    # 12 test samples drawn at random out of 10 labels: some label has none; the message names it
    r = cli("train", "--dataset", "digits", "--model", "vgg_tiny", "--epochs", "1", "--test-samples", "4",
            "--run-dir", str(tmp_path / "r"), "--no-progress")
    _one_line_error(r, "test split has no sample of label")
    assert not (tmp_path / "r" / "config.json").exists()


def test_disk_full_while_writing_is_one_line_and_keeps_results(tmp_path):
    cfg = write_cfg(tmp_path)
    d = tmp_path / "run"
    assert cli("run", str(cfg), "--run-dir", str(d), "--no-progress").returncode == 0
    before = snapshot(d)
    # the real CLI, with os.fsync failing as on a full disk (errno ENOSPC) from the first write on
    code = ("import errno, os, sys\n"
            "import filterlens.files as f\n"
            "def full(fd): raise OSError(errno.ENOSPC, 'No space left on device')\n"
            "f.os.fsync = full\n"
            "from filterlens.cli import main\n"
            f"sys.exit(main(['run', {str(cfg)!r}, '--run-dir', {str(d)!r}, '--no-progress', '--threshold', '0.45']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT,
                       stdin=subprocess.DEVNULL, timeout=300)
    _one_line_error(r, "disk full", "No space left", code=1)
    assert snapshot(d) == before
    assert not list(d.glob(".*.tmp")), "temporary files left behind"


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(tmp_path):
    cfg = write_cfg(tmp_path)
    d = tmp_path / "run"
    assert cli("run", str(cfg), "--run-dir", str(d), "--no-progress").returncode == 0
    html = (d / "report.html").read_text()
    assert "src=\"http" not in html and "<img" in html  # self-contained
    n_img = html.count("<img")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    url = (d / "report.html").as_uri()
    dom = subprocess.run([_chromium(), *flags, f"--user-data-dir={tmp_path / 'u1'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120).stdout
    assert f'data-images-loaded="{n_img}/{n_img}"' in dom, "some image did not load"
    png = tmp_path / "shot.png"
    subprocess.run([_chromium(), *flags, f"--user-data-dir={tmp_path / 'u2'}", "--window-size=1200,1600",
                    f"--screenshot={png}", url], capture_output=True, timeout=120)
    from PIL import Image

    img = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert img.std() > 10, "the page looks blank"
    # `filterlens report` rebuilds it from the saved results without recomputing
    os.remove(d / "report.html")
    r = cli("report", str(d))
    assert r.returncode == 0 and (d / "report.html").exists()


def test_results_follow_the_schema_and_load_back(tmp_path):
    import jsonschema

    import filterlens
    from filterlens.results import schema

    cfg = write_cfg(tmp_path).read_text().replace("afcc = false", "afcc = true\nretrain_epochs = 1\nrandom_draws = 1")
    (tmp_path / "cfg2.toml").write_text(cfg)
    d = tmp_path / "run"
    r = cli("run", str(tmp_path / "cfg2.toml"), "--run-dir", str(d), "--no-progress")
    assert r.returncode == 0, r.stderr
    results = json.loads((d / "results.json").read_text())
    jsonschema.validate(results, schema())  # raises on any violation
    if platform.libc_ver()[0] == "glibc" and not any(os.environ.get(k) for k in memory._USER_CHOICE):
        assert results["environment"]["allocator"].startswith("glibc, freed blocks kept")  # the command line's
    assert "afcc" in results and "afcc_pruned" in results
    # the claims: 1-3 from the sfp stage, 6 added by the AFCC stage (one random draw: no interval), all printed
    assert [c["claim"] for c in results["claims"]] == [1, 2, 2, 2, 3, 6]
    assert results["claims"][-1]["verdict"] in ("does not hold", "cannot tell") and "one draw" in \
        results["claims"][-1]["detail"]
    assert r.stdout.count("the papers' claims") == 2 and "afcc_minus_random" in r.stdout
    bad = dict(results, version=2)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema())
    run = filterlens.load_run(d)
    assert {"layers", "units", "claims", "afcc", "train_log"} <= set(run.tables())
    layers = run.layers
    with open(d / "layers.csv") as fh:
        assert len(layers) == len(fh.read().strip().splitlines()) - 1
    assert all(isinstance(row["accuracy"], float) and isinstance(row["units"], int) for row in layers)
    assert [row["layer"] for row in layers] == [row["layer"] for row in results["layers"]]
    with pytest.raises(filterlens.FilterlensError, match="unknown table"):
        run.table("nope")


def test_a_full_disk_inside_torch_save_is_one_line_exit_1(tmp_path):
    """torch.save reports a failed write as a RuntimeError of its own ("unexpected pos ..."): the OSError it
    swallowed (ENOSPC) is what the user must see, one line, exit 1, and no partial model.pt."""
    script = ("import errno, runpy, sys\n"
              "import filterlens.files as f\n"
              "state = {'full': False}\n"
              "class Full:  # a file on a full disk: every write fails with ENOSPC\n"
              "    def __init__(self, fh): pass\n"
              "    def write(self, data): raise OSError(errno.ENOSPC, 'No space left on device')\n"
              "    def flush(self): pass\n"
              "init = f._RecordingWriter.__init__\n"
              "f._RecordingWriter.__init__ = lambda self, fh: init(self, Full(fh) if state['full'] else fh)\n"
              "save = f.torch_save\n"
              "def torch_save(path, obj):\n"
              "    state['full'] = str(path).endswith('model.pt')\n"
              "    return save(path, obj)\n"
              "f.torch_save = torch_save\n"
              "sys.argv = ['filterlens'] + sys.argv[1:]\n"
              "runpy.run_module('filterlens', run_name='__main__')\n")
    d = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", script, "train", "--dataset", "digits", "--model", "vgg_tiny",
                        "--epochs", "1", "--run-dir", str(d), "--no-progress"], capture_output=True, text=True,
                       env={**ENV, "PYTHONPATH": str(ROOT / "src")}, stdin=subprocess.DEVNULL, cwd=tmp_path)
    _one_line_error(r, "disk full", "No space left", code=1)
    assert not (d / "model.pt").exists() and not list(d.glob(".model.pt.*.tmp"))


def test_each_stage_records_its_own_peak_memory(tmp_path, monkeypatch):
    """stages.json keeps, per stage that ran, the command's peak resident memory while it ran, measured from the
    stage's start: a stage after one that held 400 MB more shows a peak below that one's."""
    from filterlens import pipeline
    from filterlens.config import Config
    from filterlens.memory import reset_peak

    if not reset_peak():
        pytest.skip("this system keeps only the process' peak memory")
    train = pipeline._RUN["train"]

    def heavy_train(*args):
        held = torch.ones(100 * 2**20)  # 400 MB, touched, freed when the stage ends
        train(*args)
        del held

    monkeypatch.setitem(pipeline._RUN, "train", heavy_train)
    cfg = Config(dataset="digits", model="vgg_tiny", epochs=1, probe_epochs=1, afcc=False, progress=False, threads=1)
    pipeline.run_pipeline(cfg, tmp_path / "run")
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    peaks = {s: stages[s].get("peak_memory_bytes") for s in ("train", "probes", "sfp")}
    assert all(isinstance(v, int) and v > 0 for v in peaks.values()), peaks
    assert {stages[s]["peak_memory_scope"] for s in peaks} == {"stage"}
    assert peaks["train"] > max(peaks["probes"], peaks["sfp"]) + 300 * 2**20, peaks
