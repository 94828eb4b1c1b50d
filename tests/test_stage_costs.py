"""benchmarks/stage_costs.py at tiny scale: it runs `filterlens run` and copies every stage's seconds and peak
memory from the run's stages.json into its JSON entry; a second call on the finished run reads, runs nothing."""
import importlib.util
import json
from pathlib import Path

from conftest import tiny_toml

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "stage_costs.py"


def test_stage_costs_records_each_stage_and_reads_a_finished_run(tmp_path):
    spec = importlib.util.spec_from_file_location("stage_costs", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_toml(epochs="1", probe_epochs=1))
    run, out = tmp_path / "run", tmp_path / "costs.json"
    assert mod.main(["--config", str(cfg), "--run-dir", str(run), "--threads", "1", "--out", str(out)]) == 0
    entry = json.loads(out.read_text())
    recorded = json.loads((run / "stages.json").read_text())
    assert set(entry["stages"]) == set(recorded) - {"config"} >= {"train", "probes", "sfp"}
    for name, cost in entry["stages"].items():
        assert cost["seconds"] == recorded[name]["seconds"]
        assert cost["peak_memory_bytes"] == recorded[name]["peak_memory_bytes"] > 0
    assert set(entry["ran_now"]) == set(entry["stages"]) and entry["results"]["labels"] == 10
    assert mod.main(["--config", str(cfg), "--run-dir", str(run), "--threads", "1", "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    assert again["ran_now"] == [] and again["stages"] == entry["stages"]
