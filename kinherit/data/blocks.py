"""Tokenise documents and pack them into fixed-length blocks, cached on disk.

Documents are joined with the end-of-sequence token and cut into blocks of `block_size` tokens,
one domain at a time (so each block has a single domain tag). The result is cached under a key made
of the corpus fingerprint, the tokenizer fingerprint and the block length; the cache is written to a
temporary folder, sealed with a manifest of its files' digests and renamed, so a half-written or
corrupt cache is never read.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import datasets
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from kinherit.core.errors import KinheritError
from kinherit.core.sealed import staged_folder, verify
from kinherit.data.tokenizer import tokenizer_fingerprint

CACHE_FORMAT = "blocks-v2"  # v2: sealed with a manifest, blocks carry their index


def default_cache_dir() -> Path:
    """`$KINHERIT_CACHE` or `~/.cache/kinherit`."""
    return Path(os.environ.get("KINHERIT_CACHE", Path.home() / ".cache" / "kinherit"))


def _pack(docs: Dataset, tokenizer: PreTrainedTokenizerBase, block_size: int, domains: list[str]) -> Dataset:
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"ids": [seq + [eos] for seq in ids]}

    def group(batch):
        stream = [token for seq in batch["ids"] for token in seq]
        usable = len(stream) // block_size * block_size
        blocks = [stream[i:i + block_size] for i in range(0, usable, block_size)]
        return {"input_ids": blocks, "domain_id": [batch["domain_id"][0]] * len(blocks)}

    parts = []
    for domain_id, domain in enumerate(domains):
        part = docs.filter(lambda row, d=domain: row["domain"] == d)
        if len(part) == 0:
            continue
        part = part.map(lambda row, i=domain_id: {"domain_id": i})
        part = part.map(tokenize, batched=True, remove_columns=["text", "domain", "doc_id"],
                        desc=f"tokenising {domain}")
        # One pass over all documents of a domain, so only the last partial block is dropped.
        part = part.map(group, batched=True, batch_size=len(part), remove_columns=part.column_names,
                        desc=f"packing {domain} into blocks of {block_size}")
        parts.append(part)
    return datasets.concatenate_datasets(parts) if parts else Dataset.from_dict({"input_ids": [], "domain_id": []})


def build_blocks(docs: Dataset, tokenizer: PreTrainedTokenizerBase, block_size: int, domains: list[str],
                 corpus_fingerprint: str, split: str, cache_dir: str | os.PathLike | None = None) -> Dataset:
    """Return the packed blocks of `docs` (columns input_ids, domain_id, index), building the cache if needed."""
    if block_size < 2:
        raise KinheritError(f"block_size must be at least 2, got {block_size}")
    key = hashlib.sha256(
        f"{CACHE_FORMAT}\0{corpus_fingerprint}\0{tokenizer_fingerprint(tokenizer)}\0{block_size}\0{split}\0"
        f"{','.join(domains)}".encode()).hexdigest()[:24]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "blocks" / f"{split}-{block_size}-{key}"
    if target.exists():
        verify(target, "block cache")
        try:
            return datasets.load_from_disk(str(target))
        except Exception as error:
            raise KinheritError(f"block cache {target} is unreadable ({error}); delete that folder and "
                                "run again to rebuild it") from error
    blocks = _pack(docs, tokenizer, block_size, domains)
    blocks = blocks.add_column("index", list(range(len(blocks))))  # keys each block's masks (see collate.py)
    if len(blocks) == 0:
        raise KinheritError(f"the {split} split has fewer tokens than one block of {block_size}; use more "
                            "documents, a larger validation_fraction, or a smaller block_size")
    with staged_folder(target) as staging:  # another process may win the race; its copy is then kept
        blocks.save_to_disk(str(staging))
    return datasets.load_from_disk(str(target))
