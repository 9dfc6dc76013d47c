import hashlib

import numpy as np
import pytest

from nestlearn.data.corpus import DataConfig, load_corpus
from nestlearn.data.kjv import kjv_books, kjv_splits
from nestlearn.data.tokenizer import BPETokenizer, ByteTokenizer
from nestlearn.errors import ConfigError, DataError

# data.md §1: the fixed book-level split and its fingerprints.
SPLIT_SHA256 = {
    "train": "a050c6b198e6dc73885c4b560a65b12a75a204312e8e987d2df6b695779691d7",
    "validation": "ade2b7cd0896bc54b4f5bc474b3feb9f5c7577230a01ca7613e5a3b34701f3c3",
    "test": "4a9acb0e9ce42723818168766983d37a6541d9442e7216c874f688bfd7cfa4d1",
}


def test_kjv_split_matches_the_fixed_definition():
    splits = kjv_splits()
    for name, digest in SPLIT_SHA256.items():
        assert hashlib.sha256(splits[name]).hexdigest() == digest
    assert len(kjv_books()) == 66
    whole = b"".join(text for _, text in kjv_books())
    assert hashlib.sha256(whole).hexdigest() == "18a5995e1476f9cf50a8588e6156171d1ae0bd51e52bef997f12af186619ac3e"


def test_kjv_split_is_deterministic_and_disjoint():
    a, b = kjv_splits(), kjv_splits()
    assert a == b
    books = dict(kjv_books())
    assert books["Mark"] in a["validation"] and books["Mark"] not in a["train"]
    assert books["John"] in a["test"] and books["John"] not in a["train"]


def test_testament_subsplits_partition_the_corpus():
    old, new, both = kjv_splits("old"), kjv_splits("new"), kjv_splits()
    for split in both:
        assert len(old[split]) + len(new[split]) == len(both[split])
    assert len(old["train"]) == 3_032_903 and len(new["validation"]) == 120_244
    with pytest.raises(DataError, match="testament"):
        kjv_splits("apocrypha")


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "In the beginning — ἐν ἀρχῇ\n".encode()
    ids = tok.encode(text)
    assert ids.dtype == np.int64 and len(ids) == len(text)
    assert tok.decode(ids) == text.decode()
    assert tok.token_bytes.sum() == 256


def test_bpe_train_save_load_round_trip(tmp_path):
    text = kjv_splits()["train"][:200_000]
    tok = BPETokenizer.train(text, 400)
    again = BPETokenizer.train(text, 400)
    assert tok.to_json() == again.to_json(), "BPE training must be deterministic"
    sample = "And the LORD spake unto Moses, saying,\n".encode()
    ids = tok.encode(sample)
    assert len(ids) < len(sample)
    assert tok.decode(ids) == sample.decode()
    # Bytes per token add up exactly to the text's length, which makes bits per byte exact.
    assert int(tok.token_bytes[ids].sum()) == len(sample)
    loaded = BPETokenizer.load(tok.save(tmp_path))
    assert loaded.describe() == tok.describe()
    assert np.array_equal(loaded.encode(sample), ids)


def test_bpe_rejects_bad_vocab_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="data.bpe_vocab_size"):
        BPETokenizer.train(b"abc", 100)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not a valid tokenizer"):
        BPETokenizer.load(bad)


def test_local_file_and_folder(tmp_path, tiny_text):
    corpus = load_corpus(DataConfig(source=str(tiny_text)))
    assert corpus.train + corpus.validation + corpus.test == tiny_text.read_bytes()
    assert len(corpus.validation) == pytest.approx(0.05 * 60_000, abs=1)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "b.txt").write_bytes(b"second " * 100)
    (folder / "a.txt").write_bytes(b"first " * 100)
    (folder / "image.png").write_bytes(b"\x89PNG")
    corpus = load_corpus(DataConfig(source=str(folder)))
    whole = corpus.train + corpus.validation + corpus.test
    assert whole.startswith(b"first ") and whole.endswith(b"second ") and b"PNG" not in whole


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [f"line {i}: the quick brown fox" for i in range(200)]
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": rows}),
        "validation": datasets.Dataset.from_dict({"text": rows[:20]}),
        "test": datasets.Dataset.from_dict({"text": rows[20:40]}),
    })
    dd.save_to_disk(str(tmp_path / "ds"))
    corpus = load_corpus(DataConfig(source=str(tmp_path / "ds")))
    assert corpus.train == "\n".join(rows).encode()
    assert corpus.validation == "\n".join(rows[:20]).encode()
    with pytest.raises(ConfigError, match="data.text_field"):
        load_corpus(DataConfig(source=str(tmp_path / "ds"), text_field="body"))


def test_bad_sources(tmp_path):
    with pytest.raises(ConfigError, match="data.source: path not found"):
        load_corpus(DataConfig(source=str(tmp_path / "missing.txt")))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="no text found"):
        load_corpus(DataConfig(source=str(empty)))
    tiny = tmp_path / "tiny.txt"
    tiny.write_bytes(b"ab")
    with pytest.raises(DataError, match="split has 1 bytes"):
        load_corpus(DataConfig(source=str(tiny)))
