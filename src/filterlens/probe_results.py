"""What stage 2 produces, with the only save and load of its files (METHOD.md stage 2).

A :class:`ProbeResult` holds, for every analysed layer (:class:`LayerProbeResult`), the trained
bias-free FC weight (L, C, H, W), the per-label mean maps of the test set (stage 3's input), how
often each output unit wins each unit's field, the top test images per unit and output unit and,
for the bootstrap, either the per-sample single-unit fields or the test features (whichever is
smaller, :func:`filterlens.probes.bootstrap_input`); plus how the probes were trained
(:class:`ProbeRecipe`) and by which engine. :meth:`ProbeResult.save` writes ``probes.pt`` (the
weights), ``label_means.pt`` (means, counts, votes, top images, fields or features) and ``probes.json``
(the rest); :meth:`ProbeResult.load` reads them back, checked against the checksums their stage recorded.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import ProbeFields
from .errors import FilterlensError
from .files import read_json, torch_save, write_json
from .names import LABEL_MEANS, PROBE_FILES, PROBES, PROBES_JSON
from .rundir import RunDir


@dataclass
class ProbeRecipe:
    """How every layer's FC is trained (recorded in the results)."""

    optimizer: str  # "adam" or "sgd"
    lr: float
    epochs: int
    batch_size: int = 100
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    lr_decay: str = "cosine"  # "cosine" or "exp:<factor per epoch>"
    augment: bool = False

    @classmethod
    def paper(cls, epochs: int = 200, **kw) -> "ProbeRecipe":
        """The papers' recipe: SGD, lr 0.01, momentum 0.975 (Nesterov), weight decay 1e-3, lr x 0.975 per
        epoch, batch 100, augmentation, ``epochs`` epochs; ``kw`` (None: kept) overrides."""
        base: dict[str, Any] = dict(optimizer="sgd", lr=0.01, epochs=epochs, batch_size=100, momentum=0.975,
                                    nesterov=True, weight_decay=1e-3, lr_decay="exp:0.975", augment=True)
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)

    @classmethod
    def fast(cls, epochs: int = 30, **kw) -> "ProbeRecipe":
        """The fast recipe: Adam, lr 1e-2, cosine decay, batch 100, no weight decay nor augmentation, ``epochs``
        epochs; ``kw`` (None: kept) overrides."""
        base: dict[str, Any] = dict(optimizer="adam", lr=1e-2, epochs=epochs, batch_size=100, weight_decay=0.0,
                                    lr_decay="cosine", augment=False)
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)

    @classmethod
    def from_config(cls, cfg: ProbeFields) -> "ProbeRecipe":
        """The recipe of ``cfg.probe_mode`` (paper: 200 epochs by default, fast: 30) with the probe
        settings ``cfg`` gives."""
        kw = dict(lr=cfg.probe_lr, weight_decay=cfg.probe_weight_decay, batch_size=cfg.probe_batch_size)
        if cfg.probe_mode == "paper":
            return cls.paper(epochs=cfg.probe_epochs if cfg.probe_epochs is not None else 200, **kw)
        return cls.fast(epochs=cfg.probe_epochs if cfg.probe_epochs is not None else 30, augment=cfg.probe_augment,
                        **kw)


@dataclass
class LayerProbeResult:
    """Stage 2 of one layer: its probe FC's weight (L, C, H, W), test accuracy, the per-label mean maps of
    the test set, the votes, the top test images and the bootstrap's input (see the module docstring)."""

    name: str
    index: int
    units: int  # C: the layer's filters, heads or nodes
    shape: tuple[int, int, int]  # (C, H, W) the FC sees (after probe_pool)
    layer_shape: tuple[int, int, int]  # the layer's own output shape
    features: int
    accuracy: float
    train_accuracy: float | None
    weight: torch.Tensor  # (L, C, H, W)
    label_means: torch.Tensor  # (L, C, H, W) float64, test set
    votes: torch.Tensor  # (C, L) how often output unit j wins filter c's field over the test set
    # for the bootstrap, one of two (filterlens.probes.bootstrap_input): fields (N_test, C, L), the per-sample
    # single-filter fields in float32, or test_features (N_test, C, H, W) as the cache holds them
    fields: torch.Tensor | None = None
    unit_kind: str = "filter"  # "filter" (conv channels), "head" (attention heads) or "node" (FC / MLP nodes)
    top_values: torch.Tensor | None = None  # (C, L, k): per unit and output unit, the k largest test fields
    top_indices: torch.Tensor | None = None  # (C, L, k): the test images they belong to
    # the probes trained from other seeds (probe_seeds > 1): their per-sample test fields (for the bootstrap, with
    # the fields) and test accuracies
    extra_fields: list | None = None
    extra_accuracy: list | None = None
    test_features: torch.Tensor | None = None
    extra_weights: list | None = None  # their weights (L, C, H, W), for the bootstrap with the test features

    @property
    def filters(self) -> int:
        """``units`` by its name from before units beyond filters existed (kept for earlier code)."""
        return self.units

    @property
    def bootstrap_input(self) -> str | None:
        """Which input of the bootstrap this layer kept: ``"fields"``, ``"features"`` or None."""
        return "fields" if self.fields is not None else "features" if self.test_features is not None else None


@dataclass
class ProbeResult:
    """Stage 2 of every analysed layer (:class:`LayerProbeResult`, in layer order), with how the probes were
    trained and by which engine; :meth:`save` writes its files, :meth:`load` reads them back."""

    layers: list[LayerProbeResult]
    mode: str  # "fast", "paper"
    engine: str  # "cache" or "stream"
    recipe: ProbeRecipe
    label_counts: torch.Tensor  # test samples per label
    timings: dict = field(default_factory=dict)
    forward_passes: int = 0
    note: str = ""
    test_labels: torch.Tensor | None = None  # (N_test,) in the order of the fields
    engine_plan: dict | None = None  # which engine and why (engine.EnginePlan.record)
    data: dict = field(default_factory=dict)  # the data analysed (Data.describe())
    precision: dict = field(default_factory=dict)  # the capture's arithmetic, the cache's and the probes' (probes.py)
    # the model analysed: filterlens.fingerprint.weights_fingerprint (set by analysis.probe_stage; "" when unknown)
    model_fingerprint: str = ""

    def table(self) -> list[dict]:
        """One row per layer: its name, filters (units), features and accuracy."""
        return [{"layer": r.name, "filters": r.units, "features": r.features, "accuracy": r.accuracy}
                for r in self.layers]

    def layer(self, name: str) -> LayerProbeResult:
        """One analysed layer's arrays (refused in one line when it was not analysed)."""
        for r in self.layers:
            if r.name == name:
                return r
        raise FilterlensError(f"layer {name!r} was not analysed; analysed: {', '.join(r.name for r in self.layers)}")

    def save(self, directory, settings_hash: str = "") -> list[Path]:
        """Write probes.pt (FC weights), label_means.pt (means, counts, votes[, top images][, the bootstrap's
        inputs: fields or test features per layer, with the test labels and the other probes' fields or weights])
        and probes.json (the rest, with each layer's ``bootstrap_input``); returns their paths."""
        d = Path(directory)
        written = [torch_save(d / PROBES, {r.name: r.weight for r in self.layers})]
        blob = {"means": {r.name: r.label_means for r in self.layers}, "counts": self.label_counts,
                "votes": {r.name: r.votes for r in self.layers}}
        for key, attr in (("fields", "fields"), ("features", "test_features"), ("extra_fields", "extra_fields"),
                          ("extra_weights", "extra_weights")):
            kept = {r.name: getattr(r, attr) for r in self.layers if getattr(r, attr) is not None}
            if kept:
                blob[key] = {name: list(v) if isinstance(v, list) else v for name, v in kept.items()}
        if "fields" in blob or "features" in blob:
            blob["test_labels"] = self.test_labels
        if self.layers and self.layers[0].top_indices is not None:
            blob["top"] = {r.name: {"values": r.top_values, "indices": r.top_indices} for r in self.layers}
        written.append(torch_save(d / LABEL_MEANS, blob))
        inputs = [r.bootstrap_input for r in self.layers]
        written.append(write_json(d / PROBES_JSON, {
            "hash": settings_hash, "mode": self.mode, "engine": self.engine, "engine_choice": self.engine_plan,
            "recipe": asdict(self.recipe), "note": self.note, "forward_passes": self.forward_passes,
            "timings": self.timings, "data": self.data,
            # every layer's per-sample fields; every layer's bootstrap input (its fields or its test features)
            "fields_kept": bool(inputs) and all(k == "fields" for k in inputs),
            "bootstrap_inputs_kept": bool(inputs) and all(k is not None for k in inputs),
            "precision": self.precision, "model_fingerprint": self.model_fingerprint,
            "layers": [{"name": r.name, "index": r.index, "filters": r.units, "unit_kind": r.unit_kind,
                        "shape": list(r.shape), "layer_shape": list(r.layer_shape), "features": r.features,
                        "accuracy": r.accuracy, "train_accuracy": r.train_accuracy,
                        "extra_accuracy": r.extra_accuracy or [], "bootstrap_input": r.bootstrap_input}
                       for r in self.layers]}))
        return written

    @classmethod
    def load(cls, directory) -> "ProbeResult":
        """Read what :meth:`save` wrote, each file checked against the checksum its stage recorded."""
        d = Path(directory)
        RunDir(d).verify(*PROBE_FILES)
        for name in PROBE_FILES:
            if not (d / name).exists():
                raise FilterlensError(f"'{d}' has no {name}; run the probes stage (filterlens analyze, or filterlens "
                                      "run --from probes)")
        meta = read_json(d / PROBES_JSON)
        try:
            weights = torch.load(d / PROBES, map_location="cpu", weights_only=True)
            blob = torch.load(d / LABEL_MEANS, map_location="cpu", weights_only=True)
            fields, features, top = blob.get("fields") or {}, blob.get("features") or {}, blob.get("top") or {}
            no_top = {"values": None, "indices": None}
            layers = [LayerProbeResult(m["name"], m["index"], m["filters"], tuple(m["shape"]), tuple(m["layer_shape"]),
                                       m["features"], m["accuracy"], m["train_accuracy"], weights[m["name"]],
                                       blob["means"][m["name"]], blob["votes"][m["name"]], fields.get(m["name"]),
                                       m.get("unit_kind", "filter"), top.get(m["name"], no_top)["values"],
                                       top.get(m["name"], no_top)["indices"], test_features=features.get(m["name"]))
                      for m in meta["layers"]]
            extra, extra_w = blob.get("extra_fields") or {}, blob.get("extra_weights") or {}
            for r, m in zip(layers, meta["layers"]):
                if r.name in extra or r.name in extra_w:
                    r.extra_accuracy = list(m.get("extra_accuracy") or [])
                if r.name in extra:
                    r.extra_fields = list(extra[r.name])
                if r.name in extra_w:
                    r.extra_weights = list(extra_w[r.name])
            for r in layers:
                if tuple(r.weight.shape) != tuple(r.label_means.shape):
                    raise ValueError(f"layer {r.name}: FC weight {tuple(r.weight.shape)} and label means "
                                     f"{tuple(r.label_means.shape)} disagree")
                if r.test_features is not None and tuple(r.test_features.shape[1:]) != tuple(r.weight.shape[1:]):
                    raise ValueError(f"layer {r.name}: test features {tuple(r.test_features.shape)} and FC weight "
                                     f"{tuple(r.weight.shape)} disagree")
            return cls(layers, meta["mode"], meta["engine"], ProbeRecipe(**meta["recipe"]), blob["counts"],
                       meta["timings"], meta["forward_passes"], meta["note"], blob.get("test_labels"),
                       meta.get("engine_choice"), meta.get("data") or {}, meta.get("precision") or {},
                       str(meta.get("model_fingerprint") or ""))
        except Exception as exc:  # noqa: BLE001 - any unreadable or inconsistent file: one line
            raise FilterlensError(f"the probe files of '{d}' ({', '.join(PROBE_FILES)}) cannot be read "
                                  f"({type(exc).__name__}: {str(exc)[:100]}); run the probes stage again "
                                  "(filterlens analyze, or filterlens run --from probes)") from None


