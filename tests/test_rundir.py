"""A run directory you can trust (issue 15, items 1-6), through the real command line.

1. an output that changed since its stage wrote it is never trusted nor re-blessed: its stage runs again;
2. a refused command leaves the run directory byte-identical;
3. a second `filterlens run` of configs/demo.toml (AFCC on) recomputes nothing and rewrites no file;
4. an empty --run-dir is refused;
5. one command at a time: a second one is refused naming the holder; a killed holder blocks nothing;
6. temporary files a killed command left behind are removed by the next one.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, assert_user_error, cli_env, copy_run, run_cli, tiny_toml

TOML = tiny_toml()


def tree(d: Path) -> dict[str, str]:
    """Every file under ``d`` (relative path -> sha256 of its bytes)."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def mtimes(d: Path) -> dict[str, int]:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory) -> Path:
    """A finished `filterlens run` (train, probes, sfp, report) of a tiny config; copy it to change it."""
    base = tmp_path_factory.mktemp("pipeline")
    (base / "tiny.toml").write_text(TOML)
    rc, out, err = run_cli("run", base / "tiny.toml", "--run-dir", base / "run", "--no-progress", cwd=base)
    assert rc == 0, err
    return base / "run"


def same_weights(path: Path, original: bytes) -> bool:
    """The weights in ``path`` equal those of the checkpoint bytes ``original`` (the files also hold timings)."""
    import io

    a = torch.load(path, weights_only=True)["model"]
    b = torch.load(io.BytesIO(original), weights_only=True)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _rerun(run: Path):
    return run_cli("run", run.parent / "tiny.toml", "--run-dir", run, "--no-progress", cwd=run.parent)


# ------------------------------------------------------------------------------------------ 1

def test_altered_model_is_recomputed_never_reblessed(pipeline_run, tmp_path):
    (tmp_path / "tiny.toml").write_text(TOML)
    run = copy_run(pipeline_run, tmp_path / "run")
    original = {f: (run / f).read_bytes() for f in ("model.pt", "layers.csv")}
    state = torch.load(run / "model.pt", weights_only=True)
    key = next(k for k in state["model"] if k.endswith("conv.weight"))
    state["model"][key] = state["model"][key] * 3.0  # an altered model that still loads
    torch.save(state, run / "model.pt")
    rc, out, err = _rerun(run)
    assert rc == 0, err
    assert "model.pt changed" in out and "not trusted" in out, out
    assert "== stage train" in out
    # retrained with the same seed (one thread): the same weights and the same analysis as before the alteration
    assert same_weights(run / "model.pt", original["model.pt"])
    assert (run / "layers.csv").read_bytes() == original["layers.csv"]
    stages = json.loads((run / "stages.json").read_text())
    assert stages["train"]["sha256"]["model.pt"] == hashlib.sha256((run / "model.pt").read_bytes()).hexdigest()


def test_truncated_model_is_recomputed_and_refused_by_analyze(pipeline_run, tmp_path):
    (tmp_path / "tiny.toml").write_text(TOML)
    run = copy_run(pipeline_run, tmp_path / "run")
    good = (run / "model.pt").read_bytes()
    (run / "model.pt").write_bytes(good[: len(good) // 2])
    before = tree(run)
    rc, out, err = run_cli("analyze", "--run-dir", run, "--no-progress", cwd=tmp_path)
    assert_user_error(rc, out, err, "model.pt", "changed since stage train")
    assert tree(run) == before
    rc, out, err = _rerun(run)
    assert rc == 0, err
    assert same_weights(run / "model.pt", good)


def test_altered_probe_weights_are_not_read_by_afcc_or_report(pipeline_run, tmp_path):
    run = copy_run(pipeline_run, tmp_path / "run")
    with open(run / "probes.pt", "ab") as fh:
        fh.write(b"\0")
    before = tree(run)
    rc, out, err = run_cli("afcc", "--run-dir", run, "--no-progress", cwd=tmp_path)
    assert_user_error(rc, out, err, "probes.pt", "changed since stage probes")
    assert tree(run) == before
    with open(run / "layers.csv", "a") as fh:  # afcc reads every table too: the first changed file it meets
        fh.write("features.9,9,1,1,1\n")
    before = tree(run)
    rc, out, err = run_cli("afcc", "--run-dir", run, "--no-progress", cwd=tmp_path)
    assert_user_error(rc, out, err, "changed since stage")
    rc, out, err = run_cli("report", run, cwd=tmp_path)
    assert_user_error(rc, out, err, "layers.csv", "changed since stage sfp")
    assert tree(run) == before


# ------------------------------------------------------------------------------------------ 2

@pytest.mark.parametrize("args, needle", [
    (["--heatmaps", "features.7:1"], "features.7"), (["--heatmaps", "features.0:99"], "features.0:99"),
    (["--heatmaps", "features.0"], "features.0"), (["--cache-budget", "0"], "'0'"), (["--num-workers", "-1"], "-1"),
    (["--layers", "features.9"], "features.9"), (["--probe-lr", "1e308"], "probe_lr"),
    (["--cache-budget", "nan"], "nan")])
def test_refused_analyze_leaves_the_run_identical(pipeline_run, tmp_path, args, needle):
    run = copy_run(pipeline_run, tmp_path / "run")
    before = tree(run)
    rc, out, err = run_cli("analyze", "--run-dir", run, "--no-progress", *args, cwd=tmp_path)
    assert_user_error(rc, out, err, needle)
    assert tree(run) == before
    config = json.loads((run / "config.json").read_text())
    assert config["heatmaps"] == "auto" and config["num_workers"] == 0  # the bad value was not saved


# ------------------------------------------------------------------------------------------ 3

def test_second_run_of_the_demo_config_changes_nothing(tmp_path):
    run = tmp_path / "demo"
    rc, out, err = run_cli("run", REPO / "configs" / "demo.toml", "--run-dir", run, "--no-progress", cwd=tmp_path)
    assert rc == 0, err
    assert (run / "afcc.csv").exists()  # AFCC is on in the demo config
    files, times = tree(run), mtimes(run)
    rc, out, err = run_cli("run", REPO / "configs" / "demo.toml", "--run-dir", run, "--no-progress", cwd=tmp_path)
    assert rc == 0, err
    assert "does not match" not in out and "changed" not in out and "== stage" not in out, out
    assert "nothing read or written" in out, out  # every stage cached (not timed: the machines are shared)
    assert tree(run) == files and mtimes(run) == times  # no file rewritten


# ------------------------------------------------------------------------------------------ 4

@pytest.mark.parametrize("command", [["train", "--epochs", "1"], ["analyze"], ["afcc"], ["sweep"],
                                     ["run", str(REPO / "configs" / "demo.toml")]])
def test_empty_run_dir_is_refused(tmp_path, command):
    rc, out, err = run_cli(*command, "--run-dir", "", "--no-progress", cwd=tmp_path)
    assert_user_error(rc, out, err, "''", "empty")
    assert list(tmp_path.iterdir()) == []


def test_report_of_an_empty_path_is_refused(tmp_path):
    rc, out, err = run_cli("report", "", cwd=tmp_path)
    assert_user_error(rc, out, err, "empty")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ 5

HOLD = """
import sys, time
from filterlens.rundir import RunDir
with RunDir(sys.argv[1]).lock("filterlens analyze"):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], env=cli_env(), stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_command_is_refused_naming_the_holder(pipeline_run, tmp_path):
    run = copy_run(pipeline_run, tmp_path / "run")
    proc = _holder(run)
    try:
        before = tree(run)
        for args in (["analyze", "--run-dir", run, "--no-progress"], ["report", run],
                     ["afcc", "--run-dir", run, "--no-progress"],
                     ["run", run.parent.parent / "tiny.toml", "--run-dir", run, "--no-progress"]):
            if args[0] == "run":
                (run.parent.parent / "tiny.toml").write_text(TOML)
            rc, out, err = run_cli(*args, cwd=tmp_path)
            assert_user_error(rc, out, err, "in use by process", str(proc.pid), "filterlens analyze")
        assert tree(run) == before
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_left_by_a_killed_process_blocks_nothing(pipeline_run, tmp_path):
    run = copy_run(pipeline_run, tmp_path / "run")
    proc = _holder(run)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rc, out, err = run_cli("report", run, cwd=tmp_path)
    assert rc == 0, err
    assert not (run / ".filterlens.lock.json").exists()


# ------------------------------------------------------------------------------------------ 6

def test_temporary_files_of_a_killed_command_are_removed(pipeline_run, tmp_path):
    run = copy_run(pipeline_run, tmp_path / "run")
    # the names files._atomic gives them (tempfile.mkstemp: 8 random characters); the user's own ".draft.tmp" stays
    left = [run / ".layers.csv.x1y2z3ab.tmp", run / "heatmaps" / ".features.0-filter1.png.abcd_123.tmp"]
    (run / ".draft.tmp").write_bytes(b"mine")
    for p in left:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"half a file")
    rc, out, err = run_cli("report", run, cwd=tmp_path)
    assert rc == 0, err
    assert not any(p.exists() for p in left)
    assert (run / ".draft.tmp").read_bytes() == b"mine"


def test_a_folder_left_by_a_command_killed_while_marking_it_is_taken(tmp_path):
    """A command killed between writing the folder's marker to its temporary file and renaming it leaves its lock
    and that temporary file: the folder is still one filterlens is making (the seeds command's resume met one
    under CI). With a file of the user's beside them it is refused, as any folder holding the user's files."""
    for name, extra in (("killed", None), ("theirs", "notes.txt")):
        run = tmp_path / name
        run.mkdir()
        (run / ".filterlens.lock").write_bytes(b"")
        (run / ".filterlens.lock.json").write_text('{"pid": 999999, "command": "filterlens run", "since": "x"}')
        (run / "..filterlens.dtb1odn3.tmp").write_text('{"made_by": "filt')
        if extra:
            (run / extra).write_text("mine")
        rc, out, err = run_cli("train", "--run-dir", run, "--dataset", "digits", "--model", "vgg_tiny", "--epochs",
                               "1", "--no-progress", cwd=tmp_path)
        if extra:
            assert_user_error(rc, out, err, "is not a run directory", "notes.txt")
            assert (run / extra).read_text() == "mine"
        else:
            assert rc == 0, err
            assert json.loads((run / ".filterlens").read_text())["kind"] == "run"
            assert not (run / "..filterlens.dtb1odn3.tmp").exists()


# ------------------------------------------------------------------------------------------ issue 24, item 6
# A run directory is a folder filterlens made (marked) or an empty one; --overwrite deletes only what filterlens
# wrote. (The refusals, and --run-dir / or the home folder, are rows of tests/test_hostile.py.)

def test_overwrite_deletes_only_what_filterlens_wrote(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    mine = {"notes.txt": b"my notes", "heatmaps/mine.png": b"my picture", "cache/mine.bin": b"my bytes",
            ".notes.tmp": b"my temporary notes", "sub/results.json": b'{"mine": 1}'}
    for rel, data in mine.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(data)
    rc, out, err = run_cli("train", "--run-dir", run, "--dataset", "digits", "--model", "vgg_tiny", "--epochs", "1",
                           "--seed", "3", "--no-progress", "--overwrite", cwd=tmp_path)
    assert rc == 0, err
    for rel, data in mine.items():
        assert (run / rel).read_bytes() == data, rel
    assert json.loads((run / "config.json").read_text())["seed"] == 3


def test_analyze_keeps_the_users_pictures_and_temporary_files(pipeline_run, tmp_path):
    run = copy_run(pipeline_run, tmp_path / "run")
    (run / "heatmaps" / "mine.png").write_bytes(b"my picture")
    (run / ".draft.tmp").write_bytes(b"my draft")
    ours = sorted(p.name for p in (run / "heatmaps").glob("*-filter*.png"))
    rc, out, err = run_cli("analyze", "--run-dir", run, "--no-progress", "--threshold", "0.4", cwd=tmp_path)
    assert rc == 0, err
    assert (run / "heatmaps" / "mine.png").read_bytes() == b"my picture"
    assert (run / ".draft.tmp").read_bytes() == b"my draft"
    assert ours and sorted(p.name for p in (run / "heatmaps").glob("*-filter*.png"))  # filterlens' own, redrawn


def test_run_directories_of_earlier_versions_keep_working(pipeline_run, tmp_path):
    """A run directory without the marker: config.json + stages.json (this version before the marker), or
    config.json alone (an earlier filterlens, before stages.json): recognised, read, and marked once written."""
    recorded = copy_run(pipeline_run, tmp_path / "recorded")
    older = copy_run(pipeline_run, tmp_path / "older")
    for run in (recorded, older):
        (run / ".filterlens").unlink(missing_ok=True)
    (older / "stages.json").unlink()
    for run in (recorded, older):
        rc, out, err = run_cli("report", run, cwd=tmp_path)
        assert rc == 0, err
        rc, out, err = run_cli("analyze", "--run-dir", run, "--no-progress", "--threshold", "0.4", cwd=tmp_path)
        assert rc == 0, err
        assert json.loads((run / ".filterlens").read_text())["kind"] == "run"
