"""The ``filterlens`` command.

Every flag maps one-to-one onto a field of :class:`filterlens.config.Config`
(``--probe-epochs`` -> ``Config.probe_epochs``); ``filterlens SUBCOMMAND --help``
lists them with their defaults. User mistakes end with one line on stderr and
exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from typing import Any, Callable

from . import distributed, memory  # light: torch only inside torchrun; memory: ctypes
from .checks import int_flag, parse_int
from .config import Config, python_values, stage_fields
from .errors import FilterlensError
from .names import ERROR_LOG_PREFIX
from .output import to_stdout

TRAIN_STAGES = ("data", "model", "train", "run")
ANALYZE_STAGES = ("probes", "sfp", "run")


def _add_config_flags(p: argparse.ArgumentParser, stages, only=None, aliases: dict | None = None) -> None:
    """One flag per field of the ``stages`` (or the fields named in ``only``); ``aliases``: field -> more flags."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in (stage_fields(*stages) if only is None else [f for f in fields(Config) if f.name in only]):
        g = groups.setdefault(f.metadata["stage"], p.add_argument_group(f"{f.metadata['stage']} settings"))
        flags = ["--" + f.name.replace("_", "-"), *(aliases or {}).get(f.name, ())]
        base = f.type.replace(" | None", "") if isinstance(f.type, str) else "str"
        default = f.default if f.default != "" else "''"
        if base == "bool":
            g.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=f.metadata["help"] + f" (default: {default})")
            continue
        converters: dict[str, Callable[[str], Any]] = {"int": int_flag, "float": float}
        conv = converters.get(base, str)
        g.add_argument(*flags, dest=f.name, type=conv, default=None, metavar=f.name.upper(),
                       choices=f.metadata.get("choices"), help=f.metadata["help"] + f" (default: {default})")


_TOML_TABLES = ("data", "model", "train", "probes", "sfp", "afcc", "sweep", "run")


def load_toml(path) -> dict:
    """A TOML config file: flat keys of Config, or grouped in [data], [model], [train], ... tables. Arrays (labels,
    layers, thresholds, label counts) mean what the command line's comma-separated strings mean
    (:func:`~filterlens.config.python_values`)."""
    import tomllib

    if not str(path).strip():
        raise FilterlensError("config file '' is empty; give the path of a TOML file, e.g. configs/demo.toml")
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise FilterlensError(f"config file '{path}' does not exist") from None
    except IsADirectoryError:
        raise FilterlensError(f"config file '{path}' is a directory; give a TOML file, "
                              "e.g. configs/demo.toml") from None
    except UnicodeDecodeError:
        raise FilterlensError(f"config file '{path}' is not UTF-8 text (a binary file?); give a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise FilterlensError(f"config file '{path}' is not valid TOML ({exc})") from None
    except OSError as exc:
        raise FilterlensError(f"config file '{path}' cannot be read ({exc.strerror})") from None
    flat = {}
    for k, v in raw.items():
        if isinstance(v, dict) and k in _TOML_TABLES:
            flat.update({kk.replace("-", "_"): vv for kk, vv in v.items()})
        else:
            flat[k.replace("-", "_")] = v
    try:
        return python_values(flat)
    except FilterlensError as exc:
        raise FilterlensError(f"config file '{path}': {exc}") from None


def _config_from_args(args, base: Config | None = None) -> Config:
    d = (base or Config()).to_dict()
    if getattr(args, "config", None) is not None:
        file_values = load_toml(args.config)
        Config.from_dict({**d, **file_values}, source=f"config file '{args.config}'")
        d.update(file_values)
    for f in fields(Config):
        v = getattr(args, f.name, None)
        if v is not None:
            d[f.name] = v
    if getattr(args, "no_progress", False):
        d["progress"] = False
    cfg = Config.from_dict(d)
    _check_flags_apply(cfg, {f.name for f in fields(Config) if getattr(args, f.name, None) is not None})
    return cfg


# flags that only mean something with another setting: (flag's field, the setting, the values it applies to)
_APPLIES = [("gamma", "schedule", ("step",)), ("step_epochs", "schedule", ("step",)),
            ("momentum", "optimizer", ("sgd",))]


def _check_flags_apply(cfg: Config, given: set) -> None:
    """Refuse a flag given on the command line that its settings make meaningless (said, never silently unused)."""
    for name, setting, values in _APPLIES:
        if name in given and getattr(cfg, setting) not in values:
            flag, other = "--" + name.replace("_", "-"), "--" + setting.replace("_", "-")
            raise FilterlensError(f"{flag} applies to {other} {' or '.join(values)} only, and {other} is "
                                  f"'{getattr(cfg, setting)}'; leave {flag} out or give {other} {values[0]}")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to a flag's help unless the help already states its default."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _say_error(message) -> None:
    """One line on stderr. Under torchrun every rank says it, tagged with its rank when not 0: the first
    rank to fail makes torchrun stop the others, perhaps before they print, and an error may be one
    rank's own (a data folder missing on one node)."""
    rank = os.environ.get("RANK", "0")
    text = "".join(ch if ch >= " " or ch == "\t" else repr(ch)[1:-1] for ch in str(message))
    sys.stderr.write(f"filterlens: error{'' if rank == '0' else f' (rank {rank})'}: {text}\n")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage first otherwise)
        _say_error(message)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The ``filterlens`` argument parser: every subcommand with its flags (one per :class:`Config` field of
    its stages, grouped by stage)."""
    p = _Parser(prog="filterlens", description="What each layer and each filter of a CNN does "
                                              "(Meir et al., arXiv 2309.07537).")
    from .version import __version__

    p.add_argument("--version", action="version", version=f"filterlens {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _add_model_commands(sub)
    _add_result_commands(sub)
    return p


def _add_model_commands(sub) -> None:
    """The subcommands that train or analyse a model: train, analyze, layers, sweep and run (the whole pipeline)."""
    t = sub.add_parser("train", help="train a model on a dataset into a run directory",
                       formatter_class=_HelpFormatter)
    t.add_argument("--run-dir", required=True, help="run directory (created)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted training from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a run directory that holds another config")
    t.add_argument("--config", default=None, help="TOML file with settings (flags given here override it)")
    _add_config_flags(t, TRAIN_STAGES)

    a = sub.add_parser("analyze", help="layer accuracies, filter clusters, noise and SNR of a trained run",
                       formatter_class=_HelpFormatter)
    a.add_argument("--run-dir", required=True, help="a run directory written by filterlens train")
    a.add_argument("--config", default=None, help="TOML file with analysis settings (flags given here override it)")
    _add_config_flags(a, ANALYZE_STAGES)

    l = sub.add_parser("layers", help="list a model's analysable layers with their output shapes",
                       formatter_class=_HelpFormatter)
    l.add_argument("--model", default="vgg16", help="architecture name (see train --help)")
    l.add_argument("--dataset", default="cifar100", help="dataset whose labels, channels and image size to use")
    l.add_argument("--data-dir", default=None, help="data folder (only needed for imagefolder)")
    l.add_argument("--width-mult", type=float, default=1.0, help="width multiplier of our VGG models")
    l.add_argument("--vgg-cfg", default=None, help="explicit VGG widths for --model vgg")
    l.add_argument("--image-size", type=int_flag, default=None, help="input size (default: the dataset's)")
    l.add_argument("--layers", default="all", help="all (the blocks), stages, indices, last:N or dotted module paths")
    l.add_argument("--list-models", action="store_true", help="list the model names instead")

    w = sub.add_parser("sweep", help="error against the number of labels: train on label subsets, fit a line",
                       formatter_class=_HelpFormatter)
    w.add_argument("--run-dir", required=True, help="sweep directory (one folder per trained model)")
    w.add_argument("--jobs", type=int_flag, default=1, help="processes on this machine")
    w.add_argument("--shard", default="0/1", help="run the i-th of n shards (i/n), for several machines")
    w.add_argument("--merge", action="store_true", help="only combine the finished models of all shards")
    w.add_argument("--config", default=None, help="TOML file with settings (flags given here override it)")
    _add_config_flags(w, TRAIN_STAGES + ("probes", "sfp", "sweep"))

    r = sub.add_parser("run", help="the whole pipeline from a TOML config: train, analyse, AFCC, sweep, report",
                       formatter_class=_HelpFormatter)
    r.add_argument("config_file", nargs="?", default=None, metavar="CONFIG",
                   help="TOML config file (see configs/); flags given here override its keys")
    r.add_argument("--config", default=None, help="the TOML config file, as train takes it (instead of CONFIG)")
    r.add_argument("--run-dir", default=None, help="run directory (default: runs/<config file name>)")
    r.add_argument("--from", dest="from_stage", default=None,
                   help="recompute from this stage on: train, probes, sfp, afcc, sweep, report")
    r.add_argument("--overwrite", action="store_true", help="replace a run directory that holds another config")
    r.add_argument("--seeds", default=None, metavar="SEEDS",
                   help="run the config once per seed (e.g. 0,1,2), each in RUN_DIR/seed-N, and pool the papers' "
                        "claims over them ({seed} in --checkpoint names each seed's weights)")
    _add_config_flags(r, TRAIN_STAGES + ("probes", "sfp", "afcc", "sweep"))


def _add_result_commands(sub) -> None:
    """The subcommands that read or extend finished runs, and the demo: report, compare, afcc, demo."""
    rep = sub.add_parser("report", help="rebuild report.html of a run from its saved results (no recomputation)",
                         formatter_class=_HelpFormatter)
    rep.add_argument("run_dir", help="run directory")

    c = sub.add_parser("compare", help="the papers' figures across runs and sweeps: every layer metric against "
                                       "relative depth, error against the number of labels",
                       formatter_class=_HelpFormatter,
                       description="Reads finished runs and sweeps (nothing recomputed) and writes into --out one "
                                   "figure per layer metric against relative depth (one line per run), the maximal "
                                   "and mean error against the number of labels with their fits (one line per "
                                   "sweep), compare.csv, compare_sweeps.csv and compare.html (self-contained).")
    c.add_argument("dirs", nargs="+", metavar="RUN_OR_SWEEP_DIR",
                   help="finished run directories (filterlens run or analyze) and sweep directories "
                        "(filterlens sweep); a run directory holding a sweep under sweep/ counts as both")
    c.add_argument("--out", required=True, metavar="DIR", help="output directory (created); not one of the inputs")
    c.add_argument("--pool", action="store_true", help="pool the claims of every run given, even runs of different "
                                                       "recipes (default: only runs whose settings differ in the seed "
                                                       "alone are pooled)")

    f = sub.add_parser(
        "afcc", help="dilute an analysed run by its units' cluster connections (AFCC), retrain, compare with a "
                     "random control, and remove units physically", formatter_class=_HelpFormatter,
        description="AFCC (METHOD.md stage 5) on a run analysed by filterlens analyze. Writes afcc.csv, "
                    "afcc_thresholds.csv, afcc_pruning.csv, afcc.png, afcc_model.pt (masked: zeros in dense tensors, "
                    "no speed-up), afcc_pruned.pt (units physically removed) and the afcc / afcc_pruned entries "
                    "of results.json.")
    f.add_argument("--run-dir", required=True, help="a run directory analysed by filterlens analyze")
    f.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_config_flags(f, (), only=[x.name for x in stage_fields("afcc") if x.name != "afcc"] + ["threshold", "seed"],
                      aliases={"afcc_layers": ["--layers"], "afcc_thresholds": ["--thresholds"]})

    d = sub.add_parser("demo", help="train a small VGG on the embedded digits data and analyse it",
                       formatter_class=_HelpFormatter)
    d.add_argument("--run-dir", default="runs/demo", help="run directory")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.add_argument("--overwrite", action="store_true", help="replace an earlier demo run with other settings")
    d.add_argument("--threads", type=int_flag, default=0, help="CPU threads torch uses (0: torch's default); on a "
                   "machine where other jobs keep cores busy, the free cores")


def _speaks(command):
    """A command of the command line: what the library says while it runs (:mod:`filterlens.output`) is printed
    on stdout."""
    import functools

    @functools.wraps(command)
    def run(args) -> int:
        with to_stdout():
            return command(args)

    return run


@_speaks
def cmd_train(args) -> int:
    """``filterlens train``: stage 1 into ``--run-dir``; prints the test accuracy. Returns the exit status."""
    from .train import train

    if args.resume and args.overwrite:
        raise FilterlensError("--resume continues the training in the run directory and --overwrite starts it again "
                              "from scratch; give one of them")
    cfg = _config_from_args(args)
    s = train(cfg, args.run_dir, resume=args.resume, overwrite=args.overwrite)
    if distributed.is_main():
        print(f"test accuracy {s['test_accuracy']:.4f} after {s['epochs']} epochs; run directory {args.run_dir}")
    return 0


@_speaks
def cmd_layers(args) -> int:
    """``filterlens layers``: the model's family and analysable layers (blocks, stages or named modules, and its
    node layers) with their units and shapes; ``--list-models``: the models by name. Returns the exit status."""
    from .data import dataset_spec
    from .models import ModelSpec, available_models, build_model, describe, resolve_layers

    if args.list_models:
        import torchvision

        print("filterlens:", ", ".join(available_models()[:-2]))
        print("torchvision:", ", ".join(torchvision.models.list_models(module=torchvision.models)))
        print("timm: timm:<name>, e.g. timm:resnet18, timm:convnext_atto (with pip install 'filterlens[timm]')")
        return 0
    cfg = Config(model=args.model, dataset=args.dataset, data_dir=args.data_dir, width_mult=args.width_mult,
                 vgg_cfg=args.vgg_cfg, image_size=args.image_size, layers=args.layers).validate()
    ds = dataset_spec(cfg.dataset)
    num_labels = ds.num_labels
    if num_labels is None:
        from .data import load_data

        num_labels = load_data(cfg.dataset, cfg.data_dir).num_labels
    size = cfg.image_size or ds.image_size
    model = build_model(ModelSpec(cfg.model, num_labels, ds.in_channels, size, cfg.width_mult, cfg.vgg_cfg))
    from .models.contract import check_model

    shape = (ds.in_channels, size, size)
    check_model(model, shape, num_labels, f"model '{cfg.model}'", layers=None)
    layers = resolve_layers(model, shape, cfg.layers)
    found = describe(model)
    if found.nodes and "nodes" not in [t.strip() for t in cfg.layers.split(",")]:
        have = {l.name for l in layers}
        layers = sorted(layers + [l for l in resolve_layers(model, shape, "nodes") if l.name not in have],
                        key=lambda l: l.index if l.name in have else 10**6 + l.index)
    what = "stages" if cfg.layers.strip() == "stages" else "layers"
    print(f"{cfg.model} on {cfg.dataset} ({ds.in_channels}x{size}x{size}, {num_labels} labels): {len(layers)} {what} "
          f"(family: {found.family})")
    if found.fallback:
        print(f"note: no layer rule knows {type(model).__name__}; its layers are its top-level children that give a "
              "4-D map (name any module with --layers MODULE.PATH)")
    print(f"{'index':>5}  {'layer':<34} {'units':>6} {'kind':<7} {'shape (units x H x W)':<22} {'features':>9}")
    position = 0
    for l in layers:
        c, h, w = l.shape
        note = " (channels-last)" if l.layout == "NHWC" else ""
        if l.unit_kind == "node":
            note = (f" (nodes x tokens, read at {l.hook_module}'s {'input' if l.layout == 'nodes:in' else 'output'})"
                    if h > 1 else f" (read at {l.hook_module}'s input)" if l.layout == "nodes:in" else "")
        index = "-" if l.unit_kind == "node" else str(position)
        position += l.unit_kind != "node"
        print(f"{index:>5}  {l.name:<34} {l.units:>6} {l.unit_kind:<7} {f'{c} x {h} x {w}':<22} {l.features:>9}{note}")
    if any(l.unit_kind == "node" for l in layers):
        print("node layers (kind node: the nodes of a fully connected layer, or of a transformer MLP, as units) are "
              "chosen by name or all at once with --layers nodes (e.g. --layers all,nodes); indices and last:N count "
              "over the other layers")
    return 0


@_speaks
def cmd_analyze(args) -> int:
    """``filterlens analyze``: stages 2 and 3 on a trained run; prints the layer table. Returns the exit status."""
    from .analysis import analyze_run, print_table

    result = analyze_run(args.run_dir, overrides=_overrides(args))
    if distributed.is_main():
        print_table(result)
    return 0


def _overrides(args) -> dict:
    out = {}
    if getattr(args, "config", None) is not None:
        names = {f.name for f in stage_fields(*ANALYZE_STAGES)}
        values = load_toml(args.config)
        Config.from_dict({**Config().to_dict(), **values}, source=f"config file '{args.config}'")  # no unknown key
        out.update({k: v for k, v in values.items() if k in names})  # the analysis settings of a whole-run file
    for f in stage_fields(*ANALYZE_STAGES):
        v = getattr(args, f.name, None)
        if v is not None:
            out[f.name] = v
    if getattr(args, "no_progress", False):
        out["progress"] = False
    return out


@_speaks
def cmd_sweep(args) -> int:
    """``filterlens sweep``: (one shard of) the label-count study (stage 4); prints it once merged. Returns the exit
    status."""
    from .sweep import print_sweep, run_sweep

    cfg = _config_from_args(args)
    parts = str(args.shard).split("/")
    if len(parts) != 2:
        raise FilterlensError(f"shard '{args.shard}' is invalid; use i/n, e.g. 0/4")
    n = parse_int(parts[1], f"shard '{args.shard}': its count n", low=1)
    i = parse_int(parts[0], f"shard '{args.shard}': its index i", low=0, high=n - 1)
    if args.jobs < 1:
        raise FilterlensError(f"jobs = {args.jobs} must be >= 1")
    if args.num_labels is not None and not args.num_labels.strip():
        raise FilterlensError("--num-labels '' is empty; give two or more label counts, e.g. 3,5,10 (without the flag: "
                              "3,5,10)")
    out = run_sweep(cfg, args.run_dir, cfg.num_labels or "3,5,10", cfg.subsets, cfg.sweep_layers, args.jobs, (i, n),
                    merge_only=args.merge)
    if out is not None:
        print_sweep(out)
    return 0


@_speaks
def cmd_run(args) -> int:
    """``filterlens run CONFIG``: every stage of the config file into ``--run-dir`` (default runs/CONFIG's stem),
    once per seed with ``--seeds``. Returns the exit status."""
    from pathlib import Path

    from .pipeline import run_pipeline

    if args.config_file is not None and args.config is not None and args.config_file != args.config:
        raise FilterlensError(f"two config files given ('{args.config_file}' and --config '{args.config}'); give one")
    args.config = args.config if args.config is not None else args.config_file
    if args.config is None:
        raise FilterlensError("no config file given; give one: filterlens run CONFIG or filterlens run --config CONFIG "
                              "(e.g. configs/demo.toml)")
    cfg = _config_from_args(args)
    run_dir = str(Path("runs") / Path(args.config).stem) if args.run_dir is None else args.run_dir
    if args.seeds is not None:
        from .pipeline import run_seeds

        run_seeds(cfg, run_dir, args.seeds, from_stage=args.from_stage, overwrite=args.overwrite)
        return 0
    run_pipeline(cfg, run_dir, from_stage=args.from_stage, overwrite=args.overwrite)
    return 0


@_speaks
def cmd_report(args) -> int:
    """``filterlens report``: report.html from a run's saved results. Returns the exit status."""
    from .report import build_report

    print(f"wrote {build_report(args.run_dir)}")
    return 0


@_speaks
def cmd_compare(args) -> int:
    """``filterlens compare``: several runs and sweeps side by side in ``--out``. Returns the exit status."""
    from .report import build_compare

    print(f"wrote {build_compare(args.dirs, args.out, pool=args.pool)}")
    return 0


@_speaks
def cmd_afcc(args) -> int:
    """``filterlens afcc``: AFCC (stage 5) on an analysed run; prints its table. Returns the exit status."""
    from .afcc import print_afcc, run_afcc

    overrides = {f.name: getattr(args, f.name) for f in fields(Config) if getattr(args, f.name, None) is not None}
    out = run_afcc(args.run_dir, overrides, progress=not args.no_progress)
    print_afcc(out)
    return 0


@_speaks
def cmd_demo(args) -> int:
    """``filterlens demo`` (:func:`filterlens.demo.run_demo`). Returns the exit status."""
    from .demo import run_demo

    run_demo(args.run_dir, progress=not args.no_progress, overwrite=args.overwrite, threads=args.threads)
    return 0


DISTRIBUTED_COMMANDS = ("train", "analyze")  # the commands that run under torchrun
COMMANDS = {"afcc": cmd_afcc, "run": cmd_run, "report": cmd_report, "compare": cmd_compare, "sweep": cmd_sweep,
            "train": cmd_train, "layers": cmd_layers, "analyze": cmd_analyze, "demo": cmd_demo}


# errno values that mean "the user pointed at something unusable" (exit 2) rather than an internal error
_USER_ERRNOS = ("EACCES", "EPERM", "EROFS", "ENOENT", "ENOTDIR", "EISDIR", "EEXIST", "ENAMETOOLONG", "ELOOP")


class Terminated(BaseException):
    """SIGTERM arrived: raised where the command is, so that every ``finally`` runs (locks released, temporary files
    removed, worker processes stopped) before it ends."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _quiet_stdout() -> None:
    """Whoever read our output has gone (``| head -1``): point stdout at /dev/null so that nothing more fails."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv=None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status: 0 done, 2 a user's mistake
    (one line on stderr), 1 a full disk or an internal error (its traceback in a log file), 130 / 143 interrupted
    (Ctrl-C / SIGTERM), 141 the reader of the output gone."""
    import errno
    import logging
    import signal

    logging.basicConfig(level=os.environ.get("FILTERLENS_LOGLEVEL", "WARNING"), format="%(message)s")
    memory.keep_freed_memory()  # the command line's process is ours: no page faults for every batch's maps
    parser = build_parser()
    args = parser.parse_args(argv)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if distributed.env_world_size() > 1 and args.command not in DISTRIBUTED_COMMANDS:
            raise FilterlensError(f"'filterlens {args.command}' runs in one process; under torchrun "
                                  f"(WORLD_SIZE={distributed.env_world_size()}) use "
                                  f"{' or '.join('filterlens ' + c for c in DISTRIBUTED_COMMANDS)}")
        rc = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, where a reader that went away is caught (not at the interpreter's exit)
        return rc
    except FilterlensError as exc:
        _say_error(exc)
        return 2
    except BrokenPipeError:  # the reader of our output went away (filterlens ... | head -1): end quietly
        _quiet_stdout()
        return 141  # 128 + SIGPIPE, as a command killed by the broken pipe ends
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            _say_error(f"disk full{where}: {exc.strerror}{_free_space(exc.filename)}; free some space and run the same "
                       "command again: files already written are intact")
            return 1
        if exc.errno is not None and errno.errorcode.get(exc.errno) in _USER_ERRNOS:
            _say_error(f"{exc.strerror}{where}; check the path and its permissions")
            return 2
        return _internal_error(args)
    except KeyboardInterrupt:
        sys.stderr.write("filterlens: interrupted; run the same command again (with --resume for train) to continue\n")
        return 130
    except Terminated:
        sys.stderr.write("filterlens: terminated (SIGTERM); run the same command again (with --resume for train) to "
                         "continue\n")
        return 143
    except Exception:  # noqa: BLE001 - a bug: one line, the traceback in a log file
        return _internal_error(args)
    finally:
        distributed.cleanup()


def _free_space(path) -> str:
    """`` (12.0 KiB free there)``: the free space of the file system holding ``path``, in useful units ("" when
    it cannot be read)."""
    import shutil
    from pathlib import Path

    try:
        p = Path(path).absolute()
        while not p.exists():
            p = p.parent
        free = shutil.disk_usage(p).free
    except (OSError, TypeError, ValueError):
        return ""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if free >= scale:
            return f" ({free / scale:.1f} {unit} free there)"
    return f" ({free} bytes free there)"


def _is_run_dir(path) -> bool:
    try:
        from .folders import kind_of

        return kind_of(str(path)) == "run"
    except Exception:  # noqa: BLE001 - reporting an error must not raise another
        return False


def _internal_error(args) -> int:
    """An unexpected exception: its traceback goes to a log file (in the run directory when there is one,
    else a temporary file), and one line names that file. Exit status 1."""
    import tempfile
    import time
    import traceback

    text = traceback.format_exc()
    exc_line = text.strip().splitlines()[-1] if text.strip() else "unknown error"
    run_dir = getattr(args, "run_dir", None)
    log = None
    if run_dir and _is_run_dir(run_dir):  # never into a folder filterlens did not make
        try:
            log = os.path.join(str(run_dir), f"{ERROR_LOG_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
            with open(log, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError:
            log = None
    if log is None:
        fd, log = tempfile.mkstemp(prefix=ERROR_LOG_PREFIX, suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
    _say_error(f"internal error ({exc_line[:200]}); the traceback is in {log}; please report it")
    return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
