"""Batch collators: 15% masking with 80/10/10 replacement for masked LMs, labels for causal LMs.

Causal labels follow the transformers convention (labels equal the inputs; the loss shifts them by
one). Every batch keeps a `domain_id` tensor, which domain-routed inheritance reads.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase


class BlockCollator:
    """Collate packed blocks into model inputs with labels and domain ids."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, masked: bool, mlm_probability: float = 0.15,
                 seed: int | None = None) -> None:
        self.masked = masked
        self.base = DataCollatorForLanguageModeling(tokenizer, mlm=masked, mlm_probability=mlm_probability,
                                                    seed=seed, return_tensors="pt")

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        domain_ids = torch.tensor([int(example.get("domain_id", 0)) for example in examples])
        batch = self.base([{"input_ids": example["input_ids"]} for example in examples])
        batch["domain_id"] = domain_ids
        return batch
