"""The LSTM baseline (formal-language table): a registered, stateful family that learns parity quickly."""

import torch

from nestlearn.data.synthetic import generate
from nestlearn.eval.tasks import fit_task, task_accuracy, task_model
from nestlearn.models import CausalLM, families
from nestlearn.models.lstm import LSTMConfig


def test_lstm_is_registered_and_streams_segment_by_segment():
    assert families()["lstm"] is LSTMConfig
    torch.manual_seed(0)
    model = CausalLM(LSTMConfig(vocab_size=11, d_model=16, n_layers=2, max_seq_len=8)).double()
    tokens = torch.randint(0, 11, (3, 13))
    full = model(tokens).logits
    first = model(tokens[:, :5])
    rest = model(tokens[:, 5:], state=first.state)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], dim=1), full)
    assert rest.state.pos == 13 and rest.state.layers[0]["h"].shape == (3, 16)
    # Unbounded context: longer than max_seq_len is fine for a recurrent family.
    assert model(torch.randint(0, 11, (1, 20))).logits.shape == (1, 20, 11)


def test_lstm_learns_parity_and_generalises_to_longer_strings():
    kw = {"train_lengths": (1, 16)}
    torch.manual_seed(0)
    model = task_model(LSTMConfig(d_model=32, n_layers=1, max_seq_len=128), generate("formal_parity", 2, 0, **kw))
    bin0 = generate("formal_parity", 200, 99, split="bin0", **kw)
    assert task_accuracy(model, bin0) < 0.1
    fit_task(model, lambda step: generate("formal_parity", 32, 1000 + step, **kw), 150, lr=1e-2)
    assert task_accuracy(model, bin0) > 0.95
    assert task_accuracy(model, generate("formal_parity", 200, 99, split="bin1", **kw)) > 0.8
