"""The formal-language section's Hope row is the shipped formal config."""

from dataclasses import asdict
from pathlib import Path

from nestlearn.eval.suite.common import _SIZE_FIELDS as SIZES
from nestlearn.eval.suite.common import suite_config
from nestlearn.train.config import load_run_config


def test_the_hope_formal_row_is_configs_hope_formal_yaml():
    shipped = load_run_config(Path(__file__).parent.parent / "configs" / "hope-formal.yaml").model
    row = suite_config("hope_formal", shipped.d_model, shipped.n_layers, shipped.max_seq_len)
    assert {k: v for k, v in asdict(row).items() if k not in SIZES} == \
        {k: v for k, v in asdict(shipped).items() if k not in SIZES}
