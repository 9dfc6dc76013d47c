"""evaluate_bpb_carried: one stream per part, state carried across windows (D18 carry)."""

import math

import pytest
import torch
import torch.nn.functional as F

from nestlearn.errors import ConfigError
from nestlearn.eval.lm import evaluate_bpb_carried
from nestlearn.models.lm import CausalLM, model_config_from_dict


def _model(family):
    torch.manual_seed(0)
    return CausalLM(model_config_from_dict({"family": family, "d_model": 32, "n_layers": 1, "vocab_size": 256,
                                            "max_seq_len": 64})).double()


def test_carried_windows_equal_one_pass_per_part():
    model = _model("gated_deltanet")
    ids = torch.randint(0, 256, (203,))
    token_bytes = torch.ones(256, dtype=torch.long)
    windows = evaluate_bpb_carried(model, ids, token_bytes, seq_len=7, streams=3)
    per = 202 // 3
    inputs = torch.stack([ids[s * per:s * per + per] for s in range(3)])
    targets = torch.stack([ids[s * per + 1:s * per + per + 1] for s in range(3)])
    with torch.no_grad():
        logits = model(inputs).logits
    nats = F.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1), reduction="sum").item()
    assert windows["tokens"] == 3 * per
    assert windows["bpb"] == pytest.approx(nats / (math.log(2) * 3 * per), rel=1e-6)  # float32 loss


def test_bounded_models_and_bad_arguments_are_refused():
    ids = torch.randint(0, 256, (50,))
    with pytest.raises(ConfigError, match="bounded context"):
        evaluate_bpb_carried(_model("transformer"), ids, torch.ones(256), seq_len=8)
    with pytest.raises(ConfigError, match="streams"):
        evaluate_bpb_carried(_model("gated_deltanet"), ids, torch.ones(256), seq_len=8, streams=100)
