"""Tokenizers: bytes by default, a locally trained byte-level BPE as an option (data.md §5).

Both expose the same small interface: ``encode(bytes) -> np.ndarray``, ``decode(ids) -> str``,
``vocab_size``, ``token_bytes`` (how many bytes of text each id stands for, so bits per byte can be
computed for any tokenizer) and ``describe()`` for run metadata.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from nestlearn.errors import ConfigError, DataError


class ByteTokenizer:
    """A token is one UTF-8 byte; vocabulary 256."""

    kind = "byte"
    vocab_size = 256

    def encode(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    @property
    def token_bytes(self) -> np.ndarray:
        return np.ones(self.vocab_size, dtype=np.int64)

    def describe(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size}


def _byte_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table used by byte-level BPE pre-tokenisers."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class BPETokenizer:
    """Byte-level BPE trained locally with Hugging Face ``tokenizers``; saved as one JSON file.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` with the byte-level pre-tokenizer.
    """

    kind = "bpe"
    FILENAME = "tokenizer.json"

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        char_to_byte = {c: b for b, c in _byte_to_unicode().items()}
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for token, idx in tokenizer.get_vocab().items():
            lengths[idx] = sum(1 for c in token if c in char_to_byte)
        self.token_bytes = lengths

    @staticmethod
    def _import():
        try:
            import tokenizers
        except ImportError:
            raise DataError("data.tokenizer=bpe needs the package tokenizers: pip install 'nestlearn[bpe]'") from None
        return tokenizers

    @classmethod
    def train(cls, text: bytes, vocab_size: int) -> "BPETokenizer":
        """Train on ``text`` (deterministic: the same text gives the same tokenizer)."""
        if vocab_size < 257:
            raise ConfigError("data.bpe_vocab_size", f"must be >= 257 (256 bytes + merges), got {vocab_size}")
        tk = cls._import()
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                         initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(_lines(text), trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        tk = cls._import()
        path = Path(path)
        if not path.is_file():
            raise DataError(f"tokenizer file not found: {path}")
        try:
            return cls(tk.Tokenizer.from_file(str(path)))
        except Exception as err:  # tokenizers raises plain Exception subclasses on bad JSON
            raise DataError(f"{path} is not a valid tokenizer file: {err}") from None

    def to_json(self) -> str:
        return self._tok.to_str()

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / self.FILENAME
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    def encode(self, data: bytes) -> np.ndarray:
        # Batch encoding over lines is ~3x faster than one long string (data.md §5).
        parts = self._tok.encode_batch(_lines(data))
        ids = [np.asarray(p.ids, dtype=np.int64) for p in parts]
        return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])

    def describe(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size,
                "sha256": hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()}


def _lines(data: bytes) -> list[str]:
    return data.decode("utf-8", errors="replace").splitlines(keepends=True)


def tokenizer_from_description(desc: dict, tokenizer_json: str | None = None):
    """Rebuild a tokenizer from run metadata (and the saved JSON for BPE)."""
    if desc.get("kind") == "byte":
        return ByteTokenizer()
    if desc.get("kind") == "bpe" and tokenizer_json is not None:
        tk = BPETokenizer._import()
        tok = BPETokenizer(tk.Tokenizer.from_str(tokenizer_json))
        if tok.describe()["sha256"] != desc.get("sha256"):
            raise DataError("the saved BPE tokenizer does not match its recorded SHA-256")
        return tok
    raise DataError(f"cannot rebuild tokenizer from {json.dumps(desc)}")
