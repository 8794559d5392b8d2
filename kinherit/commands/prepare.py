"""`kinherit prepare`: read, split, tokenise and pack a corpus into the block cache once, so that every run and
teacher cache with the same corpus, tokenizer and block length starts from it (they find it by the same key).

With `--parts N`, N processes or machines that share the cache folder (torchrun, a Slurm array, or N shells)
each tokenise a contiguous share of every split's documents; the one that finds every share done packs them
into the same blocks one process would have made."""

from __future__ import annotations

from typing import Any

from kinherit.core.errors import KinheritError
from kinherit.data import corpus_blocks, load_corpus, load_tokenizer
from kinherit.data.blocks import prepare_part
from kinherit.training.options import DataArguments, PartArguments

SPLITS = ("train", "validation")


def prepare(data: DataArguments, parts: PartArguments | None = None,
            trust_remote_code: bool = False) -> dict[str, Any]:
    """Build (or find) the train and validation blocks of the corpus `data` describes; per split its documents,
    blocks, tokens and the cache file, or `"waiting"` while other parts are still tokenising."""
    if not data.tokenizer:
        raise KinheritError("kinherit prepare needs --tokenizer (the folder of the tokenizer your runs will use; "
                            "`kinherit tokenizer` trains one)")
    parts = parts or PartArguments(parts=1, part=0)
    corpus = load_corpus(data.corpus_specs(), data.cache_dir)
    tokenizer = load_tokenizer(data.tokenizer, trust_remote_code)
    summary: dict[str, Any] = {"fingerprint": corpus.fingerprint, "domains": corpus.domains}
    for split in SPLITS:
        if parts.parts > 1 and not prepare_part(corpus, split, tokenizer, data.block_size, parts.part, parts.parts,
                                                data.cache_dir):
            summary[split] = "waiting"
            continue
        blocks = corpus_blocks(corpus, split, tokenizer, data.block_size, data.cache_dir)
        if blocks is not None:
            summary[split] = {"documents": corpus.count(split), "blocks": len(blocks),
                              "tokens": len(blocks) * data.block_size, "file": blocks.cache_files[0]["filename"]}
    return summary
