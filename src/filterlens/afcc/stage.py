"""AFCC on an analysed run directory (``filterlens afcc`` and the afcc stage of ``filterlens run``): load,
:func:`~.apply.apply`, write.

The run's model, data and analysis are read back (every file checked against the checksum its stage
recorded), AFCC runs in memory with the run's settings and the ``overrides`` over them, and its files are
written: ``afcc.csv``, ``afcc_thresholds.csv``, ``afcc_pruning.csv``, ``afcc.png``, ``afcc_model.pt``,
``afcc_pruned.pt`` and the ``afcc`` and ``afcc_pruned`` entries of results.json (other entries kept).
"""
from __future__ import annotations

import hashlib
import time

from .. import claims
from ..config import Config
from ..errors import FilterlensError
from ..files import write_json
from ..names import AFCC_PRUNED, AFCC_PRUNING, LABEL_MEANS, PROBES, RESULTS
from ..output import say
from ..rundir import RunDir
from ..utils import environment, keeps_global_state
from .apply import apply


@keeps_global_state
def run_afcc(run_dir, overrides: dict | None = None, progress: bool | None = None,
             settings_hash: str | None = None) -> dict:
    """AFCC on the analysed run ``run_dir`` with its settings and ``overrides`` (fields of :class:`Config`);
    returns what it adds to results.json (the ``afcc`` entry, with ``pruned`` and ``run_dir``)."""
    from ..analysis import Analysis, with_settings
    from ..checks import of_type
    from ..train import load_trained

    rd = RunDir(RunDir.validate(run_dir))
    of_type(overrides, (dict, type(None)), "overrides", "a dict of settings, e.g. {'retrain_epochs': 1}")
    if not rd.path.is_dir():
        raise FilterlensError(f"run directory '{rd.path}' does not exist; train and analyse a run first")
    with rd.lock("filterlens afcc"):
        for name in (PROBES, LABEL_MEANS, RESULTS):
            if not rd.exists(name):
                raise FilterlensError(f"'{rd.path}' has not been analysed (no {name}); run filterlens analyze "
                                      f"--run-dir {rd.path} first")
        analysis = Analysis.load(rd.path)
        cfg = with_settings(analysis.config, dict(overrides or {}))  # every setting checked before any work
        model, run_cfg, data, spec = load_trained(rd.path)
        analysis.data, analysis.meta["spec"] = data, spec
        t0 = time.perf_counter()
        result = apply(model, analysis, config=cfg, progress=progress)
        result.meta["title"] = f"AFCC: {spec.model} on {data.name}, {result.layers[0]}" + \
            (f"..{result.layers[-1]}" if len(result.layers) > 1 else "")
        files = result.write(rd.path)
        afcc = {**result.to_dict(), "environment": environment()}
        afcc["timings"]["total_s"] = time.perf_counter() - t0
        if result.pruned_model is None:  # an earlier AFCC's removal does not describe this one
            for stale in (AFCC_PRUNED, AFCC_PRUNING):
                if rd.exists(stale):
                    rd.remove(stale)
        results = rd.read_results()  # re-read (verified): keep every other key as it is now
        results["afcc"] = afcc
        results["afcc_pruned"] = result.pruned
        claim_rows = claims.afcc_claims(afcc)  # claim 6, next to the analysis' claims 1-3
        results["claims"] = claims.merge(results.get("claims") or [], claim_rows)
        write_json(rd.file(RESULTS), results)
        rd.record("afcc", settings_hash or _standalone_hash(run_cfg, cfg), files + [RESULTS],
                  time.perf_counter() - t0)
        return {**afcc, "pruned": result.pruned, "run_dir": str(rd.path), "claims": claim_rows}


def _standalone_hash(run_cfg: Config, cfg: Config) -> str:
    """The settings hash ``filterlens run`` gives this AFCC when it ran with the run's own analysis settings (so a
    later run finds it done), or a hash of its own when an override changed an earlier stage's setting."""
    h = cfg.stage_hash("afcc")
    if run_cfg.stage_hash("sfp") == cfg.stage_hash("sfp"):
        return h
    return "custom-" + hashlib.sha256(h.encode()).hexdigest()[:16]


def print_afcc(out: dict) -> None:
    """The short table the CLI prints."""
    a = out["accuracy"]
    say(f"AFCC on {', '.join(out['layers'])} at threshold {out['threshold']:g}; retraining: "
         f"{out['retrain']['epochs']} epoch(s), lr {out['retrain']['lr']:g} ({out['retrain']['engine']})")
    say(f"{'layer':<16}{'kind':<6}{'dilution':>9}{'kept':>10}{'total':>10}{'no-conn units':>17}")
    for r in out["masked"]:
        say(f"{r['layer']:<16}{r['kind']:<6}{r['dilution']:>9.4f}{r['kept']:>10}{r['total']:>10}"
             f"{r['filters_without_connection']:>17}")
    n = a.get("random_draws", 1)
    spread = f" ± {a['random_retrained_sd']:.4f} (sd of {n} draws)" if n > 1 else ""
    say(f"accuracy: before {a['before']:.4f}  masked {a['masked']:.4f}  retrained {a['retrained']:.4f}  |  random"
         f"{' (mean)' if n > 1 else ''}: masked {a['random_masked']:.4f}  "
         f"retrained {a['random_retrained']:.4f}{spread}")
    p = out.get("pruned") or {}
    if p.get("supported"):
        f = "; ".join(f"{k} {v['filters_before']}->{v['filters_after']}" for k, v in p["filters"].items())
        say(f"physical removal: units {f}; params {p['original']['params']} -> {p['pruned']['params']}; MACs "
             f"{p['original']['macs']} -> {p['pruned']['macs']}; CPU latency (batch {p['latency']['batch']}) "
             f"{p['original']['latency_ms']:.2f} -> {p['pruned']['latency_ms']:.2f} ms (paired speed-up "
             f"x{p['speedup']:.2f}); accuracy pruned "
             f"{p['accuracy']['pruned']:.4f}, from retrained {p['accuracy']['pruned_retrained']:.4f}")
    else:
        say(f"physical removal: {p.get('reason', 'not supported')}")
    say(f"{'threshold':>9}{'dilution':>10}{'AFCC':>8}{'random':>8}   (accuracy after retraining)")
    for r in out["thresholds"]:
        say(f"{r['threshold']:>9g}{r['dilution']:>10.4f}{r['acc_retrained']:>8.4f}{r['acc_random_retrained']:>8.4f}")
    for line in claims.format_table(out.get("claims") or []):
        say(line)
    say(f"files in {out.get('run_dir', '.')}: {', '.join(out['files'])} (results.json: afcc, afcc_pruned, claims)")


