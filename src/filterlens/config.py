"""Every setting of a run, in one place.

Each field of :class:`Config` is a command-line flag (``--field-name``) and a
key of a run's ``config.json``; its metadata says which stage it belongs to
(``data``, ``model``, ``train``, ``probes``, ``sfp``, ``run``) and its help text.
A stage's results are keyed by :meth:`Config.stage_hash`, which hashes the
settings of that stage and of every stage before it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Protocol

from .checks import is_int_text, parse_int
from .errors import FilterlensError, closest

# the settings whose empty value has a meaning of its own, stated in their help (every other empty value is refused:
# an empty string is never read as a default)
# the binarisation threshold of the unit matrices (METHOD.md stage 3, item 2): --threshold's default, filterlens.sfp's
# and what a reader of an older results.json without one assumes
DEFAULT_THRESHOLD = 0.3
EMPTY_MEANS = ("thresholds", "afcc_thresholds", "afcc_layers", "num_labels")
STAGES = ("data", "model", "train", "probes", "sfp", "afcc", "sweep", "run")
# the stages of `filterlens run`, in the order they run (each keyed by Config.stage_hash)
STAGE_ORDER = ("train", "probes", "sfp", "afcc", "sweep", "report")
# the settings each stage's results depend on
DEPENDS = {
    "data": ("data",),
    "model": ("data", "model"),
    "train": ("data", "model", "train"),
    "probes": ("data", "model", "train", "probes"),
    "sfp": ("data", "model", "train", "probes", "sfp"),
    "afcc": ("data", "model", "train", "probes", "sfp", "afcc"),
    "sweep": ("data", "model", "train", "probes", "sfp", "sweep"),
}


def _f(default, stage: str, help: str, choices=None, flag=True, bounds: str | None = None):
    """A setting: its default, stage, help, and for numbers the interval it must lie in, e.g. "(0, 10]"."""
    if bounds:
        help = f"{help}; in {bounds}"
    return field(default=default, metadata={"stage": stage, "help": help, "choices": choices, "flag": flag,
                                            "bounds": bounds})


@dataclass
class Config:
    """The settings of one run (see the module docstring): each field a ``--flag`` and a key of config.json, its
    stage, help text and bounds in its metadata; :meth:`validate` checks them all."""

    # data
    dataset: str = _f("digits", "data", "dataset name: digits, mnist, fashion-mnist, cifar10, cifar100, imagenet, "
                                        "imagefolder, glyphs")
    data_dir: str | None = _f(None, "data", "folder with the dataset files (default: Debian's Fashion-MNIST path, "
                                            "data/<dataset>; glyphs: its render cache, ~/.cache/filterlens/glyphs)")
    labels: str = _f("all", "data", "label subset: all, first:K, random:K:SEED, or a list of names/indices")
    download: bool = _f(False, "data", "download CIFAR through torchvision when the files are absent (needs internet)")
    image_size: int | None = _f(None, "data", "input size: every split (train and test) resized to N x N (glyphs: "
                                              "rendered at N x N; default: the dataset's own, 224 for folders)",
                                bounds="[8, 2048]")
    train_samples: int = _f(0, "data", "use a seeded random subset of this many training samples (0: all)",
                            bounds="[0, 1000000000]")
    test_samples: int = _f(0, "data", "use a seeded random subset of this many test samples (0: all)",
                           bounds="[0, 1000000000]")
    # model
    model: str = _f("vgg_small", "model", "architecture: vgg16, vgg16_fc (two hidden FC "
                                          "layers), vgg16_slim, vgg_small, vgg_tiny, vgg11, vgg "
                                          "(with --vgg-cfg), vgg16_imagenet, efficientnet_b0, any torchvision model, "
                                          "timm:<name>, or your own: path/to/file.py:factory or "
                                          "package.module:callable")
    width_mult: float = _f(1.0, "model", "width multiplier of our VGG models", bounds="(0, 16]")
    vgg_cfg: str | None = _f(None, "model", "explicit VGG widths for --model vgg, e.g. 16,16,M,32,M; "
                                               "F<n> entries after the convs add hidden FC layers: 16,M,32,M,F64,F64")
    weights: str | None = _f(None, "model", "torchvision pretrained weights name (DEFAULT, IMAGENET1K_V1, ...)")
    checkpoint: str | None = _f(None, "model", "start from this checkpoint (filterlens or plain state_dict); {seed} "
                                               "in the path is the run's seed (one checkpoint per seed with --seeds)")
    # train
    epochs: int = _f(15, "train", "training epochs (0: use the weights as they are)", bounds="[0, 100000]")
    min_steps: int = _f(0, "train", "train for at least this many optimiser steps: the epochs are raised where "
                                    "--epochs gives fewer (a small label subset's few batches per epoch; 0: "
                                    "--epochs as given)", bounds="[0, 100000000]")
    batch_size: int = _f(64, "train", "training mini-batch size", bounds="[1, 65536]")
    lr: float = _f(0.05, "train", "SGD learning rate", bounds="(0, 10]")
    momentum: float = _f(0.9, "train", "SGD (Nesterov) momentum", bounds="[0, 1)")
    weight_decay: float = _f(5e-4, "train", "SGD weight decay", bounds="[0, 1]")
    optimizer: str = _f("sgd", "train", "sgd (Nesterov momentum, the papers' recipe) or adamw (--momentum unused; "
                                        "the usual choice for vision transformers)", choices=("sgd", "adamw"))
    schedule: str = _f("cosine", "train", "learning-rate schedule", choices=("cosine", "step", "constant"))
    warmup_epochs: int = _f(0, "train", "epochs of linear learning-rate warm-up before the schedule (fewer "
                                             "than the training's epochs)",
                            bounds="[0, 100000]")
    step_epochs: int = _f(30, "train", "step schedule: epochs between decays", bounds="[1, 100000]")
    gamma: float = _f(0.1, "train", "step schedule: decay factor", bounds="(0, 1]")
    augment: bool = _f(True, "train", "training augmentation (padded random crop, flip where the dataset allows)")
    amp: bool = _f(True, "train", "mixed precision: bfloat16 autocast where the hardware has it (CUDA; CPUs with "
                                  "AMX or AVX512-BF16: every inference, and training where convolutions dominate), "
                                  "float32 elsewhere; --no-amp: float32 everywhere")
    # probes (METHOD.md stage 2)
    layers: str = _f("all", "probes", "layers to analyse, comma-separated: all (every "
                                        "block), nodes (the hidden FC layers of a classifier head, every transformer "
                                        "MLP), indices (negative ok), last:N, or dotted names")
    probe_mode: str = _f("fast", "probes", "fast: cache features once, train probes from the cache; paper: the "
                                           "authors' recipe, one forward pass per epoch for all layers",
                         choices=("fast", "paper"))
    probe_epochs: int | None = _f(None, "probes", "epochs of every layer's FC probe (default: 30 in fast mode, "
                                                  "200 in paper mode; an untrained probe measures nothing, so at "
                                                  "least 1)", bounds="[1, 100000]")
    probe_lr: float | None = _f(None, "probes", "probe learning rate (default: 1e-2 Adam in fast mode, 0.01 SGD in "
                                                "paper mode)", bounds="(0, 10]")
    probe_batch_size: int = _f(100, "probes", "probe mini-batch size (paper: 100)", bounds="[1, 65536]")
    probe_weight_decay: float | None = _f(None, "probes", "probe weight decay (default: 0 fast, 1e-3 paper)",
                                          bounds="[0, 1]")
    probe_pool: str = _f("none", "probes", "adaptive max-pool of each layer's map before its FC: none, HxW (e.g. 4x4), "
                                           "or max:N (pool to at most N features)")
    tokens: str = _f("all", "probes", "transformer blocks: the tokens each head's probe reads: all (tokens x d_head), "
                                       "cls (the class token) or mean (the mean over tokens)",
                     choices=("all", "cls", "mean"))
    probe_augment: bool = _f(False, "probes", "training augmentation during probe training (the authors: on; "
                                              "forces streaming)")
    engine: str = _f("auto", "probes", "how the probes get their features: auto (memory when the cache fits the "
                                       "budget, else the cheapest of groups, disk and stream by measured speed), "
                                       "memory, groups (one capture pass per group of layers that fits), disk (a "
                                       "memory-mapped cache in --cache-dir), stream (one forward pass per epoch)",
                     choices=("auto", "memory", "groups", "disk", "stream"))
    cache_budget: str = _f("auto", "probes", "bytes of cached float16 features (e.g. 500M, 4G; auto: 40%% of the "
                                             "available memory, at most 16G); above it, --engine decides")
    probe_seeds: int = _f(1, "probes", "probes trained per layer, each from its own seed (initial weights and "
                                       "sample order); the first is the layer's probe, and bootstrap replicate b "
                                       "reads probe b mod N, so the intervals carry the probes' own training noise",
                          bounds="[1, 100]")
    top_images: int = _f(8, "probes", "per unit and output unit, remember the test images with the largest field "
                                       "(the report's thumbnails; 0: none)", bounds="[0, 64]")
    # sfp (METHOD.md stage 3)
    threshold: float = _f(DEFAULT_THRESHOLD, "sfp", "binarisation threshold of the normalised unit matrices",
                          bounds="(0, 1)")
    normalise: str = _f("max", "sfp", "filter-matrix normalisation", choices=("max", "column-centred"))
    thresholds: str = _f("", "sfp", "also report every layer's summary at these thresholds, e.g. 0.1,0.2,0.3,0.4,0.5 "
                                      "(empty: none)")
    bootstrap: int = _f(0, "sfp", "resample the test set N times for 95%% intervals of every layer metric (0: off)",
                        bounds="[0, 100000]")
    explorer_units: int = _f(32, "sfp", "units per layer shown with thumbnails and matrices in report.html's "
                                        "explorer (the most and least noisy, and the heatmaps' ones); the rest as "
                                        "numbers (0: every unit as numbers only)", bounds="[0, 100000]")
    heatmaps: str = _f("auto", "sfp", "filter heatmaps to draw: auto (3 filters of the first, middle and last "
                                      "layer), none, or LAYER:FILTER,...")
    # afcc (METHOD.md stage 5)
    afcc: bool = _f(True, "afcc", "run AFCC in `filterlens run`")
    afcc_layers: str = _f("", "afcc", "layers whose cluster connections are kept: one layer (FC mask) or "
                                       "consecutive analysed layers (conv masks between them + the deepest FC), e.g. "
                                       "-1 or last:3 (empty: the deepest analysed layer)")
    retrain_epochs: int = _f(3, "afcc", "epochs of masked retraining (masks re-applied after every step; 0: no "
                                      "retraining, the masked accuracies stand for the retrained ones)",
                        bounds="[0, 100000]")
    retrain_lr: float = _f(0.01, "afcc", "SGD learning rate of masked retraining (constant)", bounds="(0, 10]")
    retrain_momentum: float = _f(0.9, "afcc", "SGD momentum of masked retraining (no Nesterov)", bounds="[0, 1)")
    retrain_weight_decay: float = _f(0.0, "afcc", "weight decay of masked retraining", bounds="[0, 1]")
    retrain_batch_size: int = _f(100, "afcc", "mini-batch size of masked retraining", bounds="[1, 65536]")
    retrain_augment: bool = _f(False, "afcc", "the dataset's training augmentation during masked retraining")
    random_draws: int = _f(3, "afcc", "random-control draws per threshold (mean and sd reported)", bounds="[1, 1000]")
    afcc_thresholds: str = _f("0.2,0.3,0.4", "afcc", "thresholds of the AFCC accuracy-against-dilution plot (empty: "
                                                         "the main --threshold only)")
    latency_batch: int = _f(64, "afcc", "batch size of the CPU latency of the original, masked and pruned networks",
                            bounds="[1, 65536]")
    latency_repeats: int = _f(10, "afcc", "timed repeats of that latency (median and quartiles reported)",
                              bounds="[1, 100000]")
    # sweep (METHOD.md stage 4)
    num_labels: str = _f("", "sweep", "label counts of the label-count study, e.g. 3,5,10,20,50,100 (empty: no "
                                      "sweep in `filterlens run`)")
    subsets: int = _f(3, "sweep", "seeded label subsets per count (the full label set once)", bounds="[1, 1000]")
    sweep_layers: str = _f("-1", "sweep", "layers analysed (stages 2-3) in every model of the sweep")
    # run-wide (not part of any result's identity)
    seed: int = _f(0, "train", "one seed for Python, NumPy, torch and the loaders", bounds="[0, 4294967295]")
    device: str = _f("auto", "run", "auto, cpu, cuda or cuda:N")
    cache_dir: str | None = _f(None, "run", "folder of the disk engine's feature cache (default: cache/ in the run "
                                            "directory, or a temporary folder outside one)")
    threads: int = _f(0, "run", "CPU threads torch uses (0: torch's default, one per core); where other jobs keep "
                                "cores busy, the free cores: threads sharing a busy core run many times slower",
                      bounds="[0, 1024]")
    num_workers: int = _f(0, "run", "DataLoader workers for folder datasets (0: read in this process)",
                          bounds="[0, 64]")
    compile: bool = _f(False, "run", "torch.compile the network for training (worth it on GPUs)")
    progress: bool = _f(True, "run", "progress bars (off when not a terminal)")

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict:
        """Every setting by field name (config.json's table)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config", stored: bool = False) -> "Config":
        """The settings of ``d`` (every key a field), validated. ``stored``: ``d`` is a run's own record
        (config.json, results.json), where an earlier filterlens wrote an unset optional setting as ""."""
        if not isinstance(d, dict):
            raise FilterlensError(f"{source} holds a {type(d).__name__}, not a table of settings (damaged?)")
        names = [f.name for f in fields(cls)]
        for k in d:
            if k not in names:
                raise FilterlensError(f"unknown key '{k}' in {source}{closest(k, names)}")
        if stored:  # an earlier filterlens wrote an empty optional setting as "": it meant none
            d = {k: None if v == "" and default_of(_FIELDS[k]) is None else v for k, v in d.items()}
        cfg = cls(**{k: v for k, v in d.items()})
        cfg.validate()
        return cfg

    def replace(self, **kw) -> "Config":
        """A copy with the settings ``kw`` changed, validated (an unknown name is refused in one line)."""
        d = self.to_dict()
        d.update(kw)
        return Config.from_dict(d)

    def validate(self) -> "Config":
        """Check every setting before any work: type, choices, numeric interval, syntax (one line each)."""
        for f in fields(self):
            v = getattr(self, f.name)
            want = f.type if isinstance(f.type, str) else str(f.type)
            base = want.replace(" | None", "")
            if v is None:
                if "None" not in want:
                    raise FilterlensError(f"setting '{f.name}' may not be empty; expected {base}")
                continue
            ok = {"int": isinstance(v, int) and not isinstance(v, bool),
                  "float": isinstance(v, (int, float)) and not isinstance(v, bool),
                  "bool": isinstance(v, bool), "str": isinstance(v, str)}.get(base, True)
            if not ok:
                raise FilterlensError(f"setting '{f.name}' = {v!r} has the wrong type; expected {base}")
            if isinstance(v, str) and v.strip() == "" and f.name not in EMPTY_MEANS:
                flag = "--" + f.name.replace("_", "-")
                raise FilterlensError(f"setting '{f.name}' ({flag}) = {v!r} is empty; give a value ("
                                      f"{f.metadata['help'].split(';')[0][:90]}) or leave it out for the default")
            if isinstance(v, str) and any(ord(ch) < 32 for ch in v):
                raise FilterlensError(f"setting '{f.name}' = {v!r} holds control characters (a newline?)")
            choices = f.metadata.get("choices")
            if choices and v not in choices:
                raise FilterlensError(f"setting '{f.name}' = {v!r} is invalid{closest(v, choices)}; valid: "
                                      f"{', '.join(choices)}")
            if f.metadata.get("bounds"):
                check_interval(f.name, v, f.metadata["bounds"])
        if self.vgg_cfg is not None and self.model != "vgg":
            raise FilterlensError(f"setting 'vgg_cfg' (--vgg-cfg) = {self.vgg_cfg!r} applies to --model vgg only, and "
                                  f"the model is {self.model!r}; leave it out or use --model vgg")
        parse_thresholds(self.afcc_thresholds)
        parse_thresholds(self.thresholds)
        parse_bytes(self.cache_budget)
        parse_pool(self.probe_pool)
        parse_heatmaps(self.heatmaps)
        parse_device(self.device)
        return self

    def checkpoint_path(self) -> str | None:
        """``checkpoint`` with ``{seed}`` replaced by this run's seed (the runs of one recipe over seeds, each from
        its own trained weights, share one setting)."""
        return None if not self.checkpoint else self.checkpoint.replace("{seed}", str(self.seed))

    def recipe_hash(self) -> str:
        """Hash of every setting but the seed and the run-wide ones (device, cache folder, workers, progress):
        runs with the same recipe hash are seeds of one recipe (``filterlens compare`` pools them)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["stage"] != "run" and f.name != "seed"}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def stage_hash(self, stage: str) -> str:
        """Hash of the settings that a stage's results depend on (its own and every earlier stage's)."""
        upto = DEPENDS.get(stage) or STAGES[: STAGES.index(stage) + 1]
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["stage"] in upto}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def python_values(settings: dict) -> dict:
    """Settings as Python gives them, in the form the command line and TOML write them (the one a Config holds and
    hashes): a layer selection as a list of names or indices (``["features.0", -1]`` -> ``"features.0,-1"``),
    thresholds as a float or a sequence of floats (``[0.2, 0.3]`` -> ``"0.2,0.3"``), ``probe_pool`` as (H, W)
    (``(4, 4)`` -> ``"4x4"``), ``cache_budget`` as bytes (``2**30`` -> ``"1073741824"``), heatmaps as
    (layer, unit) pairs, label counts as a list of ints. Strings pass unchanged; anything else of another type
    is refused in one line naming the setting and what it takes."""
    out = dict(settings)
    lists = {"layers": "layer names or indices", "afcc_layers": "layer names or indices",
             "sweep_layers": "layer names or indices", "num_labels": "label counts", "labels": "label names or indices"}
    for key, what in lists.items():
        v = out.get(key)
        if isinstance(v, (list, tuple)):
            if not v or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
                raise FilterlensError(f"setting '{key}' = {v!r}: give a non-empty list of {what} (str or int)")
            out[key] = ",".join(str(x) for x in v)
    for key in ("thresholds", "afcc_thresholds"):
        v = out.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = repr(float(v))
        elif isinstance(v, (list, tuple)):
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                raise FilterlensError(f"setting '{key}' = {v!r}: give a float or a sequence of floats in (0, 1)")
            out[key] = ",".join(repr(float(x)) for x in v)
    v = out.get("probe_pool")
    if isinstance(v, (list, tuple)):
        if len(v) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v):
            raise FilterlensError(f"setting 'probe_pool' = {v!r}: give (H, W), two positive ints, e.g. (4, 4)")
        out["probe_pool"] = f"{v[0]}x{v[1]}"
    v = out.get("cache_budget")
    if isinstance(v, int) and not isinstance(v, bool):
        out["cache_budget"] = str(v)
    v = out.get("heatmaps")
    if isinstance(v, (list, tuple)):
        if not all(isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], int)
                   and not isinstance(p[1], bool) for p in v):
            raise FilterlensError(f"setting 'heatmaps' = {v!r}: give (layer name, unit index) pairs, e.g. "
                                  "[('features.3', 12)]")
        out["heatmaps"] = ",".join(f"{layer}:{unit}" for layer, unit in v) or "none"
    return out


_FIELDS = {f.name: f for f in fields(Config)}


def stage_fields(*stages: str) -> list:
    """The fields of :class:`Config` that belong to any of ``stages`` (``data``, ``probes``, ...), in order."""
    return [f for f in fields(Config) if f.metadata["stage"] in stages]


def default_of(f):
    """A :class:`Config` field's default (None where it has none)."""
    return f.default if f.default is not MISSING else None


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable on Linux; physical memory elsewhere)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return total_memory()


def total_memory() -> int:
    """Bytes of physical memory of this machine."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - every Linux has them
        return 4 * 2**40


def parse_bytes(text) -> int:
    """``"500M"`` -> 500 * 2**20; plain integers are bytes; ``"auto"``: 40% of available memory, at most 16 GiB.

    A budget must be a finite size above 0 and at most this machine's physical memory.
    """
    if str(text).strip().lower() == "auto":
        return min(int(0.4 * available_memory()), 16 * 2**30)
    s = str(text).strip().upper().removesuffix("B")
    mult = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    try:
        n = float(s[:-1]) * mult[s[-1]] if s and s[-1] in mult else float(s)
    except ValueError:
        raise FilterlensError(f"cache budget '{text}' is not a size; use auto, bytes or e.g. 500M, 4G") from None
    limit = total_memory()
    if not math.isfinite(n) or not 0 < n <= limit:
        raise FilterlensError(f"cache budget '{text}' is invalid; give a size above 0 and at most this machine's "
                              f"memory ({limit / 2**30:.1f}G), e.g. 500M or 4G, or auto")
    return int(n)


def check_interval(name: str, value, bounds: str) -> None:
    """Refuse ``value`` outside ``bounds`` ("(0, 10]", "[1, 65536]", ...), or not finite."""
    lo_open, hi_open = bounds[0] == "(", bounds[-1] == ")"
    lo, hi = (float(t) for t in bounds[1:-1].split(","))
    v = float(value)
    inside = math.isfinite(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
    if not inside:
        raise FilterlensError(f"setting '{name}' = {value!r} is outside {bounds}; give a value in {bounds}")


def parse_heatmaps(text) -> str | list[tuple[str, int]]:
    """``auto``, ``none`` or ``LAYER:UNIT,...`` (unit indices >= 0); the layer names are checked once the
    model's layers are known (:func:`filterlens.analysis.check_heatmaps`)."""
    s = str(text).strip()
    if s in ("auto", "none"):
        return s
    picks = []
    for tok in s.split(","):
        layer, _, unit = tok.strip().rpartition(":")
        if not layer or not is_int_text(unit) or unit.strip().startswith(("-", "+")):
            raise FilterlensError(f"heatmap '{tok.strip()}' in '{text}' is not LAYER:UNIT with UNIT a whole number "
                                  "in ASCII digits (e.g. features.3:12); valid: auto, none or a list of LAYER:UNIT")
        picks.append((layer, parse_int(unit, f"unit '{unit}' of heatmap '{tok.strip()}'", low=0)))
    return picks


def parse_device(text) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; whether that device exists is checked where it is used."""
    s = str(text).strip()
    if s in ("auto", "cpu", "cuda") or (s.startswith("cuda:") and is_int_text(s[5:]) and s[5:].isdigit()):
        return s
    raise FilterlensError(f"device '{text}' is invalid; use auto, cpu, cuda or cuda:N")
def parse_thresholds(text) -> list[float]:
    """``"0.1,0.2"`` -> [0.1, 0.2]; every value must lie in (0, 1)."""
    out = []
    for tok in str(text or "").split(","):
        tok = tok.strip()
        if not tok:
            continue
        try:
            v = float(tok)
        except ValueError:
            raise FilterlensError(f"threshold '{tok}' in '{text}' is not a number; use e.g. 0.1,0.2,0.3") from None
        if not 0.0 < v < 1.0:
            raise FilterlensError(f"threshold {v} in '{text}' is outside (0, 1)")
        out.append(v)
    return out
def parse_pool(text):
    """``none`` -> None; ``"4x4"`` -> ("size", (4, 4)); ``"max:8192"`` -> ("max", 8192)."""
    s = str(text).strip().lower()
    if s == "none":
        return None
    def positive(t: str) -> bool:  # ASCII digits only (checks.parse_int's rule), above 0
        return is_int_text(t) and t.isdigit() and int(t) > 0

    if s.startswith("max:") and positive(s[4:]):
        return ("max", int(s[4:]))
    parts = s.split("x")
    if len(parts) == 2 and all(positive(p) for p in parts):
        return ("size", (int(parts[0]), int(parts[1])))
    raise FilterlensError(f"probe_pool '{text}' is invalid; use none, HxW (e.g. 4x4) or max:N (e.g. max:8192)")




# ------------------------------------------------------------------ each stage's settings
# Config is the one record of a run's settings (the command line, TOML, config.json and the stage hashes read it
# whole). A stage's functions take the group of settings they may read, as a typed protocol that Config satisfies:
# each stage's own fields (one protocol per stage, each field in exactly one), composed with those of the stages
# its results depend on (DEPENDS) and the run-wide ones. The type checker refuses a stage's function that reads a
# later stage's setting, which its stage hash would not cover (tests/test_settings.py checks the groups against
# Config's fields and DEPENDS).

class RunFields(Protocol):
    """Run-wide settings (stage ``run``): where and how the work runs, never what it computes."""

    device: str
    cache_dir: str | None
    threads: int
    num_workers: int
    compile: bool
    progress: bool


class DataFields(Protocol):
    """The ``data`` stage's settings: which images and labels (:class:`Config` documents each)."""

    dataset: str
    data_dir: str | None
    labels: str
    download: bool
    image_size: int | None
    train_samples: int
    test_samples: int


class ModelFields(Protocol):
    """The ``model`` stage's settings: which network and which weights."""

    model: str
    width_mult: float
    vgg_cfg: str | None
    weights: str | None
    checkpoint: str | None

    def checkpoint_path(self) -> str | None:
        """The checkpoint of this run's seed (:meth:`Config.checkpoint_path`)."""
        ...


class TrainFields(Protocol):
    """The ``train`` stage's settings: the training recipe, its precision and the seed."""

    epochs: int
    min_steps: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    optimizer: str
    schedule: str
    warmup_epochs: int
    step_epochs: int
    gamma: float
    augment: bool
    amp: bool
    seed: int


class ProbeFields(Protocol):
    """The ``probes`` stage's settings (METHOD.md stage 2): the layers and their FC probes."""

    layers: str
    probe_mode: str
    probe_epochs: int | None
    probe_lr: float | None
    probe_batch_size: int
    probe_weight_decay: float | None
    probe_pool: str
    tokens: str
    probe_augment: bool
    engine: str
    cache_budget: str
    probe_seeds: int
    top_images: int


class SfpFields(Protocol):
    """The ``sfp`` stage's settings (METHOD.md stage 3): the unit matrices, their threshold and intervals."""

    threshold: float
    normalise: str
    thresholds: str
    bootstrap: int
    explorer_units: int
    heatmaps: str


class AfccFields(Protocol):
    """The ``afcc`` stage's settings (METHOD.md stage 5): the dilution, its retraining and its controls."""

    afcc: bool
    afcc_layers: str
    retrain_epochs: int
    retrain_lr: float
    retrain_momentum: float
    retrain_weight_decay: float
    retrain_batch_size: int
    retrain_augment: bool
    random_draws: int
    afcc_thresholds: str
    latency_batch: int
    latency_repeats: int


class SweepFields(Protocol):
    """The ``sweep`` stage's settings (METHOD.md stage 4): the label counts and subsets."""

    num_labels: str
    subsets: int
    sweep_layers: str


class Hashed(Protocol):
    """A record of settings that can name its stage results (:meth:`Config.stage_hash`)."""

    def stage_hash(self, stage: str) -> str:
        """The hash of the settings ``stage``'s results depend on (:meth:`Config.stage_hash`)."""
        ...

    def to_dict(self) -> dict:
        """Every setting by name (:meth:`Config.to_dict`)."""
        ...


class DataSettings(DataFields, RunFields, Protocol):
    """What loading the data reads."""


class ModelSettings(DataFields, ModelFields, RunFields, Protocol):
    """What building the network reads."""


class TrainSettings(DataFields, ModelFields, TrainFields, RunFields, Hashed, Protocol):
    """What training reads: the data, the network and the recipe."""


class ProbeSettings(DataFields, ModelFields, TrainFields, ProbeFields, RunFields, Hashed, Protocol):
    """What the probes stage reads: its own settings and those its results depend on."""


class SfpSettings(DataFields, ModelFields, TrainFields, ProbeFields, SfpFields, RunFields, Hashed, Protocol):
    """What the single-unit analysis reads."""


class AfccSettings(DataFields, ModelFields, TrainFields, ProbeFields, SfpFields, AfccFields, RunFields, Hashed,
                   Protocol):
    """What AFCC reads (not the sweep's settings: its results do not depend on them)."""


# the stage whose own fields each protocol declares, and each stage's settings group (tests/test_settings.py)
FIELDS_OF = {"run": RunFields, "data": DataFields, "model": ModelFields, "train": TrainFields, "probes": ProbeFields,
             "sfp": SfpFields, "afcc": AfccFields, "sweep": SweepFields}
SETTINGS_OF = {"data": DataSettings, "model": ModelSettings, "train": TrainSettings, "probes": ProbeSettings,
               "sfp": SfpSettings, "afcc": AfccSettings}
