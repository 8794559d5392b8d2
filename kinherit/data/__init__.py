"""Data: corpora, tokenizers, packed blocks, collators and downstream tasks.

May import: `kinherit.core`.
"""

from kinherit.data.blocks import build_blocks, corpus_blocks
from kinherit.data.builtin import BUILTIN_CORPORA
from kinherit.data.collate import BlockCollator
from kinherit.data.corpora import Corpus, CorpusSpec, default_cache_dir, iter_documents, load_corpus, split_documents
from kinherit.data.tokenizer import load_tokenizer, tokenizer_fingerprint, train_tokenizer

__all__ = ["BUILTIN_CORPORA", "BlockCollator", "Corpus", "CorpusSpec", "build_blocks", "corpus_blocks",
           "default_cache_dir", "iter_documents", "load_corpus", "load_tokenizer", "split_documents",
           "tokenizer_fingerprint", "train_tokenizer"]
