"""Weighted mixtures of corpora: resample packed training blocks so that each domain has its share."""

from __future__ import annotations

import numpy as np
from datasets import Dataset

from kinherit.core.errors import KinheritError


def mix_blocks(blocks: Dataset, weights: list[float], seed: int) -> Dataset:
    """The training blocks resampled so that domain `i` makes up `weights[i] / sum(weights)` of them.

    The number of blocks (so the size of an epoch) is unchanged. A domain with fewer blocks than its share
    is repeated, every block once before any block twice; one with more is subsampled. Which blocks is
    fixed by `seed`. Blocks keep their `index`, so a teacher cache built over the unmixed blocks serves.
    """
    domain_ids = np.asarray(blocks["domain_id"])
    shares = np.asarray(weights, dtype=np.float64) / sum(weights)
    counts = np.floor(shares * len(blocks)).astype(int)
    counts[np.argsort(-(shares * len(blocks) - counts))[:len(blocks) - counts.sum()]] += 1
    generator = np.random.default_rng(seed)
    picks = []
    for domain, count in enumerate(counts):
        own = np.flatnonzero(domain_ids == domain)
        if count and not len(own):
            raise KinheritError(f"corpus weight {weights[domain]} is given to a domain with no training blocks")
        rounds = -(-count // len(own)) if count else 0
        picks.append(np.concatenate([generator.permutation(own) for _ in range(rounds)] or [own[:0]])[:count])
    return blocks.select(np.concatenate(picks).tolist())
