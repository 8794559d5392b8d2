"""Tokenizers: train a byte-level BPE on a corpus, or load an existing HF tokenizer.

The trained tokenizer is saved as a standard HF fast tokenizer with the special tokens that both
masked (`<mask>`, `<pad>`) and causal (`<s>`, `</s>`) models need, so `AutoTokenizer` loads it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from kinherit.core.errors import KinheritError
from kinherit.core.sealed import MANIFEST, foreign_files, is_sealed, staged_folder, verify

SPECIAL_TOKENS = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
                  "mask_token": "<mask>", "cls_token": "<s>", "sep_token": "</s>"}
MIN_VOCAB = 256 + len(set(SPECIAL_TOKENS.values()))  # byte-level BPE: every byte, then the special tokens


def check_vocab_size(vocab_size: int) -> None:
    """Refuse a BPE vocabulary too small to hold every byte and the special tokens."""
    if vocab_size < MIN_VOCAB:
        raise KinheritError(f"--vocab_size must be at least {MIN_VOCAB} (256 bytes and the special tokens), got "
                            f"{vocab_size}")


def train_tokenizer(texts: Dataset, vocab_size: int, output_dir: str | os.PathLike,
                    min_frequency: int = 2, replace: bool = False) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of `vocab_size` tokens on the `text` column and save it to `output_dir` (a folder
    that exists is refused before any training, unless `replace` and it holds a tokenizer this function wrote)."""
    check_tokenizer_output(output_dir, replace)
    from tokenizers import ByteLevelBPETokenizer

    check_vocab_size(vocab_size)
    bpe = ByteLevelBPETokenizer()
    ordered_specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]

    def batches():
        for start in range(0, len(texts), 256):
            yield texts[start:start + 256]["text"]

    bpe.train_from_iterator(batches(), vocab_size=vocab_size, min_frequency=min_frequency,
                            special_tokens=ordered_specials, length=len(texts))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, model_max_length=1_000_000,
                                        **SPECIAL_TOKENS)
    save_tokenizer(tokenizer, output_dir, replace)
    return tokenizer


def check_tokenizer_output(output_dir: str | os.PathLike, replace: bool) -> None:
    """Refuse an output folder that exists, unless `replace` and it is a sealed tokenizer folder and nothing else
    (so that a mistyped path never deletes a user's files)."""
    target = Path(os.path.abspath(output_dir))
    if not target.exists() and not target.is_symlink():
        return
    if not replace:
        raise KinheritError(f"{target} already exists; a tokenizer is saved only into a new folder: choose another "
                            "output, or pass --overwrite true to replace a tokenizer saved there earlier")
    if not target.is_dir() or target.is_symlink() or not is_sealed(target) or not (target / "tokenizer.json").is_file():
        raise KinheritError(f"{target} is not a tokenizer folder written by kinherit (no {MANIFEST} and "
                            "tokenizer.json), so it is not replaced; choose a new folder")
    unexpected = foreign_files(target)
    if unexpected:
        raise KinheritError(f"{target} holds files that are not part of its tokenizer ({', '.join(unexpected)}), so "
                            "it is not replaced; choose a new folder")


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, output_dir: str | os.PathLike, replace: bool = False) -> None:
    """Save as a sealed folder: written to a temporary folder, then renamed into place (replacing an existing one
    only with `replace`, once `check_tokenizer_output` has allowed it)."""
    with staged_folder(output_dir, replace=replace) as staging:
        tokenizer.save_pretrained(staging)


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False) -> PreTrainedTokenizerFast:
    """Load an HF tokenizer from a folder or hub name; it must be a fast tokenizer (a sealed folder is verified)."""
    if str(path).startswith(("/", ".", "~")) and not os.path.isdir(os.path.expanduser(str(path))):
        raise KinheritError(f"tokenizer folder {str(path)!r} does not exist; check the path (a `kinherit pretrain` "
                            "output folder holds its tokenizer)")
    if is_sealed(path):
        verify(path, "tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise KinheritError(f"could not load a tokenizer from {str(path)!r}: {str(error).splitlines()[0]}. "
                            "Pass a folder that holds tokenizer.json (or train one with "
                            "`kinherit tokenizer`)") from error
    if not tokenizer.is_fast:
        raise KinheritError(f"tokenizer at {path} is not a fast tokenizer; kinherit needs tokenizer.json")
    return tokenizer


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """A hash of the full tokenizer definition (vocabulary, merges, normalisation, special tokens)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8")).hexdigest()


def first_vocab_difference(a: PreTrainedTokenizerFast, b: PreTrainedTokenizerFast) -> str | None:
    """Describe the first token-to-id difference between two tokenizers, or None if they agree."""
    vocab_a, vocab_b = a.get_vocab(), b.get_vocab()
    if vocab_a == vocab_b:
        return None
    by_id_a = {i: t for t, i in vocab_a.items()}
    by_id_b = {i: t for t, i in vocab_b.items()}
    for token_id in range(max(len(by_id_a), len(by_id_b)) + 1):
        token_a, token_b = by_id_a.get(token_id), by_id_b.get(token_id)
        if token_a != token_b:
            return f"id {token_id} is {token_a!r} in one and {token_b!r} in the other"
    return f"vocabulary sizes differ ({len(vocab_a)} vs {len(vocab_b)})"
