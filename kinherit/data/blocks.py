"""Tokenise documents and pack them into fixed-length blocks, cached on disk.

Documents are joined with the end-of-sequence token and cut into blocks of `block_size` tokens,
one domain at a time (so each block has a single domain tag); only a domain's last partial block is
dropped. The documents are read, tokenised and packed a batch at a time, and the blocks written as they
are made, so memory does not grow with the corpus. The result is cached under a key made of the corpus
fingerprint, the tokenizer fingerprint and the block length, as token ids in the fewest bytes the
vocabulary needs (2 up to 65,536 tokens); it is written to a temporary folder, sealed with a manifest of
its files' digests and renamed, so a half-written or corrupt cache is never read. Training memory-maps
it: processes on one machine share its pages.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from kinherit.core.arrow import write_arrow
from kinherit.core.errors import KinheritError
from kinherit.core.sealed import staged_folder, verify
from kinherit.data.corpora import Corpus, default_cache_dir
from kinherit.data.tokenizer import tokenizer_fingerprint

CACHE_FORMAT = "blocks-v3"  # v3: one memory-mapped Arrow file, token ids in 2 or 4 bytes
BLOCKS_FILE = "blocks.arrow"
DOCUMENTS_PER_BATCH = 1024  # documents read from the document cache at a time
CHARACTERS_PER_CALL = 2**20  # text handed to the tokenizer at a time: its encodings cost ~100x the text's size


def token_type(vocab_size: int) -> tuple[pa.DataType, type]:
    """The Arrow and numpy types of token ids below `vocab_size`: 2 bytes up to 65,536 tokens, else 4."""
    return (pa.uint16(), np.uint16) if vocab_size <= 2**16 else (pa.int32(), np.int32)


def packed_blocks(docs: Dataset, tokenizer: PreTrainedTokenizerBase, block_size: int,
                  domains: list[str]) -> Iterator[tuple[np.ndarray, int]]:
    """(blocks [n, block_size], domain id), domain after domain: each domain's documents in order, each followed
    by the end-of-sequence token, cut into blocks; what is left over carries into the next batch, so only the
    domain's last partial block is dropped."""
    eos = tokenizer.eos_token_id
    columns = docs.select_columns(["text", "domain"])
    for domain_id, domain in enumerate(domains):
        carry = np.empty(0, dtype=np.int64)
        for batch in columns.iter(batch_size=DOCUMENTS_PER_BATCH):
            texts = [text for text, tag in zip(batch["text"], batch["domain"], strict=True) if tag == domain]
            for group in _by_length(texts, CHARACTERS_PER_CALL):
                ids = tokenizer(group, add_special_tokens=False, return_attention_mask=False)["input_ids"]
                stream = np.concatenate([carry, np.fromiter(itertools.chain.from_iterable(
                    itertools.chain(seq, (eos,)) for seq in ids), dtype=np.int64)])
                usable = len(stream) // block_size * block_size
                if usable:
                    yield stream[:usable].reshape(-1, block_size), domain_id
                carry = stream[usable:]


def _by_length(texts: list[str], characters: int) -> Iterator[list[str]]:
    """Consecutive groups of `texts` of about `characters` characters (a longer text alone)."""
    group: list[str] = []
    size = 0
    for text in texts:
        if group and size + len(text) > characters:
            yield group
            group, size = [], 0
        group.append(text)
        size += len(text)
    if group:
        yield group


def _record_batches(blocks: Iterator[tuple[np.ndarray, int]], block_size: int,
                    vocab_size: int) -> Iterator[pa.RecordBatch]:
    arrow_type, numpy_type = token_type(vocab_size)
    schema = block_schema(vocab_size)
    start = 0
    for rows, domain_id in blocks:
        count = len(rows)
        offsets = pa.array(np.arange(0, (count + 1) * block_size, block_size, dtype=np.int32))
        ids = pa.ListArray.from_arrays(offsets, pa.array(rows.reshape(-1).astype(numpy_type), type=arrow_type))
        yield pa.record_batch([ids, pa.array(np.full(count, domain_id, dtype=np.int64)),
                               pa.array(np.arange(start, start + count, dtype=np.int64))], schema=schema)
        start += count


def block_schema(vocab_size: int) -> pa.Schema:
    """The columns of a block cache: input_ids, domain_id, and index (which keys each block's masks)."""
    return pa.schema([("input_ids", pa.list_(token_type(vocab_size)[0])), ("domain_id", pa.int64()),
                      ("index", pa.int64())])


def build_blocks(docs: Dataset | Callable[[], Dataset], tokenizer: PreTrainedTokenizerBase, block_size: int,
                 domains: list[str], corpus_fingerprint: str, split: str,
                 cache_dir: str | os.PathLike | None = None) -> Dataset:
    """Return the packed blocks of `docs` (columns input_ids, domain_id, index), building the cache if needed.

    `docs` may be a callable returning the documents, so that a cached split is never read."""
    if block_size < 2:
        raise KinheritError(f"block_size must be at least 2, got {block_size}")
    key = hashlib.sha256(
        f"{CACHE_FORMAT}\0{corpus_fingerprint}\0{tokenizer_fingerprint(tokenizer)}\0{block_size}\0{split}\0"
        f"{','.join(domains)}".encode()).hexdigest()[:24]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "blocks" / f"{split}-{block_size}-{key}"
    if not target.exists():
        documents = docs() if callable(docs) else docs
        with staged_folder(target) as staging:  # another process may win the race; its copy is then kept
            written = write_arrow(staging / BLOCKS_FILE, block_schema(len(tokenizer)), _record_batches(
                packed_blocks(documents, tokenizer, block_size, domains), block_size, len(tokenizer)))
            if written == 0:
                raise KinheritError(f"the {split} split has fewer tokens than one block of {block_size}; use more "
                                    "documents, a larger validation_fraction, or a smaller block_size")
    verify(target, "block cache")
    try:
        return Dataset.from_file(str(target / BLOCKS_FILE))
    except Exception as error:
        raise KinheritError(f"block cache {target} is unreadable ({error}); delete that folder and "
                            "run again to rebuild it") from error


def corpus_blocks(corpus: Corpus, split: str, tokenizer: PreTrainedTokenizerBase, block_size: int,
                  cache_dir: str | os.PathLike | None = None) -> Dataset | None:
    """The packed blocks of a corpus's split ("train" or "validation"), its documents read only when the blocks
    are not cached yet; None when the split holds no documents."""
    if not corpus.count(split):
        return None
    return build_blocks(partial(getattr, corpus, split), tokenizer, block_size, corpus.domains, corpus.fingerprint,
                        split, cache_dir)
