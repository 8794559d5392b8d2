"""The training order of the blocks, in a few bytes per block.

`Trainer` shuffles with accelerate's seedable random sampler, which turns each epoch's permutation into a
Python list: about 36 bytes per block, 450 MB for a 4 GB corpus in blocks of 128 tokens. `BlockOrder`
yields the same indices in the same order (one `torch.randperm` per epoch from the same seed) from the
permutation held as 4-byte integers and handed out a slice at a time, so a run's data order, and a resumed
run's, are those of the stock sampler.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

SLICE = 1 << 16  # indices converted to Python integers at a time


class BlockOrder(Sampler[int]):
    """Every index below `count` once per epoch, shuffled by `torch.randperm` seeded with `seed + epoch`: the order
    of accelerate's `SeedableRandomSampler` with the same seed, epoch by epoch."""

    def __init__(self, count: int, seed: int) -> None:
        self.count = count
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.count

    def set_epoch(self, epoch: int) -> None:
        """Called by the data loader at each epoch's start (and on resuming): the next permutation's epoch."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        dtype = torch.int32 if self.count < 2**31 else torch.int64  # randperm's order does not depend on it
        order = torch.randperm(self.count, generator=generator, dtype=dtype)
        for start in range(0, self.count, SLICE):
            yield from order[start:start + SLICE].tolist()
        self.epoch += 1
