"""Stage 1: train the backbone (METHOD.md).

SGD with Nesterov momentum (or AdamW) and weight decay, an optional linear warm-up,
cosine/step/constant decay, the
dataset's training augmentation, a checkpoint written atomically after every
epoch, ``resume`` from it (same weights as an uninterrupted run: the loader's
order and augmentation are drawn from a generator seeded by (seed, epoch)),
bfloat16 autocast and channels-last where the hardware has them (:mod:`filterlens.precision`). Under torchrun the model
is wrapped in DistributedDataParallel, each rank trains on its shard of every global mini-batch and
rank 0 alone writes (:mod:`filterlens.distributed`).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed as dist_
from .config import Config, DataSettings, Hashed, ModelSettings, ProbeSettings, RunFields, TrainFields, TrainSettings
from .data import Data, check_labels_present, load_data
from .errors import Diverged, FilterlensError
from .files import write_csv, write_json
from .fingerprint import digest_matches
from .loaders import ArrayLoader, DatasetLoader, make_loader
from .models import ModelSpec, build_model, load_checkpoint, read_checkpoint, save_checkpoint
from .models.contract import check_model
from .names import CHECKPOINT, CONFIG, MODEL, RESULTS, TRAIN_LOG, TRAIN_SUMMARY
from .output import say
from .precision import FLOAT32, Precision, for_inference, for_training
from .progress import progress_bar
from .rundir import RunDir
from .utils import eval_mode, keeps_global_state, resolve_device, seed_everything, use_threads

# the convergence rule a training is checked by (convergence(); written beside the glyph study's recipe)
CONVERGED_TRAIN_ACCURACY = 0.98  # the last epoch's training accuracy at least this
PLATEAU_WINDOW = 0.2  # the last fifth of the epochs ...
PLATEAU_TOLERANCE = 0.01  # ... whose mean test accuracy the last epoch's is within (1 point)


def convergence(history: list[dict], train_accuracy: float = CONVERGED_TRAIN_ACCURACY,
                window: float = PLATEAU_WINDOW, tolerance: float = PLATEAU_TOLERANCE) -> dict:
    """Whether a training converged, by a rule stated before the runs it judges: the last epoch's training accuracy
    is at least ``train_accuracy`` (the network fits its training set) and its test accuracy is within
    ``tolerance`` of the mean test accuracy over the last ``window`` of the epochs (at least two epochs: the test
    accuracy has plateaued). ``history``: train.json's rows (``train_accuracy``, ``test_accuracy`` per epoch).
    Returns ``converged`` (None without two epochs to judge), the numbers it compared and, when not, why."""
    rows = [r for r in history if r.get("train_accuracy") is not None and r.get("test_accuracy") is not None]
    rule = (f"training accuracy >= {train_accuracy:g} at the end; last test accuracy within {tolerance:g} of its "
            f"mean over the last {window:.0%} of the epochs")
    if len(rows) < 2:
        return {"converged": None, "rule": rule, "reason": f"{len(rows)} epoch(s) logged: nothing to judge"}
    last = rows[-1]
    tail = rows[-max(2, math.ceil(window * len(rows))):]
    mean = sum(float(r["test_accuracy"]) for r in tail) / len(tail)
    gap = float(last["test_accuracy"]) - mean
    reasons = []
    if float(last["train_accuracy"]) < train_accuracy:
        reasons.append(f"training accuracy {float(last['train_accuracy']):.4f} < {train_accuracy:g}")
    if abs(gap) > tolerance:
        reasons.append(f"last test accuracy {float(last['test_accuracy']):.4f} is {gap:+.4f} from the mean of the "
                       f"last {len(tail)} epochs")
    return {"converged": not reasons, "rule": rule, "epochs": len(rows),
            "train_accuracy": float(last["train_accuracy"]), "test_accuracy": float(last["test_accuracy"]),
            "plateau_epochs": len(tail), "plateau_mean": mean, "reason": "; ".join(reasons)}


def loss_limit(num_labels: int) -> float:
    """The training loss above which a training has exploded: 100 times the cross-entropy of a chance guess (ln L),
    at least 100. A training that gets there has logits in the hundreds and learns nothing more."""
    import math

    return 100.0 * max(math.log(max(num_labels, 2)), 1.0)


def check_schedule(cfg: TrainFields, steps_per_epoch: int) -> None:
    """Refuse (before any work) a warm-up that is not shorter than the training it warms up."""
    epochs = epochs_of(cfg, steps_per_epoch)
    if epochs > 0 and cfg.warmup_epochs >= epochs:
        raise FilterlensError(f"warmup_epochs (--warmup-epochs) = {cfg.warmup_epochs} is not shorter than the training "
                              f"({epochs} epochs); give fewer warm-up epochs (at most {epochs - 1}) or more --epochs")


def load_data_for(cfg: DataSettings) -> Data:
    """The data ``cfg`` names: dataset, folder, label subset, image size and sample counts."""
    return load_data(cfg.dataset, cfg.data_dir, cfg.labels, cfg.download, cfg.image_size,
                     train_samples=cfg.train_samples, test_samples=cfg.test_samples)


def model_spec_for(cfg: ModelSettings, data: Data) -> ModelSpec:
    """The :class:`~filterlens.models.ModelSpec` of ``cfg``'s model for ``data`` (its labels, channels, size)."""
    return ModelSpec(cfg.model, data.num_labels, data.in_channels, data.image_size, cfg.width_mult, cfg.vgg_cfg)


def make_model(cfg: ModelSettings, data: Data) -> tuple[nn.Module, ModelSpec]:
    """Build the architecture for this data; start from --weights or --checkpoint if given."""
    spec = model_spec_for(cfg, data)
    model = build_model(spec, cfg.weights)
    if cfg.checkpoint:
        load_checkpoint(cfg.checkpoint_path(), model, spec)
    return model, spec


@torch.no_grad()
def evaluate(model: nn.Module, loader, device, precision: Precision = FLOAT32, reduce: bool = False) -> dict:
    """Test accuracy and mean cross-entropy, in eval mode (the caller's mode is restored), the forward pass in
    ``precision`` (:mod:`filterlens.precision`; float32 by default).

    ``reduce``: the loader holds this rank's shard; sum the counts over the ranks.
    """
    correct: float = 0  # counts (floats once summed over the ranks)
    total: float = 0
    loss = 0.0
    with eval_mode(model):
        for x, y in loader:
            with precision.autocast():
                out = logits_of(model(precision.batch(x)))
            loss += F.cross_entropy(out.float(), y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
    if reduce:
        correct, total, loss = dist_.all_reduce_sum([correct, total, loss])
    return {"accuracy": correct / max(total, 1), "loss": loss / max(total, 1)}


def logits_of(out):
    """A model's class scores: GoogLeNet and Inception v3 with auxiliary heads return them in a named tuple."""
    if isinstance(out, tuple):
        return out.logits if hasattr(out, "logits") else out[0]
    return out


def _optimizer(cfg: TrainFields, model: nn.Module):
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.momentum > 0)


def epochs_of(cfg: TrainFields, steps_per_epoch: int) -> int:
    """The epochs a training runs: ``epochs``, raised where ``min_steps`` asks for more optimiser steps than that
    gives (a small label subset's few batches per epoch still get a full training)."""
    if cfg.epochs == 0 or not cfg.min_steps:
        return cfg.epochs
    return max(cfg.epochs, -(-cfg.min_steps // max(steps_per_epoch, 1)))


def _scheduler(cfg: TrainFields, opt, epochs: int | None = None):
    """The per-epoch learning-rate schedule over ``epochs`` (default ``cfg.epochs``), after ``warmup_epochs`` of
    linear warm-up (from lr / (w + 1))."""
    sched = torch.optim.lr_scheduler
    epochs = cfg.epochs if epochs is None else epochs
    warm = min(cfg.warmup_epochs, max(epochs - 1, 0))
    main: sched.LRScheduler
    if cfg.schedule == "cosine":
        main = sched.CosineAnnealingLR(opt, T_max=max(epochs - warm, 1))
    elif cfg.schedule == "step":
        main = sched.StepLR(opt, step_size=cfg.step_epochs, gamma=cfg.gamma)
    else:
        main = sched.LambdaLR(opt, lambda e: 1.0)
    if warm == 0:
        return main
    ramp = sched.LinearLR(opt, start_factor=1.0 / (warm + 1), total_iters=warm)
    return sched.SequentialLR(opt, [ramp, main], milestones=[warm])


@keeps_global_state
def train(cfg: Config, run_dir, resume: bool = False, overwrite: bool = False, progress: bool | None = None) -> dict:
    """Train ``cfg.model`` on ``cfg.dataset`` into ``run_dir``; return the training summary.

    Files: ``config.json``, ``checkpoint.pt`` (after every epoch), ``model.pt`` (final),
    ``train_log.csv`` and ``train.json``. A finished run with the same settings is not
    trained again; an unfinished one continues with ``resume=True``.
    """
    from .checks import of_type

    of_type(cfg, Config, "cfg", "a filterlens.config.Config")
    if resume and overwrite:
        raise FilterlensError("resume (--resume) continues the training in the run directory and overwrite "
                              "(--overwrite) starts it again from scratch; give one of them")
    cfg.validate()
    RunDir.validate(run_dir)
    dist_device = dist_.setup(cfg.device)  # under torchrun: join the process group
    rd = RunDir(run_dir)
    try:
        same = rd.check(cfg, overwrite=overwrite, stage="train")
    except FilterlensError:
        _prepare(cfg)  # a bad value (a label, a checkpoint) is reported as itself, not as "another config"
        raise
    if same and not overwrite:
        summary = _finished(rd, cfg)
        if summary is not None:
            return summary
    if same and rd.exists(CHECKPOINT) and (resume or not overwrite):
        _refuse_damaged_checkpoint(rd)
    if same and rd.exists(CHECKPOINT) and not resume and not overwrite:
        state = read_checkpoint(rd.file(CHECKPOINT))
        raise FilterlensError(f"run directory '{rd.path}' holds an unfinished training (epoch {state.get('epoch')} "
                              f"of {cfg.epochs}); add --resume to continue it or --overwrite to start again")

    seed_everything(cfg.seed)
    device = dist_device or resolve_device(cfg.device)
    use_threads(cfg.threads, device)
    batch = dist_.per_rank_batch(cfg.batch_size, "batch_size")  # the global batch is the same for any N
    data, model, spec = _prepare(cfg)
    made = not rd.path.exists()
    # only now, with every setting and input checked, is the run directory locked and written
    with rd.lock("filterlens train"):
        try:
            return _fit(cfg, rd, data, model, spec, device, batch, resume, overwrite, progress)
        except Diverged:
            if made and dist_.is_main():  # a new run directory: nothing of the failed training stays
                from .rundir import LOCK, LOCK_INFO, remove_owned

                remove_owned(rd.path, keep={LOCK, LOCK_INFO})
            raise


def _prepare(cfg: ProbeSettings) -> tuple[Data, nn.Module, ModelSpec]:
    """The data and the model of a training, every setting that needs them checked (one line each)."""
    data = load_data_for(cfg)
    check_labels_present(data)
    check_schedule(cfg, -(-len(data.train) // max(cfg.batch_size, 1)))
    model, spec = make_model(cfg, data)
    check_model(model, data.input_shape, data.num_labels, f"model '{cfg.model}'", cfg.layers, cfg.tokens)
    return data, model, spec


def checkpoint_damage(rd: RunDir) -> str | None:
    """Why the run's own checkpoint.pt cannot be resumed from (it cannot be read), or None."""
    try:
        read_checkpoint(rd.file(CHECKPOINT))
    except FilterlensError:
        try:
            state = torch.load(rd.file(CHECKPOINT), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - what the reader says is the reason
            return f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}" if str(exc) else type(exc).__name__
        if digest_matches(state) is False:
            return "what it holds differs from the sha256 saved with it"
        return "not a filterlens checkpoint"
    return None


def _refuse_damaged_checkpoint(rd: RunDir) -> None:
    damage = checkpoint_damage(rd)
    if damage:
        raise FilterlensError(f"'{rd.file(CHECKPOINT)}' (the checkpoint filterlens train writes after every "
                              f"epoch) is damaged and cannot be resumed ({damage}); start the training again with "
                              "--overwrite (filterlens run --from train)")


def _finished(rd: RunDir, cfg: Hashed) -> dict | None:
    """The summary of a finished training with these settings, or None (also when its files changed since)."""
    if not (rd.exists(MODEL) and rd.exists(TRAIN_SUMMARY)):
        return None
    if "train" in rd.stages(strict=True) and rd.changed((MODEL, TRAIN_SUMMARY)):
        say(f"note: {', '.join(rd.changed((MODEL, TRAIN_SUMMARY)))} in {rd.path} changed since stage train "
             "wrote it (checksum); it is not trusted: training again")
        return None
    summary = rd.read_json(TRAIN_SUMMARY)
    if not isinstance(summary, dict) or summary.get("train_hash") != cfg.stage_hash("train"):
        return None
    say(f"model already trained in {rd.path} (test accuracy {summary['test_accuracy']:.4f}); nothing to do")
    return summary


@dataclass
class _Session:
    """One training's moving parts, made once by :func:`_session`: the model and the network that runs its steps
    (:func:`_training_net`), the optimiser, schedule and loss scaler, the precisions of training and evaluation, the
    loaders, the number of epochs, the loss above which the training has diverged, and the number of processes."""

    model: nn.Module
    net: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    precision: Precision
    infer: Precision
    train_loader: ArrayLoader | DatasetLoader
    test_loader: ArrayLoader | DatasetLoader
    epochs: int
    limit: float
    world: int


def _session(cfg: TrainSettings, data: Data, model: nn.Module, device, batch: int) -> _Session:
    """Everything a training's epochs need, in the order the training has always made it (the loaders' seeded
    generators after the optimiser), so a run resumed or trained again takes the same steps."""
    rank, world = dist_.rank(), dist_.world_size()
    model.to(device)
    precision = for_training(device, cfg.amp, model, data.input_shape)  # bfloat16 where it pays (precision.py)
    infer = for_inference(device, cfg.amp, model)
    model, net = _training_net(model, cfg, device, world, precision.channels_last)
    opt = _optimizer(cfg, model)
    train_loader = make_loader(data, "train", batch, train=True, seed=cfg.seed, device=device,
                               augment=cfg.augment, num_workers=cfg.num_workers, rank=rank, world_size=world)
    test_loader = make_loader(data, "test", 512, seed=cfg.seed, device=device, num_workers=cfg.num_workers,
                              rank=rank, world_size=world, pad=False)
    epochs = epochs_of(cfg, len(train_loader))
    sched = _scheduler(cfg, opt, epochs)
    # float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none
    scaler = torch.amp.GradScaler("cuda", enabled=precision.name == "float16")
    return _Session(model, net, opt, sched, scaler, precision, infer, train_loader, test_loader, epochs,
                    loss_limit(data.num_labels), world)


def _fit(cfg: Config, rd: RunDir, data: Data, model: nn.Module, spec: ModelSpec, device, batch: int, resume: bool,
         overwrite: bool, progress: bool | None) -> dict:
    """Train (or resume) into the locked run directory; write model.pt and train.json and record them."""
    main = dist_.is_main()
    if main:
        rd.claim(cfg, overwrite=overwrite, stage="train")
    dist_.barrier()
    s = _session(cfg, data, model, device, batch)
    history: list[dict] = []
    start = 0
    if resume and rd.exists(CHECKPOINT):
        history, start = _resume(rd, s.model, spec, s.opt, s.sched, s.scaler)
        say(f"resuming from epoch {start} of {s.epochs}" + (f" on {s.world} processes" if s.world > 1 else ""))
    show = progress if progress is not None else cfg.progress
    if start < s.epochs:
        say(f"note: training in {s.precision.name}" + (" with channels-last maps" if s.precision.channels_last
                                                       else "") + f" ({s.precision.reason})")
    t0 = time.perf_counter()
    for epoch in range(start, s.epochs):
        history.append(_epoch(s, cfg, epoch, show, device))
        if main:
            _save_epoch(rd, cfg, s, spec, data, history)
    summary = _summary(cfg, s, spec, data, history, start, device)
    # the whole training: the epochs before a resume (their logged times) and this process's time
    summary["seconds"] = sum(float(r.get("seconds", 0.0)) for r in history[:start]) + time.perf_counter() - t0
    if history and summary["convergence"]["converged"] is False:
        say(f"note: not converged by filterlens' rule ({summary['convergence']['reason']})")
    if main:
        save_checkpoint(rd.file(MODEL), _unwrap(s.model), spec, data.label_names,
                        {"epoch": s.epochs, "history": history, "config": cfg.to_dict()})
        write_json(rd.file(TRAIN_SUMMARY), summary)
        rd.remove(CHECKPOINT)
        rd.record("train", cfg.stage_hash("train"), (MODEL, TRAIN_SUMMARY), summary["seconds"])
    if s.world > 1:
        del s.net  # DDP's reducer, with its communication hooks, goes before the process group does
        dist_.barrier()  # every rank returns once the files are there
    return summary


def _epoch(s: _Session, cfg: TrainSettings, epoch: int, show: bool, device) -> dict:
    """One epoch: the steps over the training batches, the schedule's step, the divergence checks and the test
    set's evaluation; returns the epoch's row of train_log.csv (and says it)."""
    s.net.train()
    s.train_loader.set_epoch(epoch)
    te = time.perf_counter()
    bar = progress_bar(s.train_loader, show, desc=f"train epoch {epoch + 1}/{s.epochs}")
    loss_sum, correct, total = _train_epoch(s.net, bar, s.opt, s.scaler, s.precision, cfg, epoch, s.limit)
    s.sched.step()
    if s.world > 1:
        loss_sum, correct, total = dist_.all_reduce_sum([loss_sum, correct, total])
        dist_.broadcast_buffers(s.model)  # the model rank 0 saves is the one every rank evaluates
    if any(not bool(torch.isfinite(p).all()) for p in s.model.parameters()):
        _diverged(cfg, f"its weights became NaN or infinite at epoch {epoch + 1}", s.limit)
    ev = evaluate(s.model, s.test_loader, device, s.infer, reduce=s.world > 1)
    if not math.isfinite(ev["loss"]):
        _diverged(cfg, f"its test loss became {ev['loss']} at epoch {epoch + 1}", s.limit)
    row = {"epoch": epoch + 1, "lr": s.opt.param_groups[0]["lr"], "train_loss": loss_sum / total,
           "train_accuracy": correct / total, "test_loss": ev["loss"], "test_accuracy": ev["accuracy"],
           "seconds": time.perf_counter() - te, "precision": s.precision.name}
    say(f"epoch {epoch + 1:3d}/{s.epochs}  loss {row['train_loss']:.4f}  train acc "
        f"{row['train_accuracy']:.4f}  test acc {row['test_accuracy']:.4f}  ({row['seconds']:.1f}s)")
    return row


def _summary(cfg: Hashed, s: _Session, spec: ModelSpec, data: Data, history: list[dict], start: int, device) -> dict:
    """train.json's record of a finished training (its ``seconds`` are added by the caller). The final accuracy is
    the last epoch's, or measured now where this process trained no epoch (a finished checkpoint resumed)."""
    final = evaluate(s.model, s.test_loader, device, s.infer, reduce=s.world > 1) \
        if not history or start == s.epochs else {"accuracy": history[-1]["test_accuracy"],
                                                   "loss": history[-1]["test_loss"]}
    return {"train_hash": cfg.stage_hash("train"), "test_accuracy": final["accuracy"], "test_loss": final["loss"],
            "epochs": s.epochs, "steps": s.epochs * len(s.train_loader),
            "seconds": 0.0, "model": asdict(spec), "data": data.describe(), "history": history,
            "processes": s.world, "precision": {"train": s.precision.record(), "evaluation": s.infer.record()},
            "convergence": convergence(history)}


def _training_net(model: nn.Module, cfg: RunFields, device, world: int, channels_last: bool):
    """The model to train (in channels-last memory where the precision wants it) and the network that runs its
    steps: the model itself, wrapped in DistributedDataParallel under torchrun, compiled with ``cfg.compile``."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # the training's own model, built by _prepare
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    if cfg.compile:  # a Module's compiled form is a Module (an OptimizedModule); torch's stub says a function
        net = torch.compile(net)  # type: ignore[assignment]
    return model, net


def _save_epoch(rd: RunDir, cfg: TrainSettings, s: _Session, spec: ModelSpec, data: Data, history: list) -> None:
    """checkpoint.pt after an epoch (weights, optimiser, schedule, loss scaler, torch's generator: what
    :func:`_resume` reads back) and train_log.csv."""
    save_checkpoint(rd.file(CHECKPOINT), _unwrap(s.model), spec, data.label_names,
                    {"optimizer": s.opt.state_dict(), "scheduler": s.sched.state_dict(), "epoch": len(history),
                     "history": history, "torch_rng": torch.get_rng_state(), "config": cfg.to_dict(),
                     "world_size": s.world, "grad_scaler": s.scaler.state_dict()})
    write_csv(rd.file(TRAIN_LOG), history)


def _resume(rd: RunDir, model: nn.Module, spec: ModelSpec, opt, sched, scaler) -> tuple[list, int]:
    """The run's checkpoint.pt read back into the model, optimiser, schedule, loss scaler and torch's generator;
    returns the history so far and the number of epochs done."""
    state = load_checkpoint(rd.file(CHECKPOINT), model, spec)  # before any step: DDP replicas agree
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if state.get("grad_scaler"):  # float16 AMP: the loss scale it had reached
        scaler.load_state_dict(state["grad_scaler"])
    torch.set_rng_state(state["torch_rng"])
    return list(state["history"]), int(state["epoch"])


def _train_epoch(net, batches, opt, scaler, precision, cfg: TrainSettings, epoch: int, limit: float
                 ) -> tuple[float, float, float]:
    """One pass over the training batches: a step each; returns this rank's (summed loss, correct, samples).
    A loss that is not finite or above ``limit`` stops the training (:func:`_diverged`)."""
    total: float = 0  # counts (floats once summed over the ranks)
    correct: float = 0
    loss_sum = 0.0
    for x, y in batches:
        with precision.autocast():
            out = logits_of(net(precision.batch(x)))
            loss = F.cross_entropy(out.float(), y)
        value = float(loss.detach())
        if not math.isfinite(value) or value > limit:
            _diverged(cfg, f"its loss became {value:.4g} at epoch {epoch + 1}", limit)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        loss_sum += value * len(y)
        correct += (out.argmax(1) == y).sum().item()
        total += len(y)
    return loss_sum, correct, total


def _diverged(cfg: TrainFields, what: str, limit: float):
    raise Diverged(f"the training diverged: {what} (a training that learns stays below {limit:.0f}, 100 times the "
                   f"loss of a chance guess); no model is written: lower --lr (now {cfg.lr:g}) and train again")


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _analysed_in_python(rd: RunDir) -> bool:
    """An analysis saved from Python (``Analysis.save``): results without a training of this run."""
    return rd.exists(RESULTS) and "train" not in rd.stages()


def load_trained(run_dir, device="cpu") -> tuple[nn.Module, Config, Data, ModelSpec]:
    """The trained model of a run directory, with its config and data."""
    rd = RunDir(run_dir)
    if rd.exists(CONFIG) and not rd.exists(MODEL) and _analysed_in_python(rd):
        raise FilterlensError(f"'{rd.path}' was analysed from Python (filterlens.analyze): its model and data "
                              "cannot be rebuilt by the command line; run AFCC from Python: "
                              "filterlens.afcc.apply(model, analysis)")
    if not rd.path.is_dir() or not rd.exists(CONFIG) or not rd.exists(MODEL):
        raise FilterlensError(f"'{rd.path}' is not a trained run directory (no config.json/model.pt); run "
                              "filterlens train --run-dir first")
    rd.verify(MODEL, CONFIG)
    cfg = Config.from_dict(rd.read_json(CONFIG), source=str(rd.file(CONFIG)), stored=True)
    data = load_data_for(cfg)
    spec = model_spec_for(cfg, data)
    model = build_model(spec)
    load_checkpoint(rd.file(MODEL), model, spec)
    check_model(model, data.input_shape, data.num_labels, f"the model of '{rd.path}'", layers=None)
    model.to(device).eval()
    return model, cfg, data, spec
