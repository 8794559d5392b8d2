"""Batch collators: 15% masking with 80/10/10 replacement for masked LMs, labels for causal LMs.

Causal labels follow the transformers convention (labels equal the inputs; the loss shifts them by
one). Every batch keeps a `domain_id` tensor, which domain-routed inheritance reads.

Masking is a pure function of (seed, epoch, block index): each block draws its mask from its own
generator, so no global random state is consumed. A run resumed from a checkpoint therefore masks
every block exactly as the uninterrupted run would have, the validation masks are the same at every
evaluation, and a teacher cache can know in advance which positions the student is taught on. The
epoch enters the key, so a block is masked afresh in each epoch (RoBERTa's dynamic masking).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase


def mask_key(seed: int, epoch: int, index: int) -> int:
    """The generator seed of one block's mask (a 63-bit hash of seed, epoch and block index)."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class BlockCollator:
    """Collate packed blocks (`input_ids`, `domain_id`, `index`) into model inputs with labels, domain ids, the
    blocks' indices (`block_index`) and the masking epoch (`mask_epoch`)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, masked: bool, mlm_probability: float = 0.15,
                 seed: int = 0) -> None:
        self.masked = masked
        self.seed = seed
        self.epoch = 0
        self.base = DataCollatorForLanguageModeling(tokenizer, mlm=masked, mlm_probability=mlm_probability,
                                                    return_tensors="pt")

    def set_epoch(self, epoch: int) -> None:
        """Use the masks of `epoch` from now on (the trainer calls this at each epoch's start)."""
        self.epoch = epoch

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        domain_ids = torch.tensor([int(example.get("domain_id", 0)) for example in examples])
        if not self.masked:
            batch = self.base([{"input_ids": example["input_ids"]} for example in examples])
        else:
            rows = []
            for position, example in enumerate(examples):
                index = int(example.get("index", position))
                self.base.generator = torch.Generator().manual_seed(mask_key(self.seed, self.epoch, index))
                rows.append(self.base([{"input_ids": example["input_ids"]}]))
            self.base.generator = None
            batch = {key: torch.cat([row[key] for row in rows]) for key in rows[0]}
        batch["domain_id"] = domain_ids
        # which blocks, and in which epoch's masks: a teacher cache looks its targets up by these
        batch["block_index"] = torch.tensor([int(example.get("index", -1)) for example in examples])
        batch["mask_epoch"] = torch.tensor(self.epoch)
        return batch
