"""MAD's six synthetic tasks (tasks.md §8): each generator's defining property, the compression
auto-encoder, ``nestlearn bench`` on every task, and the ``mad`` suite section at its test size."""

import json

import pytest
import torch

from nestlearn.data.synthetic import IGNORE_INDEX, generate
from nestlearn.data.synthetic.mad import MAD_BASELINES, memorization_map
from nestlearn.errors import ConfigError
from nestlearn.eval.compression import CompressionModel

MAD_TASKS = sorted(MAD_BASELINES)


def _check_recall(batch, n_keys):
    """Every scored position reads a key shown earlier (or, fuzzy: a key motif) and wants the value that followed it."""
    for row_in, row_t in zip(batch.inputs.tolist(), batch.targets.tolist()):
        scored = [t for t, y in enumerate(row_t) if y != IGNORE_INDEX]
        assert scored
        for t in scored:
            key = row_in[t]
            assert key < n_keys
            earlier = [row_in[j + 1] for j in range(t) if row_in[j] == key and j % 2 == t % 2]
            assert earlier and earlier[-1] == row_t[t]


def test_recall_queries_want_the_value_paired_earlier():
    batch = generate("mad_recall", 32, 0)
    assert batch.inputs.shape == (32, 127) and batch.vocab_size == 16
    assert batch.inputs.max() < 16
    _check_recall(batch, n_keys=8)
    train = generate("mad_recall", 32, 0, training=True)
    assert torch.equal(train.inputs, batch.inputs)
    assert torch.equal(train.targets[:, :-1], batch.inputs[:, 1:])  # MAD's training form: the next token everywhere


def test_noisy_recall_inserts_noise_pairs_that_are_never_scored():
    batch = generate("mad_noisy_recall", 64, 1)
    noise = batch.inputs >= 16  # keys [0, 8), values [8, 16), noise [16, 32)
    assert 0.1 < noise.float().mean() < 0.3  # MAD's noise fraction 0.2, in pairs
    assert not (noise & batch.label_mask).any()
    _check_recall(batch, n_keys=8)
    clean = generate("mad_noisy_recall", 8, 1, frac_noise=0.0)
    assert (clean.inputs < 16).all()


def test_fuzzy_recall_has_multi_token_keys_and_values():
    batch = generate("mad_fuzzy_recall", 16, 2)
    assert batch.inputs.shape == (16, 128)
    for row_in, row_t in zip(batch.inputs.tolist(), batch.targets.tolist()):
        m = next(i for i, y in enumerate(reversed(row_t)) if y == IGNORE_INDEX)  # the final query's value length
        value = row_t[-m:]
        end = len(row_in) - m + 1  # inputs drop the last token, so the key ends one later than the targets
        key = row_in[end - 3:end]  # the test form queries at the longest key: 3 tokens
        assert 1 <= m <= 3 and all(7 <= v < 15 for v in value) and all(k < 7 for k in key)
        assert len(set(key)) == 3 and len(set(value)) == m  # a motif's tokens are distinct
        shown = ",".join(map(str, row_in[:end - 3]))
        assert ",".join(map(str, key + value)) in shown  # the pair was shown before it is queried
    train = generate("mad_fuzzy_recall", 16, 2, training=True)
    assert torch.equal(train.targets[:, :-1], train.inputs[:, 1:])


def test_selective_copying_targets_are_the_data_tokens_in_order():
    batch = generate("mad_selective_copying", 16, 3)
    blank, copy = 14, 15
    assert batch.inputs.shape == (16, 256)
    for row_in, row_t in zip(batch.inputs.tolist(), batch.targets.tolist()):
        assert row_in[256 - 17] == copy and row_in[-16:] == [blank] * 16
        data = [x for x in row_in[: 256 - 17] if x != blank]
        assert len(data) == 16 and row_t[-16:] == data and set(row_t[:-16]) == {IGNORE_INDEX}
        assert row_in[256 - 18] != blank  # blanks go only before data tokens, as MAD inserts them


def test_memorization_uses_one_fixed_map_across_samples_and_seeds():
    a, b = generate("mad_memorization", 32, 4), generate("mad_memorization", 32, 5)
    table = memorization_map(256, 12345)
    assert len(set(table.tolist())) == len(table) == 127 and table.min() >= 127 and table.max() < 255
    for batch in (a, b):
        assert (batch.inputs[:, 1::2] == 255).all()
        assert torch.equal(batch.targets[:, 1::2], torch.from_numpy(table)[batch.inputs[:, 0::2]])
        assert (batch.targets[:, 0::2] == IGNORE_INDEX).all()
    other = generate("mad_memorization", 32, 4, map_seed=1)
    assert not torch.equal(other.targets[:, 1::2], a.targets[:, 1::2])


def test_compression_targets_every_input_and_the_decoder_sees_only_the_last_state():
    from nestlearn.eval.suite.common import suite_model

    batch = generate("mad_compression", 4, 5)
    assert (batch.inputs[:, -1] == 15).all() and (batch.inputs[:, :-1] < 15).all()
    assert torch.equal(batch.targets, batch.inputs) and batch.meta["reconstruct"]
    model = suite_model("transformer", 16, 1, 32, batch, 0)
    assert isinstance(model, CompressionModel)
    logits = model(batch.inputs)
    assert logits.shape == (4, 32, 16)
    # Every output is read from the state at the last token: the output at position 0 depends on a
    # token read later (which a causal model's output at 0 cannot), and the position code alone
    # tells the outputs apart.
    edited = batch.inputs.clone()
    edited[:, 30] = (edited[:, 30] + 1) % 15
    assert not torch.allclose(model(edited)[:, 0], logits[:, 0])
    same = torch.full_like(batch.inputs, 3)
    assert not torch.allclose(model(same)[:, 0], model(same)[:, 1])


@pytest.mark.parametrize("name", MAD_TASKS)
def test_bench_runs_every_mad_task(name, tmp_path):
    from nestlearn.cli import main

    small = {"mad_compression": ["seq_len=8"], "mad_recall": ["seq_len=16"], "mad_noisy_recall": ["seq_len=16"],
             "mad_fuzzy_recall": ["seq_len=18", "key_motif=2", "value_motif=1"],
             "mad_selective_copying": ["seq_len=16", "num_tokens=4"],
             "mad_memorization": ["seq_len=8", "vocab_size=32"]}[name]
    out = tmp_path / name
    argv = ["bench", name, "--models", "transformer", "--steps", "2", "--batch-size", "4", "--d-model", "16",
            "--n-layers", "1", "--test-size", "8", "--out", str(out), "--no-progress"]
    for p in small:
        argv += ["--param", p]
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert 0 <= result["models"]["transformer"]["accuracy"]["test"] <= 1


def test_bad_mad_parameters_name_the_field():
    with pytest.raises(ConfigError, match="^seq_len:"):
        generate("mad_recall", 2, 0, seq_len=17)
    with pytest.raises(ConfigError, match="^frac_noise:"):
        generate("mad_noisy_recall", 2, 0, frac_noise=1.5)
    with pytest.raises(ConfigError, match="^vocab_size:"):
        generate("mad_fuzzy_recall", 2, 0, vocab_size=6)
    with pytest.raises(ConfigError, match="^seq_len:"):
        generate("mad_selective_copying", 2, 0, seq_len=20, num_tokens=16)


def test_mad_section_at_test_size_writes_resumable_cells(tmp_path):
    from nestlearn.eval.suite import mad

    s = mad.SETTINGS["test"]
    sec = mad.section(False, tmp_path, 0, settings=s)
    cells = sorted((tmp_path / "cells").glob("*.json"))
    assert len(cells) == len(s.models) * len(s.tasks) * len(s.lrs)
    assert "| Transformer++ |" in sec.markdown and "Hope (paper)" in sec.markdown
    assert "uninformative at this budget" in sec.markdown  # nothing learns in two steps
    for fam in s.models:
        for task in s.tasks:
            acc, lr = mad.best(sec.data, fam, task)
            assert 0 <= acc <= 1 and float(lr) in s.lrs
    stamp = {p.name: p.stat().st_mtime_ns for p in cells}
    again = mad.section(False, tmp_path, 0, settings=s)
    assert {p.name: p.stat().st_mtime_ns for p in cells} == stamp and again.markdown == sec.markdown


def test_mad_verdicts_need_a_baseline_at_half_and_flag_grid_edges():
    from nestlearn.eval.suite import mad

    def run(*accs):
        return {f"{lr:g}": {"accuracy": a, "nonfinite_steps": 0, "seconds": 1.0, "steps": 1, "epochs": 0.1}
                for lr, a in zip((3e-4, 1e-3, 3e-3), accs)}

    result = {"settings": {"models": ["transformer", "hope"], "tasks": ["mad_recall", "mad_memorization"],
                           "lrs": [3e-4, 1e-3, 3e-3]},
              "runs": {"transformer": {"mad_recall": run(0.9, 0.5, 0.4), "mad_memorization": run(0.3, 0.4, 0.2)},
                       "hope": {"mad_recall": run(0.2, float("nan"), 0.95), "mad_memorization": run(1.0, 1.0, 1.0)}}}
    assert mad.best(result, "hope", "mad_recall") == (0.95, "0.003")  # a NaN run never wins
    assert mad.informative(result, "mad_recall") and not mad.informative(result, "mad_memorization")
    text = "\n".join(mad.verdicts(result))
    assert "ICR: best Hope (95.0 %)" in text and "agrees with" in text
    assert "Memory: **uninformative at this budget**" in text  # Hope's 100 % does not count without a baseline
    assert mad.grid_edges(result) == ["Transformer++ on ICR (0.0003)", "Hope on ICR (0.003)"]  # ties not flagged


def test_mad_section_reports_stored_cells_only_and_how_far_the_rest_are(tmp_path):
    from dataclasses import replace

    from nestlearn.eval.suite import mad

    s = mad.SETTINGS["test"]
    first, *others = s.models
    mad.section(False, tmp_path, 0, settings=replace(s, models=(first,)))
    partial = replace(s, models=(first, others[0]), tasks=s.tasks[:1], lrs=s.lrs[:1])
    mad.section(False, tmp_path, 0, settings=partial)  # one of the second family's cells
    cells = len(list((tmp_path / "cells").glob("*.json")))
    sec = mad.section(False, tmp_path, 0, settings=s, stored_only=True)
    assert len(list((tmp_path / "cells").glob("*.json"))) == cells  # nothing trained
    assert list(sec.data["runs"]) == [first]
    total = len(s.tasks) * len(s.lrs)
    assert f"{mad.NAMES[others[0]]} (1 of {total} runs stored)" in sec.markdown
    assert all(f"{mad.NAMES[f]} (not run yet)" in sec.markdown for f in others[1:])
