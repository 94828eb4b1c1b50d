"""The Python door (issue 24, items 5 and 15): every public entry point checks what the command line checks.

- ``filterlens.load_run`` (the run's Analysis: its ``layers``, ``table``, ``to_frame``, ``unit``) reads through
  the same checks as ``filterlens report``: the sha256 recorded in ``stages.json``, the shape of ``results.json``, the
  tables' rows, the types of the arguments;
- every public function given a wrong type or a bad value raises ``FilterlensError`` with one clear line
  (never AttributeError, TypeError or IndexError from deep inside).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import filterlens
from conftest import copy_run
from filterlens.errors import FilterlensError


@pytest.fixture(scope="module")
def analysed(tiny_run, tmp_path_factory) -> Path:
    """The shared tiny run, analysed in-process (1 probe epoch). Read-only: copy it to change it."""
    from filterlens.analysis import analyze_run

    run = copy_run(tiny_run, tmp_path_factory.mktemp("door") / "run")
    analyze_run(run, overrides={"probe_epochs": 1, "progress": False})
    return run


def _one_line(exc: pytest.ExceptionInfo, *needles: str) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in: {text}"
    return text


# ------------------------------------------------------------------------------ item 5: edited files

def test_load_run_refuses_an_edited_layers_csv(analysed, tmp_path):
    """`sed -i '2s/0\\.[0-9]/0.9/' layers.csv`: load_run read 0.9556 (recorded 0.8556) where report refuses."""
    run = copy_run(analysed, tmp_path / "c")
    lines = (run / "layers.csv").read_text().splitlines()
    lines[1] = lines[1].replace(",0.", ",0.9", 1)
    (run / "layers.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(FilterlensError) as info:  # every table is checked as the run is read
        filterlens.load_run(run)
    _one_line(info, "layers.csv", "changed since stage sfp")


def test_load_run_refuses_an_edited_results_json(analysed, tmp_path):
    run = copy_run(analysed, tmp_path / "c")
    res = json.loads((run / "results.json").read_text())
    res["layers"][0]["accuracy"] = 0.99
    (run / "results.json").write_text(json.dumps(res))
    with pytest.raises(FilterlensError) as info:
        filterlens.load_run(run)
    _one_line(info, "results.json", "changed since stage sfp")


def test_unit_refuses_edited_probe_weights(analysed, tmp_path):
    run = copy_run(analysed, tmp_path / "c")
    with open(run / "probes.pt", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(FilterlensError) as info:
        filterlens.load_run(run).unit("features.0", 0)
    _one_line(info, "probes.pt", "changed since stage probes")


def test_a_damaged_stages_json_is_refused_by_load_run(analysed, tmp_path):
    run = copy_run(analysed, tmp_path / "c")
    (run / "stages.json").write_text("[]")
    with pytest.raises(FilterlensError) as info:
        filterlens.load_run(run)
    _one_line(info, "stages.json")


# ------------------------------------------------------------------------------ item 15: shapes and types

def _unrecorded(analysed, tmp_path) -> Path:
    """A copy without stages.json (a run of an earlier filterlens): nothing is checked against a checksum, so
    the shape checks are what stands between a damaged file and a Python exception."""
    run = copy_run(analysed, tmp_path / "u")
    (run / "stages.json").unlink()
    return run


@pytest.mark.parametrize("content, needle", [
    ("[1, 2, 3]", "list"), ('{"version": 1, "layers": [{"layer": "features.0"}, {"layer": 5}]}', "layer"),
    ('{"version": 1, "layers": {"features.0": 1}}', "layers"), ('{"version": 1, "config": [1]}', "config"),
    ('{"version": 1, "label_names": [1, 2]}', "label_names"), ('{"version": 2}', "version"), ("", "results.json")])
def test_load_run_refuses_a_results_json_of_the_wrong_shape(analysed, tmp_path, content, needle):
    run = _unrecorded(analysed, tmp_path)
    (run / "results.json").write_text(content)
    with pytest.raises(FilterlensError) as info:
        filterlens.load_run(run)
    _one_line(info, needle)


def test_tables_of_the_wrong_shape_are_refused(analysed, tmp_path):
    run = _unrecorded(analysed, tmp_path)
    layers = (run / "layers.csv").read_text()
    (run / "layers.csv").write_text("layer,accuracy\nfeatures.0,0.5,7,8\n")  # a row longer than its header
    with pytest.raises(FilterlensError) as info:
        filterlens.load_run(run)
    _one_line(info, "layers.csv")
    (run / "layers.csv").write_text(layers)
    (run / "filters.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FilterlensError) as info:
        filterlens.load_run(run)
    _one_line(info, "filters.csv")


def test_unit_arguments_of_the_wrong_type_are_type_errors(analysed):
    """`unit('features.1', '3')` said "unit '3' is out of range; valid 0..15": the type is wrong, not the range."""
    r = filterlens.load_run(analysed)
    with pytest.raises(FilterlensError) as info:
        r.unit("features.1", "3")
    text = _one_line(info, "'3'", "int")
    assert "out of range" not in text
    for bad in (1.0, True, None, [3]):
        with pytest.raises(FilterlensError) as info:
            r.unit("features.1", bad)
        _one_line(info, "int")
    with pytest.raises(FilterlensError) as info:
        r.unit(1, 3)
    _one_line(info, "layer", "str")
    with pytest.raises(FilterlensError) as info:
        r.unit("features.1", 99)
    _one_line(info, "99", "out of range", "0..15")
    assert r.unit("features.1", 3).unit == 3


@pytest.mark.parametrize("name", [3, None, ["layers"], "nosuch"])
def test_table_names_of_the_wrong_type_or_unknown(analysed, name):
    r = filterlens.load_run(analysed)
    for read in (r.table, r.to_frame):
        with pytest.raises(FilterlensError) as info:
            read(name)
        _one_line(info, "table")


# ------------------------------------------------------------------------------ every public entry point

def _entry_points(analysed: Path, ws: Path):
    """(id, call, needles): each call gives a public function a wrong type or a bad value."""
    from filterlens.afcc import run_afcc
    from filterlens.analysis import Analysis, analyze, analyze_run
    from filterlens.config import Config
    from filterlens.data import load_data
    from filterlens.pipeline import run_pipeline
    from filterlens.report import build_compare, build_report
    from filterlens.sweep import run_sweep
    from filterlens.train import train

    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))
    digits = load_data("digits", train_samples=40, test_samples=40)
    cfg = Config(dataset="digits", model="vgg_tiny", epochs=1, progress=False)
    return [
        ("load_run-int", lambda: filterlens.load_run(5), ("5",)),
        ("load_run-none", lambda: filterlens.load_run(None), ("None",)),
        ("load_run-list", lambda: filterlens.load_run(["a"]), ("list",)),
        ("load_run-missing", lambda: filterlens.load_run(ws / "nosuch"), ("nosuch",)),
        ("load_run-file", lambda: filterlens.load_run(analysed / "layers.csv"), ("layers.csv",)),
        ("load_data-labels-int", lambda: load_data("digits", labels=3), ("labels", "3")),
        ("load_data-samples-str", lambda: load_data("digits", train_samples="10"), ("train_samples", "'10'")),
        ("load_data-name-int", lambda: load_data(5), ("5",)),
        ("analyze-model-str", lambda: analyze("m", digits), ("model", "str")),
        ("analyze-data-str", lambda: analyze(conv, "digits"), ("data", "str")),
        ("analyze-cfg-dict", lambda: analyze(conv, digits, config={}), ("config", "dict")),
        ("analyze-cache-dir-int", lambda: analyze(conv, digits, cache_dir=5), ("cache", "5")),
        ("analysis-save-int", lambda: Analysis([], [], None, {}, {}).save(5), ("5",)),
        ("analysis-load-int", lambda: Analysis.load(7), ("7",)),
        ("analyze_run-int", lambda: analyze_run(5), ("5",)),
        ("analyze_run-overrides-list", lambda: analyze_run(analysed, overrides=[1]), ("overrides", "list")),
        ("train-cfg-dict", lambda: train({}, ws / "t"), ("cfg", "dict")),
        ("train-run-dir-int", lambda: train(cfg, 5), ("5",)),
        ("run_pipeline-cfg-str", lambda: run_pipeline("a", ws / "p"), ("cfg", "str")),
        ("run_pipeline-from-int", lambda: run_pipeline(cfg, ws / "p", from_stage=3), ("3",)),
        ("run_sweep-counts-int", lambda: run_sweep(cfg, ws / "s", 5), ("5",)),
        ("run_sweep-cfg-none", lambda: run_sweep(None, ws / "s", "3,5"), ("cfg", "None")),
        ("run_sweep-jobs-str", lambda: run_sweep(cfg, ws / "s", "3,5", jobs="2"), ("jobs", "'2'")),
        ("run_sweep-shard-str", lambda: run_sweep(cfg, ws / "s", "3,5", shard="0/1"), ("shard", "'0/1'")),
        ("run_afcc-int", lambda: run_afcc(5), ("5",)),
        ("run_afcc-batch-str", lambda: run_afcc(analysed, {"retrain_batch_size": "100"}),
         ("retrain_batch_size", "'100'")),
        ("run_afcc-overrides-list", lambda: run_afcc(analysed, [1]), ("overrides", "list")),
        ("build_report-int", lambda: build_report(5), ("5",)),
        ("build_compare-out-int", lambda: build_compare([analysed], 5), ("5",)),
        ("build_compare-dirs-int", lambda: build_compare(5, ws / "o"), ("5",)),
        ("build_compare-dirs-list-of-int", lambda: build_compare([analysed, 7], ws / "o"), ("7",)),
    ]


ENTRY_IDS = ["load_run-int", "load_run-none", "load_run-list", "load_run-missing", "load_run-file",
             "load_data-labels-int", "load_data-samples-str", "load_data-name-int", "analyze-model-str",
             "analyze-data-str", "analyze-cfg-dict", "analyze-cache-dir-int", "analysis-save-int", "analysis-load-int",
             "analyze_run-int", "analyze_run-overrides-list", "train-cfg-dict", "train-run-dir-int",
             "run_pipeline-cfg-str", "run_pipeline-from-int", "run_sweep-counts-int", "run_sweep-cfg-none",
             "run_sweep-jobs-str", "run_sweep-shard-str", "run_afcc-int", "run_afcc-batch-str",
             "run_afcc-overrides-list", "build_report-int",
             "build_compare-out-int", "build_compare-dirs-int", "build_compare-dirs-list-of-int"]


@pytest.mark.parametrize("which", ENTRY_IDS)
def test_public_functions_refuse_wrong_types_in_one_line(analysed, tmp_path, which):
    calls = {i: (c, n) for i, c, n in _entry_points(analysed, tmp_path)}
    assert set(calls) == set(ENTRY_IDS)
    call, needles = calls[which]
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(FilterlensError) as info:
        call()
    _one_line(info, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created


def test_the_library_leaves_the_callers_random_state_alone(tmp_path):
    """analyze and afcc.apply seed their own work; the caller's Python, NumPy and torch generators are as they were
    (issue 31): the next draws after the calls equal the draws a copy of the state gives."""
    import random

    import numpy as np
    import torch

    import filterlens
    from filterlens.data import load_data
    from filterlens.models import ModelSpec, build_model

    model = build_model(ModelSpec("vgg_tiny", 10, 1, 8, 1.0, None))
    data = load_data("digits")
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    a = filterlens.analyze(model, data, probe_epochs=1, heatmaps="none", progress=False)
    filterlens.afcc.apply(model, a, data, retrain_epochs=1, random_draws=1, progress=False)
    assert random.getstate() == states[0]
    now = np.random.get_state()
    assert now[0] == states[1][0] and (now[1] == states[1][1]).all() and now[2:] == states[1][2:]
    assert torch.equal(torch.get_rng_state(), states[2])


def test_threads_setting_is_used_inside_and_the_callers_count_comes_back(monkeypatch):
    """``threads=1`` is torch's thread count while analyze and afcc.apply work (seen from inside a layer's forward)
    and the caller's count is back afterwards, as with the generators above."""
    import torch

    import filterlens
    from filterlens.data import load_data
    from filterlens.models import ModelSpec, build_model

    model = build_model(ModelSpec("vgg_tiny", 10, 1, 8, 1.0, None))
    data = load_data("digits")
    seen: set[int] = set()
    model.features[0].register_forward_hook(lambda *_: seen.add(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = filterlens.analyze(model, data, probe_epochs=1, heatmaps="none", threads=1, progress=False)
        assert seen == {1} and torch.get_num_threads() == 2
        seen.clear()
        filterlens.afcc.apply(model, a, data, retrain_epochs=1, random_draws=1, threads=1, progress=False)
        assert seen == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_single_unit_stage_uses_the_threads_setting_and_records_it(monkeypatch):
    """Stage 3 on its own (as ``filterlens run`` calls it, after the probe stage gave the caller's count back)
    works at ``threads`` and records that count in the result's environment; the caller's count comes back."""
    import torch

    from filterlens import sfp
    from filterlens.analysis import probe_stage, sfp_stage
    from filterlens.config import Config
    from filterlens.data import load_data
    from filterlens.models import ModelSpec, build_model

    model = build_model(ModelSpec("vgg_tiny", 10, 1, 8, 1.0, None))
    data = load_data("digits")
    cfg = Config(probe_epochs=1, bootstrap=3, progress=False, threads=1)
    seen: set[int] = set()
    analyze_layer = sfp.analyze_layer

    def watched(*args, **kwargs):
        seen.add(torch.get_num_threads())
        return analyze_layer(*args, **kwargs)

    monkeypatch.setattr(sfp, "analyze_layer", watched)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pr = probe_stage(model, data, cfg, keep_fields=True)
        assert torch.get_num_threads() == 2  # the probe stage gave the caller's count back
        result = sfp_stage(pr, data.describe(), cfg)
        assert seen == {1} and torch.get_num_threads() == 2
        assert result.meta["environment"]["threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_units_is_the_name_and_filters_the_alias():
    """One name per concept (issue 31): a layer's, a probe result's and an analysis' units are ``units``;
    ``filters``, the name from before heads and nodes, gives the same values."""
    import filterlens
    from filterlens.data import load_data
    from filterlens.models import ModelSpec, build_model, list_layers

    model = build_model(ModelSpec("vgg_tiny", 10, 1, 8, 1.0, None))
    data = load_data("digits")
    layers = list_layers(model, data.input_shape)
    assert [l.units for l in layers] == [l.filters for l in layers] and layers[0].units > 0
    a = filterlens.analyze(model, data, layers=[layers[-1].name], probe_epochs=1, heatmaps="none", progress=False)
    assert a.filters is a.units and len(a.units) == layers[-1].units
    assert [r.units for r in a.probes.layers] == [r.filters for r in a.probes.layers] == [layers[-1].units]
    assert a.to_frame("units").equals(a.to_frame("filters")) and len(a.to_frame("units")) == layers[-1].units
    with pytest.raises(FilterlensError, match="units"):
        a.to_frame("neurons")


def test_busy_threads_note_names_the_free_cores():
    """The note appears only when the threads outnumber the cores left free, and names the count to give."""
    import os

    from filterlens.utils import busy_threads_note

    cores = len(os.sched_getaffinity(0))
    assert busy_threads_note(cores, busy=0) is None
    assert busy_threads_note(1, busy=cores) is None  # one thread always has a core to itself
    if cores > 1:
        note = busy_threads_note(cores, busy=1)
        assert note is not None and f"--threads {cores - 1} " in note and f"keep 1 of the {cores} cores" in note


def test_busy_cores_sees_a_spinning_process():
    """busy_cores counts a process that keeps a core busy (a child spinning for a few seconds)."""
    import subprocess
    import sys
    import time

    from filterlens.utils import busy_cores

    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 20: pass"])
    try:
        time.sleep(0.5)
        assert (busy_cores() or 0) >= 1
    finally:
        spin.kill()
        spin.wait()


def test_python_values_equal_the_command_lines_strings():
    """analyze with Python values (a list of layers, a predicate, a list of thresholds, a pool as a tuple, a budget in
    bytes, heatmaps as pairs) gives the same analysis as with the strings the command line takes (issue 31)."""
    import filterlens
    from filterlens.config import python_values
    from filterlens.data import load_data
    from filterlens.models import ModelSpec, build_model

    assert python_values({"layers": ["features.0", -1], "thresholds": [0.2, 0.4], "probe_pool": (2, 2),
                          "cache_budget": 2**30, "heatmaps": [("features.0", 3)], "afcc_thresholds": 0.3}) == {
        "layers": "features.0,-1", "thresholds": "0.2,0.4", "probe_pool": "2x2", "cache_budget": "1073741824",
        "heatmaps": "features.0:3", "afcc_thresholds": "0.3"}
    for bad in ({"probe_pool": (4,)}, {"thresholds": ["0.2"]}, {"layers": []}, {"heatmaps": [("a", "1")]}):
        with pytest.raises(FilterlensError, match=next(iter(bad))):
            python_values(bad)
    model = build_model(ModelSpec("vgg_tiny", 10, 1, 8, 1.0, None))
    data = load_data("digits")
    quiet = dict(probe_epochs=2, progress=False)
    by_strings = filterlens.analyze(model, data, layers="features.0,features.1", thresholds="0.2,0.4",
                                    probe_pool="2x2", cache_budget="1073741824", heatmaps="features.0:3", **quiet)
    by_python = filterlens.analyze(model, data, layers=["features.0", "features.1"], thresholds=[0.2, 0.4],
                                   probe_pool=(2, 2), cache_budget=2**30, heatmaps=[("features.0", 3)], **quiet)
    by_predicate = filterlens.analyze(model, data, layers=lambda l: l.name in ("features.0", "features.1"),
                                      thresholds=[0.2, 0.4], probe_pool=(2, 2), cache_budget=2**30,
                                      heatmaps=[("features.0", 3)], **quiet)
    for other in (by_python, by_predicate):
        assert other.meta["config"] == by_strings.meta["config"]
        assert [r["accuracy"] for r in other.layers] == [r["accuracy"] for r in by_strings.layers]
        assert other.meta["thresholds"] == by_strings.meta["thresholds"]
        for name in by_strings.sfp:
            assert (other.sfp[name].matrices_ == by_strings.sfp[name].matrices_).all()
