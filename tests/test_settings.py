"""Each stage's settings (issue 31, item 1): Config is the one record a run keeps, and every stage's functions take
the group of settings they may read, typed as a protocol that Config satisfies (config.SETTINGS_OF). The groups
must match Config's own record of each field's stage, and a stage's group may hold only settings that its stage
hash covers (config.DEPENDS): a stage that read a later stage's setting would reuse stale results when that setting
changed. The type checker holds the stage functions to their groups; the tests below also run two stages with
nothing but their group, so a read of anything else fails here."""
from dataclasses import fields

import pytest
import torch

from filterlens.config import DEPENDS, FIELDS_OF, SETTINGS_OF, Config, Hashed, ProbeSettings


def _members(protocol, own_only: bool = False) -> set[str]:
    """The settings a protocol declares: its annotated attributes and its methods (with its bases' unless own_only)."""
    classes = [protocol] if own_only else [c for c in protocol.__mro__ if c not in (object,)]
    out: set[str] = set()
    for c in classes:
        if c.__name__ in ("Protocol", "Generic"):
            continue
        out |= set(c.__dict__.get("__annotations__", {}))
        out |= {k for k, v in c.__dict__.items() if callable(v) and not k.startswith("_")}
    return out


def test_each_field_is_in_exactly_one_stage_group_as_config_records_it():
    for stage, protocol in FIELDS_OF.items():
        own = {n for n in _members(protocol, own_only=True) if n != "checkpoint_path"}
        assert own == {f.name for f in fields(Config) if f.metadata["stage"] == stage}, stage
    declared = [n for p in FIELDS_OF.values() for n in p.__dict__.get("__annotations__", {})]
    assert sorted(declared) == sorted(f.name for f in fields(Config))  # every field once


def test_a_stage_group_is_what_its_stage_hash_covers_and_the_run_wide_settings():
    for stage, settings in SETTINGS_OF.items():
        groups = {s for s, p in FIELDS_OF.items() if p in settings.__mro__}
        assert groups == set(DEPENDS[stage]) | {"run"}, stage


def test_config_holds_every_group():
    cfg = Config()
    for settings in [*SETTINGS_OF.values(), Hashed]:
        for name in _members(settings):
            assert hasattr(cfg, name), (settings.__name__, name)


class _Only:
    """A Config seen through one settings group: reading anything the group does not declare fails."""

    def __init__(self, cfg: Config, protocol):
        self._cfg, self._allowed, self._group = cfg, _members(protocol), protocol.__name__

    def __getattr__(self, name):
        if name.startswith("__") or name not in self._allowed:
            raise AttributeError(f"{self._group} does not hold '{name}'")
        return getattr(self._cfg, name)


def test_the_view_refuses_what_its_group_lacks():  # the control: the tests below would see a stray read
    view = _Only(Config(), ProbeSettings)
    assert view.probe_epochs is None and view.seed == 0
    for later in ("threshold", "bootstrap", "retrain_epochs", "num_labels"):
        with pytest.raises(AttributeError, match=later):
            getattr(view, later)


def test_the_probe_and_sfp_stages_run_on_their_groups_alone():
    from filterlens.analysis import probe_stage, sfp_stage
    from filterlens.data import load_data
    from filterlens.models import ModelSpec, build_model

    torch.manual_seed(0)
    model = build_model(ModelSpec("vgg_tiny", 10, 1, 8, 1.0, None))
    data = load_data("digits")
    cfg = Config(probe_epochs=1, bootstrap=5, progress=False, threads=1)
    pr = probe_stage(model, data, _Only(cfg, SETTINGS_OF["probes"]), keep_fields=True)  # type: ignore[arg-type]
    result = sfp_stage(pr, data.describe(), _Only(cfg, SETTINGS_OF["sfp"]))  # type: ignore[arg-type]
    assert [r["layer"] for r in result.layers] == [layer.name for layer in pr.layers]
    intervals = result.meta["bootstrap"]["intervals"]  # the bootstrap ran, reading its settings through the group
    assert result.meta["bootstrap"]["n"] == 5
    assert {row["layer"] for row in intervals} == {layer.name for layer in pr.layers}
