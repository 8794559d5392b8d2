"""Tokenise documents and pack them into fixed-length blocks, cached on disk.

Documents are joined with the end-of-sequence token and cut into blocks of `block_size` tokens,
one domain at a time (so each block has a single domain tag); only a domain's last partial block is
dropped. The documents are read, tokenised and packed a batch at a time, and the blocks written as they
are made, so memory does not grow with the corpus. The result is cached under a key made of the corpus
fingerprint, the tokenizer fingerprint and the block length, as token ids in the fewest bytes the
vocabulary needs (2 up to 65,536 tokens); it is written to a temporary folder, sealed with a manifest of
its files' digests and renamed, so a half-written or corrupt cache is never read (hashed in full when a
machine first opens it, and again only once its files change: `verify(..., remember=True)`). Training memory-maps
it: processes on one machine share its pages.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from kinherit.core.arrow import write_arrow
from kinherit.core.errors import KinheritError
from kinherit.core.locks import exclusive
from kinherit.core.sealed import staged_folder, verify
from kinherit.data.corpora import Corpus, cache_root
from kinherit.data.tokenizer import tokenizer_fingerprint

CACHE_FORMAT = "blocks-v3"  # v3: one memory-mapped Arrow file, token ids in 2 or 4 bytes
BLOCKS_FILE = "blocks.arrow"
TOKENS_FILE = "tokens.arrow"  # one part's tokenised documents, before packing
DOCUMENTS_PER_BATCH = 1024  # documents read from the document cache at a time
CHARACTERS_PER_CALL = 2**20  # text handed to the tokenizer at a time: its encodings cost ~100x the text's size


def token_type(vocab_size: int) -> tuple[pa.DataType, type]:
    """The Arrow and numpy types of token ids below `vocab_size`: 2 bytes up to 65,536 tokens, else 4."""
    return (pa.uint16(), np.uint16) if vocab_size <= 2**16 else (pa.int32(), np.int32)


def packed_blocks(docs: Dataset, tokenizer: PreTrainedTokenizerBase, block_size: int,
                  domains: list[str]) -> Iterator[tuple[np.ndarray, int]]:
    """(blocks [n, block_size], domain id), domain after domain: each domain's documents in order, each followed
    by the end-of-sequence token, cut into blocks; only the domain's last partial block is dropped."""
    columns = docs.select_columns(["text", "domain"])
    for domain_id, domain in enumerate(domains):
        texts = (text for batch in columns.iter(batch_size=DOCUMENTS_PER_BATCH)
                 for text, tag in zip(batch["text"], batch["domain"], strict=True) if tag == domain)
        for rows in _cut((np.concatenate(ids) for ids in _encoded(texts, tokenizer)), block_size):
            yield rows, domain_id


def _encoded(texts: Iterable[str], tokenizer: PreTrainedTokenizerBase) -> Iterator[list[np.ndarray]]:
    """Each text's token ids followed by the end-of-sequence token, about a megabyte of text per tokenizer call
    (a list per call)."""
    eos = tokenizer.eos_token_id
    for group in _by_length(texts, CHARACTERS_PER_CALL):
        ids = tokenizer(group, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        yield [np.fromiter(itertools.chain(seq, (eos,)), dtype=np.int64, count=len(seq) + 1) for seq in ids]


def _cut(streams: Iterable[np.ndarray], block_size: int) -> Iterator[np.ndarray]:
    """Consecutive pieces of one token stream cut into [n, block_size] blocks; what is left over carries into the
    next piece, and the last partial block is dropped."""
    carry = np.empty(0, dtype=np.int64)
    for piece in streams:
        stream = np.concatenate([carry, piece])
        usable = len(stream) // block_size * block_size
        if usable:
            yield stream[:usable].reshape(-1, block_size)
        carry = stream[usable:]


def _by_length(texts: Iterable[str], characters: int) -> Iterator[list[str]]:
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


def block_folder(corpus_fingerprint: str, tokenizer: PreTrainedTokenizerBase, block_size: int, split: str,
                 domains: list[str], cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder of a split's blocks: keyed by the corpus and tokenizer fingerprints, the block length,
    the split and the domains."""
    if block_size < 2:
        raise KinheritError(f"block_size must be at least 2, got {block_size}")
    key = hashlib.sha256(
        f"{CACHE_FORMAT}\0{corpus_fingerprint}\0{tokenizer_fingerprint(tokenizer)}\0{block_size}\0{split}\0"
        f"{','.join(domains)}".encode()).hexdigest()[:24]
    return Path(os.path.abspath(cache_root(cache_dir) / "blocks" / f"{split}-{block_size}-{key}"))


def _write_blocks(target: Path, blocks: Iterator[tuple[np.ndarray, int]], block_size: int, vocab_size: int,
                  split: str) -> None:
    with staged_folder(target) as staging:  # another process may win the race; its copy is then kept
        written = write_arrow(staging / BLOCKS_FILE, block_schema(vocab_size),
                              _record_batches(blocks, block_size, vocab_size))
        if written == 0:
            raise KinheritError(f"the {split} split has fewer tokens than one block of {block_size}; use more "
                                "documents, a larger validation_fraction, or a smaller block_size")


def open_blocks(target: Path) -> Dataset:
    """The sealed blocks in `target`, memory-mapped; a clear error when the folder is incomplete or corrupt."""
    verify(target, "block cache", remember=True)
    try:
        return Dataset.from_file(str(target / BLOCKS_FILE))
    except Exception as error:
        raise KinheritError(f"block cache {target} is unreadable ({error}); delete that folder and "
                            "run again to rebuild it") from error


def build_blocks(docs: Dataset | Callable[[], Dataset], tokenizer: PreTrainedTokenizerBase, block_size: int,
                 domains: list[str], corpus_fingerprint: str, split: str,
                 cache_dir: str | os.PathLike | None = None) -> Dataset:
    """Return the packed blocks of `docs` (columns input_ids, domain_id, index), building the cache if needed.

    `docs` may be a callable returning the documents, so that a cached split is never read."""
    target = block_folder(corpus_fingerprint, tokenizer, block_size, split, domains, cache_dir)
    if not target.exists():
        documents = docs() if callable(docs) else docs
        _write_blocks(target, packed_blocks(documents, tokenizer, block_size, domains), block_size, len(tokenizer),
                      split)
    return open_blocks(target)


def corpus_blocks(corpus: Corpus, split: str, tokenizer: PreTrainedTokenizerBase, block_size: int,
                  cache_dir: str | os.PathLike | None = None) -> Dataset | None:
    """The packed blocks of a corpus's split ("train" or "validation"), its documents read only when the blocks
    are not cached yet; None when the split holds no documents."""
    if not corpus.count(split):
        return None
    return build_blocks(partial(getattr, corpus, split), tokenizer, block_size, corpus.domains, corpus.fingerprint,
                        split, cache_dir)


# ---------------------------------------------------------------- preparing in parts, on many processes or machines
def parts_folder(target: Path, parts: int) -> Path:
    """Where the tokenised parts of the blocks `target` wait to be packed: a sibling named after the part count."""
    return target.with_name(f"{target.name}.parts-of-{parts}")


def part_range(documents: int, part: int, parts: int) -> range:
    """The split's documents (by their place in it) that part `part` of `parts` tokenises: a contiguous share."""
    return range(documents * part // parts, documents * (part + 1) // parts)


def _token_schema(vocab_size: int) -> pa.Schema:
    return pa.schema([("input_ids", pa.list_(token_type(vocab_size)[0])), ("domain_id", pa.int32())])


def _tokenised(texts: Iterable[tuple[str, str]], tokenizer: PreTrainedTokenizerBase,
               domains: list[str]) -> Iterator[pa.RecordBatch]:
    """Each (text, domain)'s token ids followed by the end-of-sequence token, and its domain id, in order."""
    arrow_type, numpy_type = token_type(len(tokenizer))
    schema = _token_schema(len(tokenizer))
    domain_ids = {domain: index for index, domain in enumerate(domains)}
    tags: list[int] = []

    def tagged() -> Iterator[str]:
        for text, domain in texts:
            tags.append(domain_ids[domain])
            yield text

    for ids in _encoded(tagged(), tokenizer):
        batch_tags, tags[:] = tags[:len(ids)], tags[len(ids):]
        offsets = np.zeros(len(ids) + 1, dtype=np.int32)
        np.cumsum([len(seq) for seq in ids], out=offsets[1:])
        values = pa.array(np.concatenate(ids).astype(numpy_type), type=arrow_type)
        yield pa.record_batch([pa.ListArray.from_arrays(pa.array(offsets), values),
                               pa.array(batch_tags, type=pa.int32())], schema=schema)


def _stored_blocks(paths: list[Path], block_size: int, domains: list[str]) -> Iterator[tuple[np.ndarray, int]]:
    """`packed_blocks` of documents already tokenised into `paths` (parts in order): the same blocks."""
    for domain_id in range(len(domains)):
        def streams(domain_id: int = domain_id) -> Iterator[np.ndarray]:
            for path in paths:
                with pa.memory_map(str(path / TOKENS_FILE)) as source:
                    for batch in pa.ipc.open_stream(source):
                        chosen = batch.column("input_ids").filter(pc.equal(batch.column("domain_id"), domain_id))
                        yield chosen.flatten().to_numpy().astype(np.int64)
        for rows in _cut(streams(), block_size):
            yield rows, domain_id


def prepare_part(corpus: Corpus, split: str, tokenizer: PreTrainedTokenizerBase, block_size: int, part: int,
                 parts: int, cache_dir: str | os.PathLike | None = None) -> bool:
    """Tokenise part `part` of `parts` of a split's documents (read from their source, never copied whole), then,
    if every part is there, pack them into the split's blocks: the same blocks one process would make (packing
    is one cheap pass over the stored ids). Returns whether the blocks are complete. Any process or machine
    sharing `cache_dir` may run any part, in any order; the one that finds the last part done packs."""
    if not 0 <= part < parts:
        raise KinheritError(f"part {part} is not one of the {parts} parts (0 to {parts - 1})")
    target = block_folder(corpus.fingerprint, tokenizer, block_size, split, corpus.domains, cache_dir)
    if target.exists() or not corpus.count(split):
        return True
    folder = parts_folder(target, parts)
    mine = folder / f"part-{part:05d}"
    if not mine.exists():
        share = part_range(corpus.count(split), part, parts)
        with staged_folder(mine) as staging:
            write_arrow(staging / TOKENS_FILE, _token_schema(len(tokenizer)),
                        _tokenised(corpus.texts(split, share.start, share.stop), tokenizer, corpus.domains))
    with exclusive(target, waiting=f"waiting for {target}: another process is packing it"):
        if target.exists():
            return True
        paths = [folder / f"part-{index:05d}" for index in range(parts)]
        if not all(path.exists() for path in paths):
            return False
        for path in paths:
            verify(path, "tokenised part")
        _write_blocks(target, _stored_blocks(paths, block_size, corpus.domains), block_size, len(tokenizer), split)
    shutil.rmtree(folder, ignore_errors=True)  # the sealed blocks hold everything the parts did
    return True
