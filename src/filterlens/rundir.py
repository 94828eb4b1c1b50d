"""The run directory: its config and its files.

A run directory holds ``config.json`` (the resolved settings) and every file a
stage writes. A directory that already holds a run with different settings is
refused unless ``overwrite`` is given, so nothing is silently mixed or lost.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .config import Config
from .errors import FilterlensError
from .files import read_json, write_json

# files a run may write; --overwrite removes only these
RUN_FILES = ("config.json", "checkpoint.pt", "model.pt", "train_log.csv", "train.json", "results.json",
             "layers.csv", "filters.csv", "probes.pt", "label_means.pt", "probes.json", "accuracy.png", "clusters.png",
             "thresholds.csv", "bootstrap.csv", "heatmaps", "cache", "stages.json",
             "report.html", "afcc.csv", "afcc.png", "afcc_model.pt", "afcc_pruning.csv", "afcc_thresholds.csv",
             "afcc_pruned.pt", "sweep")


class RunDir:
    def __init__(self, path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self, name: str) -> bool:
        return (self.path / name).exists()

    def read_json(self, name: str):
        try:
            return read_json(self.path / name)
        except ValueError:
            raise FilterlensError(f"'{self.path / name}' is not valid JSON (damaged?); remove it or use --overwrite") from None

    def remove(self, name: str) -> None:
        from .distributed import check_write

        p = self.path / name
        check_write(p)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()

    def check(self, cfg: Config, overwrite: bool = False, stage: str = "train") -> bool:
        """Refuse (without writing anything) a directory holding a run with other ``stage`` settings.

        Returns True when the directory holds a run with the same ``stage`` settings.
        """
        if self.path.exists() and not self.path.is_dir():
            raise FilterlensError(f"run directory '{self.path}' exists and is not a directory")
        if not self.exists("config.json"):
            return False
        try:
            old = Config.from_dict(self.read_json("config.json"))
        except FilterlensError:
            old = None
        if old is not None and old.stage_hash(stage) == cfg.stage_hash(stage):
            return True
        if not overwrite:
            diff = _differences(old, cfg, stage) if old else ["unreadable config.json"]
            raise FilterlensError(
                f"run directory '{self.path}' holds a run with another config ({'; '.join(diff[:3])}); "
                "use --overwrite to replace it or choose another --run-dir")
        return False

    def claim(self, cfg: Config, overwrite: bool = False, stage: str = "train") -> None:
        """Make ``path`` this run's directory (after :meth:`check`); with ``overwrite`` remove the old run's files.

        Call it only once the new settings have been validated, so a refused command damages nothing.
        """
        from .distributed import check_write

        check_write(self.path)
        same = self.check(cfg, overwrite, stage)
        if overwrite and not same:
            for name in RUN_FILES:
                self.remove(name)
        self.path.mkdir(parents=True, exist_ok=True)
        if self.exists("config.json"):
            try:
                if self.read_json("config.json") == json.loads(json.dumps(cfg.to_dict())):
                    return  # unchanged: leave the file alone
            except FilterlensError:
                pass
        write_json(self.file("config.json"), cfg.to_dict())


def _differences(old: Config, new: Config, stage: str) -> list[str]:
    from .config import STAGES, fields

    upto = STAGES[: STAGES.index(stage) + 1]
    out = []
    for f in fields(Config):
        if f.metadata["stage"] in upto and getattr(old, f.name) != getattr(new, f.name):
            out.append(f"{f.name}: {getattr(old, f.name)!r} there, {getattr(new, f.name)!r} now")
    return out or ["settings differ"]
