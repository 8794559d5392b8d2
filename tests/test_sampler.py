"""The training order: `BlockOrder` hands out accelerate's seeded shuffle, epoch by epoch, in 4 bytes per block."""

from __future__ import annotations

import pytest
import torch
from accelerate.data_loader import SeedableRandomSampler
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from kinherit.models.loading import load_model
from kinherit.training.sampler import SLICE, BlockOrder
from kinherit.training.trainer import InheritanceTrainer


@pytest.mark.parametrize("count", [1, 7, SLICE + 3])
def test_block_order_is_the_seedable_samplers_order_each_epoch(count):
    stock = SeedableRandomSampler(range(count), data_seed=1234)
    ours = BlockOrder(count, 1234)
    for epoch in range(3):
        assert list(ours) == list(stock), epoch  # both move to the next epoch after a full pass
    ours.set_epoch(1)
    stock.set_epoch(1)
    assert list(ours) == list(stock) and len(ours) == count


def _indices(trainer_class, tmp_path, tokenizer, **settings) -> list[int]:
    torch.manual_seed(0)
    blocks = Dataset.from_dict({"input_ids": [[5, 6, 7, 8]] * 50, "index": list(range(50))})
    args = TrainingArguments(str(tmp_path / trainer_class.__name__), report_to="none", use_cpu=True,
                             per_device_train_batch_size=4, seed=3, remove_unused_columns=False, **settings)
    extra = {"vocab_size": len(tokenizer)} if trainer_class is InheritanceTrainer else {}
    trainer = trainer_class(model=load_model("llama-1x64", tokenizer, 4), args=args, train_dataset=blocks,
                            data_collator=lambda rows: {"index": torch.tensor([row["index"] for row in rows])},
                            **extra)
    loader = trainer.get_train_dataloader()
    assert isinstance(loader.batch_sampler.sampler, BlockOrder) == (trainer_class is InheritanceTrainer)
    order = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        order += [i for batch in loader for i in batch["index"].tolist()]
    return order


@pytest.mark.parametrize("settings", [{}, {"data_seed": 11}])
def test_the_trainer_reads_blocks_in_the_stock_trainers_order(tmp_path, tokenizer, settings):
    ours = _indices(InheritanceTrainer, tmp_path, tokenizer, **settings)
    assert ours == _indices(Trainer, tmp_path, tokenizer, **settings)
    assert sorted(ours[:50]) == list(range(50)) and ours[:50] != ours[50:]
