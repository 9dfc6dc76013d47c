"""Formal languages (tasks.md §4): membership by regex/counters and next-sets by a viability oracle."""

import re

import numpy as np
import pytest
import torch

from nestlearn.data.synthetic import formal_language, verbatim_overlap
from nestlearn.data.synthetic.formal import ALPHABETS, LANGUAGES, legal_lengths
from nestlearn.errors import ConfigError
from nestlearn.eval.metrics import recognition_accuracy


def _shuffle_counts(w):
    depth = {"(": 0, "[": 0}
    for ch in w:
        if ch in "([":
            depth[ch] += 1
        else:
            depth["(" if ch == ")" else "["] -= 1
            if min(depth.values()) < 0:
                return None
    return depth


def member(lang, w):
    if lang == "parity":
        return re.fullmatch("[01]*", w) is not None and w.count("1") % 2 == 0
    if lang == "aa_star":
        return re.fullmatch("(aa)*", w) is not None
    if lang == "abab_star":
        return re.fullmatch("(abab)*", w) is not None
    if lang == "anbn":
        m = re.fullmatch("(a*)(b*)", w)
        return m is not None and len(m[1]) == len(m[2]) >= 1
    if lang == "anbncn":
        m = re.fullmatch("(a*)(b*)(c*)", w)
        return m is not None and len(m[1]) == len(m[2]) == len(m[3]) >= 1
    depth = _shuffle_counts(w)
    return depth is not None and depth == {"(": 0, "[": 0}


def viable(lang, p):
    """Is p a prefix of some member (any length)?"""
    if lang in ("parity", "aa_star"):
        return re.fullmatch("[01]*" if lang == "parity" else "a*", p) is not None
    if lang == "abab_star":
        return re.fullmatch("(abab)*(a|ab|aba)?", p) is not None
    if lang == "anbn":
        m = re.fullmatch("(a*)(b*)", p)
        return m is not None and len(m[2]) <= len(m[1])
    if lang == "anbncn":
        m = re.fullmatch("(a*)(b*)(c*)", p)
        if m is None:
            return False
        k, j, i = (len(g) for g in m.groups())
        return (i == 0 and j <= k) or (j == k and i <= k)
    return _shuffle_counts(p) is not None


def next_set(lang, p):
    sigma = ALPHABETS[lang]
    return [viable(lang, p + s) for s in sigma] + [member(lang, p)]


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("split", ["train", "bin1"])
def test_strings_are_members_and_next_sets_match_the_oracle(lang, split):
    batch = formal_language(40, seed=11, language=lang, split=split, train_lengths=(1, 16))
    sigma = ALPHABETS[lang]
    K = len(sigma) + 1
    assert batch.vocab_size == K + 1 and batch.num_classes == K
    lengths = batch.meta["lengths"].tolist()
    assert batch.inputs.shape == (40, max(lengths) + 1) and batch.target_sets.shape == (40, max(lengths) + 1, K)
    assert (batch.inputs[:, 0] == batch.meta["bos_id"]).all()
    rows = zip(batch.inputs.tolist(), lengths, batch.target_sets.tolist(), batch.targets.tolist())
    for row, ell, sets, codes in rows:
        if split == "train":
            assert 1 <= ell <= 16
        else:
            assert 16 + (2 if lang == "shuffle2" else 1) <= ell <= 66
        w = "".join(sigma[t] for t in row[1: ell + 1])
        assert all(t == batch.meta["pad_id"] for t in row[ell + 1:])
        assert member(lang, w), (lang, w)
        for t in range(ell + 1):
            assert sets[t] == next_set(lang, w[:t]), (lang, w, t)
            assert codes[t] == sum(1 << k for k, on in enumerate(sets[t]) if on)
        assert codes[ell + 1:] == [-100] * (len(codes) - ell - 1)


def test_lengths_cover_the_legal_range_and_bins():
    assert legal_lengths("parity", "train").tolist() == list(range(1, 51))
    assert legal_lengths("aa_star", "bin0").tolist() == list(range(2, 51, 2))
    assert legal_lengths("shuffle2", "bin1").tolist() == list(range(52, 101, 2))
    assert legal_lengths("anbncn", "bin1").tolist() == list(range(51, 101, 3))
    assert legal_lengths("abab_star", "bin1").tolist() == list(range(52, 101, 4))
    batch = formal_language(2000, seed=0, language="shuffle2", split="bin0")
    assert set(batch.meta["lengths"].tolist()) == set(range(2, 51, 2))


def test_recognition_accuracy_requires_every_position():
    batch = formal_language(20, seed=2, language="anbn", train_lengths=(2, 20))
    perfect = torch.where(batch.target_sets, 5.0, -5.0)
    assert recognition_accuracy(perfect, batch.targets) == 1.0
    wrong = perfect.clone()
    wrong[0, 1, 0] = -wrong[0, 1, 0]  # one symbol flipped in one string
    assert recognition_accuracy(wrong, batch.targets) == pytest.approx(19 / 20)
    padded = perfect.clone()
    padded[batch.targets == -100] = 5.0  # predictions past a string's end are ignored
    assert recognition_accuracy(padded, batch.targets) == 1.0


def test_determinism_overlap_and_errors():
    a = formal_language(64, seed=1, language="parity")
    b = formal_language(64, seed=1, language="parity")
    c = formal_language(64, seed=2, language="parity", split="bin0")
    assert torch.equal(a.inputs, b.inputs) and not torch.equal(a.inputs, c.inputs)
    assert verbatim_overlap(a.inputs, b.inputs, pad_id=3) == 64
    aa_train = formal_language(200, seed=1, language="aa_star", train_lengths=(2, 10))
    aa_bin0 = formal_language(50, seed=2, language="aa_star", split="bin0", train_lengths=(2, 10))
    # Degenerate language: one string per length, so Bin0 repeats training strings verbatim.
    assert verbatim_overlap(aa_train.inputs, aa_bin0.inputs, pad_id=2) == 50
    with pytest.raises(ConfigError, match="^language:"):
        formal_language(2, seed=0, language="dyck")
    with pytest.raises(ConfigError, match="^split:"):
        formal_language(2, seed=0, split="bin2")
    with pytest.raises(ConfigError, match="^train_lengths"):
        formal_language(2, seed=0, language="abab_star", train_lengths=(1, 3))
    assert np.unique(formal_language(500, seed=0, language="parity", train_lengths=(1, 4)).meta["lengths"]).size == 4
