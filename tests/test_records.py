"""Typed results (issue 31, item 2): layers, units, claims and AFCC rows are documented records with
``to_frame()``, and one reader gives a run directory's Analysis however the analysis was made."""
from __future__ import annotations

import csv
import json

import pytest

import filterlens
from filterlens.errors import FilterlensError
from filterlens.records import AfccRecord, ClaimRecord, LayerRecord, Table, UnitRecord


def test_a_record_reads_as_attributes_and_as_a_read_only_mapping():
    r = LayerRecord.from_dict({"layer": "features.0", "index": 0, "unit_kind": "filter", "units": 8,
                               "features": 512, "accuracy": 0.75})
    assert r.accuracy == r["accuracy"] == 0.75 and r.snr is None and r.get("snr", 1) is None
    assert dict(r)["units"] == 8 and {**r}["layer"] == "features.0" and "snr" in r and "acc" not in r
    assert list(r) == LayerRecord.columns() and len(r) == len(LayerRecord.columns())
    with pytest.raises(KeyError):
        r["acc"]
    with pytest.raises(AttributeError):  # frozen: a row is what its stage computed
        r.accuracy = 0.9  # type: ignore[misc]
    assert json.loads(json.dumps(r.to_dict()))["accuracy"] == 0.75


@pytest.mark.parametrize("record, row, needle", [
    (LayerRecord, {"layer": "a", "index": 0, "unit_kind": "filter", "units": 1, "features": 1, "accuracy": 1,
                   "acuracy": 1}, "'acuracy'"),
    (LayerRecord, {"layer": "a"}, "lacks index"),
    (UnitRecord, {"layer": "a", "filter": 3}, "'filter'"),
    (ClaimRecord, ["claim", 1], "list"),
])
def test_a_row_with_an_unknown_or_missing_column_is_refused_in_one_line(record, row, needle):
    with pytest.raises(FilterlensError) as info:
        record.from_dict(row)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_table_frame_has_the_records_columns_in_file_order():
    rows = [{"layer": "x", "kind": "fc", "dilution": 0.5, "kept": 10, "total": 20}]
    t = Table(AfccRecord, rows)
    frame = t.to_frame()
    assert list(frame.columns) == AfccRecord.columns() and frame.loc[0, "kept"] == 10
    assert t.column("dilution") == [0.5]
    with pytest.raises(FilterlensError, match="no column 'dillution'"):
        t.column("dillution")


@pytest.fixture(scope="module")
def digits_analysis(tmp_path_factory):
    from filterlens.data import load_data
    from filterlens.models import ModelSpec, build_model

    model = build_model(ModelSpec("vgg_tiny", 10, 1, 8, 1.0, None))
    data = load_data("digits", train_samples=300, test_samples=200)
    a = filterlens.analyze(model, data, probe_epochs=1, heatmaps="none", bootstrap=20, progress=False)
    d = tmp_path_factory.mktemp("records") / "run"
    a.save(d)
    return model, data, a, d


def test_an_analysis_holds_typed_rows_whose_columns_are_its_files(digits_analysis):
    """The records' fields are the columns the saved files carry (read here with csv, not with filterlens)."""
    _, _, a, d = digits_analysis
    assert isinstance(a.layers, Table) and all(isinstance(r, LayerRecord) for r in a.layers)
    assert all(isinstance(r, UnitRecord) for r in a.units) and all(isinstance(c, ClaimRecord) for c in a.claims)
    for name, record in (("layers.csv", LayerRecord), ("filters.csv", UnitRecord)):
        with open(d / name, newline="") as fh:
            assert next(csv.reader(fh)) == record.columns(), name
    with open(d / "filters.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(a.units) == sum(r.units for r in a.layers)
    assert a.units[0].layer == a.layers[0].layer and a.units[0].unit == 0 and a.units[0].unit_kind == "filter"
    assert [c.claim for c in a.claims] == [c["claim"] for c in a.meta["claims"]]
    for name in ("layers", "units", "claims"):
        assert list(a.to_frame(name).columns) == a.table(name).record.columns()


def test_load_run_is_the_analysis_read_back(digits_analysis):
    """One reader and one object: ``filterlens.load_run`` returns the Analysis, equal row by row to the one that
    was saved, with the run's file tables beside it."""
    from filterlens.analysis import Analysis

    _, _, a, d = digits_analysis
    back = filterlens.load_run(d)
    assert isinstance(back, Analysis) and back.path == d and a.path is None
    assert back.layers == a.layers  # results.json keeps full precision: equal records
    assert [(u.layer, u.unit, u.clusters, u.noise) for u in back.units] == \
        [(u.layer, u.unit, u.clusters, u.noise) for u in a.units]
    assert back.claims == a.claims
    assert {"bootstrap"} <= set(back.tables()) and "bootstrap" not in a.tables()
    assert back.to_frame("bootstrap").shape[0] == len(a.meta["bootstrap"]["intervals"])
    assert back.results["layers"] == a.results["layers"] == a.layers.to_dicts()
    assert back.unit(a.layers[-1].layer, 2).clusters == a.unit(a.layers[-1].layer, 2).clusters
    with pytest.raises(FilterlensError, match="a saved run has its AFCC"):
        a.table("afcc")


def test_afcc_rows_and_claims_are_records(digits_analysis):
    model, data, a, _ = digits_analysis
    res = filterlens.afcc.apply(model, a, data, retrain_epochs=1, random_draws=1, progress=False)
    rows = res.rows()
    assert all(isinstance(r, AfccRecord) for r in rows) and rows[-1].kind == "fc"
    assert rows[-1].layer == a.layers[-1].layer and 0 < rows[-1].dilution < 1
    assert list(res.to_frame().columns) == AfccRecord.columns()
    assert [c.claim for c in res.claims] == [6]
    assert res.to_dict()["masked"] == rows.to_dicts()
