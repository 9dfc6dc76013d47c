from dataclasses import dataclass

import pytest

from nestlearn.config import apply_overrides, from_dict
from nestlearn.errors import ConfigError
from nestlearn.train.config import load_run_config, run_config_from_dict


def test_defaults_build_a_valid_run_config():
    cfg = run_config_from_dict({})
    assert cfg.model.family == "transformer" and cfg.train.steps > 0


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  family: transformer\n  d_model: 64\n  n_heads: 2\ntrain:\n  steps: 10\n")
    cfg = load_run_config(path, ["train.steps=20", "model.tie_embeddings=false", "optim.lr=1e-3"])
    assert cfg.model.d_model == 64 and cfg.train.steps == 20
    assert cfg.model.tie_embeddings is False and cfg.optim.lr == 1e-3


@pytest.mark.parametrize("override, field", [
    (["model.d_modle=3"], "model.d_modle: unknown key"),
    (["trian.steps=3"], "trian: unknown section"),
    (["train.steps=ten"], "train.steps: expected an integer"),
    (["train.steps=2.5"], "train.steps: expected an integer"),
    (["train.bf16=3"], "train.bf16: expected true or false"),
    (["model.d_model=-8"], "model.d_model: must be > 0"),
    (["train.batch_size=0"], "train.batch_size: must be > 0"),
    (["train.min_lr_ratio=1.5"], r"train.min_lr_ratio: must lie in \[0.0, 1.0\]"),
    (["model.family=rnn"], "model.family: must be one of"),
    (["model.n_heads=3"], "model.n_heads: must divide"),
    (["data.tokenizer=words"], "data.tokenizer: must be one of 'byte', 'bpe'"),
    (["train.device=tpu"], "train.device: must be one of"),
    (["train"], "--set: expected key=value"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field):
        load_run_config(None, override)


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(ConfigError, match="--config: file not found"):
        load_run_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_run_config(listy)


@dataclass
class _Nested:
    sizes: tuple[int, ...] = (1, 2)
    scale: float = 1.0
    name: str | None = None


def test_typed_fields_and_optional():
    obj = from_dict(_Nested, {"sizes": [3, 4, 5], "scale": 2, "name": None})
    assert obj.sizes == (3, 4, 5) and obj.scale == 2.0 and isinstance(obj.scale, float)
    with pytest.raises(ConfigError, match=r"x.sizes\[1\]: expected an integer"):
        from_dict(_Nested, {"sizes": [3, "a"]}, prefix="x")
    assert apply_overrides({}, ["a.b.c=[1, 2]"]) == {"a": {"b": {"c": [1, 2]}}}


def test_yaml_numbers_and_booleans_follow_yaml_1_2():
    from nestlearn.config import parse_yaml

    assert parse_yaml("1e-3") == 1e-3 and parse_yaml("-2e5") == -2e5 and parse_yaml("3") == 3
    assert parse_yaml("true") is True and parse_yaml("False") is False
    # YAML 1.1 would read these as booleans; "off" is a switch value (D9).
    assert [parse_yaml(w) for w in ("off", "on", "yes", "no")] == ["off", "on", "yes", "no"]


def test_a_removed_field_loads_at_its_old_default_and_names_its_replacement_otherwise():
    """Checkpoints written before ``selfmod.dgd_normalize`` was removed still load; asking for it is an error."""
    from nestlearn.layers.self_modifying import SelfModConfig

    assert from_dict(SelfModConfig, {"dgd_normalize": False}, prefix="model.selfmod") == SelfModConfig()
    with pytest.raises(ConfigError, match=r"model\.selfmod\.dgd_normalize.*step_norm: implicit"):
        from_dict(SelfModConfig, {"dgd_normalize": True}, prefix="model.selfmod")
