"""Data: corpora, tokenizers and batch sampling."""

from nestlearn.data.corpus import Corpus, DataConfig, load_corpus
from nestlearn.data.tokenizer import BPETokenizer, ByteTokenizer

__all__ = ["BPETokenizer", "ByteTokenizer", "Corpus", "DataConfig", "load_corpus"]
