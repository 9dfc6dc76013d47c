"""NIAH and bAbI-style scoring (tasks.md §2.2, §3.2) on hand-made prompts with a scripted model,
and the shared-prefix ranking against scoring whole rows."""

import numpy as np
import pytest
import torch
from torch import nn

from nestlearn.config import from_dict
from nestlearn.data.synthetic import generate, niah_ranking_batch
from nestlearn.data.synthetic.babi import LOCATIONS
from nestlearn.data.synthetic.base import TaskBatch, pad_left
from nestlearn.data.synthetic.text import PAD_ID, TEXT_VOCAB, encode
from nestlearn.eval.metrics import continuation_logliks
from nestlearn.eval.text import (
    babi_scores,
    continuation_scores,
    decode_ids,
    niah_items,
    niah_scores,
    read_prompts,
)
from nestlearn.models.lm import CausalLM, LMOutput, LMState, families


class Bigram(nn.Module):
    """A scripted model: the next token depends on the current one only (``script[a] = b`` makes b likely after a)."""

    def __init__(self, script: str):
        super().__init__()
        table = torch.zeros(TEXT_VOCAB, TEXT_VOCAB)
        for a, b in zip(script[::2], script[1::2]):
            table[ord(a), ord(b)] = 10.0
        self.table = nn.Parameter(table)

    def forward(self, tokens, state=None, targets=None):
        pos = 0 if state is None else state.pos
        return LMOutput(self.table[tokens], None, LMState(pos + tokens.shape[1], []))


def _batch(prompts: list[str], meta: dict) -> TaskBatch:
    ids = torch.from_numpy(pad_left([encode(p) for p in prompts], PAD_ID))
    return TaskBatch(inputs=ids, targets=torch.full_like(ids, -100), vocab_size=TEXT_VOCAB, num_classes=TEXT_VOCAB,
                     meta={"prompts": ids, **meta})


def test_niah_decoding_and_ranking_on_hand_made_prompts():
    # After "is" the script spells " 1234567.": right for the first prompt, wrong for the second.
    model = Bigram("s  11223344556677.")
    batch = _batch(["key alpha is", "key beta is"], {
        "answers": [["1234567"], ["7654321"]], "answer_text": [" 1234567", " 7654321"],
        "candidates": [[["1234567", "1111111", "2222222"]], [["7654321", "1234567", "5555555"]]],
        "candidate_contexts": [[" "], [" "]]})
    scores = niah_scores(model, batch)
    assert scores["generated"] == [" 1234567", " 1234567"]
    assert scores["decoding_correct"] == [True, False] and scores["decoding"] == 0.5
    assert scores["ranking_correct"] == [1.0, 0.0] and scores["ranking"] == 0.5


def test_niah_multi_value_scores_each_gold_and_string_match_all():
    # Two golds: the script decodes " 12, 12"; it ranks "12" first for both golds, right only for the first.
    model = Bigram(":  1122,, ")
    batch = _batch(["values:"], {
        "answers": [["12", "99"]], "answer_text": [" 12, 99"],
        "candidates": [[["12", "56", "78"], ["99", "12", "56"]]], "candidate_contexts": [[" ", " 12, "]]})
    scores = niah_scores(model, batch)
    assert scores["generated"] == [" 12, 12"]
    assert scores["decoding"] == 0.5  # string_match_all: one of two golds found
    assert scores["ranking"] == 0.5


def test_babi_decoding_and_ranking_on_hand_made_prompts():
    model = Bigram(":  ggaarrddeenn.")
    batch = _batch(["Where is John?\nAnswer:", "Where is Mary?\nAnswer:"], {
        "answers": ["garden", "office"], "answer_sets": [LOCATIONS, LOCATIONS],
        "gold_index": torch.tensor([LOCATIONS.index("garden"), LOCATIONS.index("office")])})
    scores = babi_scores(model, batch)
    assert scores["generated"][0].startswith(" garden.")
    assert scores["decoding_correct"] == [True, False] and scores["decoding"] == 0.5
    assert scores["ranking_correct"] == [True, False] and scores["ranking"] == 0.5


def test_decode_ids_marks_special_tokens():
    assert decode_ids([72, 105, PAD_ID, 33]) == "Hi\ufffd!"


@pytest.mark.parametrize("family", ["transformer", "lstm", "gated_deltanet"])
def test_shared_prefix_ranking_equals_scoring_whole_rows(family):
    batch = generate("s_niah_1", 1, 3, seq_len=448, num_distractors=3)
    cfg = from_dict(families()[family], {"d_model": 16, "n_layers": 2, "max_seq_len": 512, "vocab_size": TEXT_VOCAB,
                                         "n_heads": 2} if family != "lstm" else
                    {"d_model": 16, "n_layers": 2, "vocab_size": TEXT_VOCAB}, prefix="model")
    torch.manual_seed(0)
    model = CausalLM(cfg).double().eval()
    rows = niah_ranking_batch(batch)
    with torch.no_grad():
        whole = continuation_logliks(model(rows.inputs).logits, rows.targets)
    prompt = batch.meta["prompts"][0]
    logits, state = read_prompts(model, prompt[prompt != PAD_ID][None])  # the whole rows carry no padding
    shared = continuation_scores(model, logits.double(), state, niah_items(batch), rows_per_pass=3)[0]
    np.testing.assert_allclose(shared.numpy(), whole.numpy(), rtol=1e-4, atol=1e-4)
