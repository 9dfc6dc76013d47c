"""D25: the switch registry matches the configs, runs record the full switch set, resumes refuse changes."""

from dataclasses import fields

import pytest

from nestlearn.errors import CheckpointError, ConfigError
from nestlearn.layers.cms import CMSConfig
from nestlearn.layers.self_modifying import SelfModConfig
from nestlearn.models.lm import families
from nestlearn.stateful import POLICIES
from nestlearn.switches import (
    BY_PATH,
    SWITCHES,
    default_switches,
    describe_switches,
    non_default_switches,
    registry_table,
    resolved_switches,
)
from nestlearn.train.config import load_run_config

OPTIMIZERS = ("adamw", "muon", "m3", "dmgd", "delta", "precond", "dgd")
# Switches whose values need another switch off its default: σ is chosen only in the mlp level form.
COMPANIONS = {"model.cms.activation": {"cms": {"level_form": "mlp"}}}


def _run(path: str, value, family: str = "hope", optim: str = "adamw"):
    """A run config dict for ``family`` with ``path`` set to ``value`` (validated)."""
    section, _, rest = path.partition(".")
    data: dict = {"model": {"family": family, **COMPANIONS.get(path, {})}, "optim": {"name": optim}}
    node = data.setdefault(section, {})
    *parents, leaf = rest.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return load_run_config(None, base=data)


def _home(switch):
    """A family and optimiser for which the switch applies."""
    for family in ("hope", "hope_attention", *sorted(families())):
        for optim in switch.optimizers or ("adamw",):
            if switch.path in default_switches(family, optim):
                return family, optim
    raise AssertionError(f"{switch.path} applies to no family")


def test_every_switch_applies_somewhere_and_paths_are_unique():
    assert len(BY_PATH) == len(SWITCHES)
    for switch in SWITCHES:
        _home(switch)


@pytest.mark.parametrize("config_cls, prefix", [(SelfModConfig, "model.selfmod."), (CMSConfig, "model.cms.")])
def test_every_field_of_the_paper_configs_is_registered(config_cls, prefix):
    missing = [f.name for f in fields(config_cls) if prefix + f.name not in BY_PATH]
    assert not missing, f"register these switches in nestlearn.switches: {missing}"


@pytest.mark.parametrize("switch", [s for s in SWITCHES if isinstance(s.allowed, tuple) and s.path != "state.policy"],
                         ids=lambda s: s.path)
def test_allowed_values_validate_and_others_are_refused(switch):
    family, optim = _home(switch)
    for value in switch.allowed:
        cfg = _run(switch.path, value, family, optim)
        assert resolved_switches(cfg.to_dict())[switch.path] == value
    bogus = "not-a-choice" if isinstance(switch.allowed[0], str) else 7
    with pytest.raises(ConfigError) as err:
        _run(switch.path, bogus, family, optim)
    assert err.value.field.startswith(switch.path)


def test_state_policy_matches_the_stateful_api():
    assert set(BY_PATH["state.policy"].allowed) == set(POLICIES)


def test_non_default_switches_are_listed_with_their_decision():
    cfg = _run("model.selfmod.inner_rule", "gd").to_dict()
    changed = non_default_switches(cfg)
    assert changed == [("model.selfmod.inner_rule", "gd", "dgd")]
    assert "D6" in describe_switches(changed)
    assert non_default_switches(_run("model.selfmod.inner_rule", "dgd").to_dict()) == []
    assert "model.selfmod.inner_rule" in registry_table()


def test_optimizer_switches_only_for_their_optimizer():
    assert "optim.variant" in default_switches("transformer", "m3")
    assert "optim.variant" not in default_switches("transformer", "adamw")
    assert not any(p.startswith("model.") for p in default_switches("transformer", "adamw"))


def _tiny_hope(tmp_path, tiny_text, *extra):
    overrides = ["model.family=hope", "model.d_model=32", "model.n_layers=1", "model.cms.chunk_sizes=[8,4]",
                 "model.selfmod.chunk_size_memory=4", "model.selfmod.chunk_size_other=8", "train.steps=2",
                 "train.batch_size=2", "train.seq_len=16", "train.eval_every=2", "train.eval_tokens=64",
                 "train.ckpt_every=1", "train.warmup_steps=1", "train.sample_tokens=0", f"data.source={tiny_text}",
                 f"train.out_dir={tmp_path / 'run'}", *extra]
    return load_run_config(None, overrides)


def test_checkpoint_records_switches_and_resume_refuses_a_changed_switch(tmp_path, tiny_text):
    from nestlearn.train import Trainer
    from nestlearn.train.checkpoint import load_checkpoint

    cfg = _tiny_hope(tmp_path, tiny_text, "train.stop_at=1")
    trainer = Trainer(cfg, progress=False)
    trainer.run()
    _, meta = load_checkpoint(tmp_path / "run")
    assert meta["switches"] == resolved_switches(trainer.cfg.to_dict())
    assert meta["switches"]["model.selfmod.inner_rule"] == "dgd"
    assert {"commit", "nestlearn_version", "torch"} <= set(meta["provenance"])

    changed = _tiny_hope(tmp_path, tiny_text, "model.selfmod.inner_rule=gd")
    with pytest.raises(CheckpointError, match=r"model\.selfmod\.inner_rule: checkpoint 'dgd', requested 'gd'"):
        Trainer(changed, resume=tmp_path / "run", progress=False)
    resumed = Trainer(changed, resume=tmp_path / "run", allow_config_change=True, progress=False)
    resumed.run()
    _, meta = load_checkpoint(tmp_path / "run")
    assert meta["switches"]["model.selfmod.inner_rule"] == "gd"
    assert meta["config_overrides"][0]["changes"][0][:3] == ["model.selfmod.inner_rule", "dgd", "gd"]


def test_docs_switch_table_is_in_sync():
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "switches.md").read_text(encoding="utf-8")
    assert registry_table() in doc, "regenerate docs/switches.md from `nestlearn info --switches`"
