"""What a language model is taught on, shared by every layer: which positions carry a label, and the mean
cross-entropy there.

A masked LM predicts the token at each masked position; a causal LM predicts the next token, so its
labels are shifted by one. Positions whose label is `IGNORE_INDEX` carry no loss.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel

from kinherit.core.errors import KinheritError
from kinherit.models.parts import backbone_and_head, forward_as_body, reshard_model

IGNORE_INDEX = -100
CHUNK_BYTES = 256 * 2**20  # the default chunk keeps one float32 [positions, V] tensor within this
MAX_CHUNK = 1024  # ... and at most this many positions of it (more buys no speed)
SELF_TENSORS = 1  # [positions, V] tensors a self-learning chunk holds: its logits (the gradient is written over them)
TEACHER_TENSORS = 2  # ... and a chunk with a teacher: the teacher's logits as well (a top-K cache holds fewer)
SCORING_TENSORS = 2  # a chunk scored without a gradient (evaluation, a cache build): logits and their log-softmax
MIN_CHUNK = 64


def check_chunk_size(chunk_size: int | None) -> None:
    """Refuse a chunk of fewer than one position (None: the default chunk)."""
    if chunk_size is not None and chunk_size < 1:
        raise KinheritError(f"--chunk_size must be at least 1, got {chunk_size}")


def chunk_positions(chunk_size: int | None, vocab: int, tensors: int = SELF_TENSORS) -> int:
    """Positions per chunk: `chunk_size` when given, else the positions of one float32 [positions, vocab] tensor
    within 256 MB and 1,024 positions, shared among the chunk's `tensors` such tensors (at least 64), so that a
    chunk with a teacher holds no more bytes than one without: 1,024 and 512 positions up to a 65,536-token
    vocabulary, 512 and 256 at 131,072."""
    check_chunk_size(chunk_size)
    if chunk_size is not None:
        return chunk_size
    return max(MIN_CHUNK, min(MAX_CHUNK, CHUNK_BYTES // (4 * max(vocab, 1))) // tensors)


def target_labels(labels: torch.Tensor, kind: str) -> torch.Tensor:
    """The label each flattened position predicts: itself (masked) or the next token (causal)."""
    if kind == "masked":
        return labels.reshape(-1)
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    return shifted.reshape(-1)


def perplexity(loss: float) -> float:
    """exp(loss), capped at exp(50) so that a diverged run reports a number, not an overflow."""
    return math.exp(min(loss, 50.0))


def taught_positions(labels: torch.Tensor) -> torch.Tensor:
    """Indices of the flattened positions that carry a loss."""
    return (labels != IGNORE_INDEX).nonzero().squeeze(-1)


@torch.inference_mode()
def taught_logits(model: PreTrainedModel, dataset, collator, batch_size: int, chunk_size: int | None, vocab: int,
                  kind: str, autocast=contextlib.nullcontext,
                  even: EvenForwards | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`(logits, labels)` of `model` over `dataset`, chunk by chunk (float32 `[n, vocab]`), taught positions only.

    `chunk_size` positions per chunk (None: `chunk_positions`' default for the vocabulary).

    The model is called as a module, so a model sharded with FSDP2 gathers its weights; it is left in the
    mode it had. `even`: this process's part of a dataset split over processes runs as many forward passes as
    the largest part (the extra ones discarded), so that every process joins the same gathers.
    """
    was_training = model.training
    model.eval()
    body, head = backbone_and_head(model)
    device = next(model.parameters()).device

    def hidden_states(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(), forward_as_body(model, body):
            return model(input_ids=batch["input_ids"].to(device))

    try:
        done = 0
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collator):
            labels = target_labels(batch["labels"].to(device), kind)
            hidden = hidden_states(batch)
            hidden = hidden.reshape(-1, hidden.shape[-1])
            done += 1
            for chunk in taught_positions(labels).split(chunk_positions(chunk_size, vocab, SCORING_TENSORS)):
                yield head(hidden[chunk])[:, :vocab].float(), labels[chunk]
        for _ in range(done, even.forwards if even else 0):
            hidden_states(collator([even.filler]))  # joins the other processes' gathers; nothing is scored
    finally:
        reshard_model(model)  # a sharded model frees the weights its root gathered
        model.train(was_training)


@dataclass(frozen=True)
class EvenForwards:
    """How many forward passes each process runs over its part of a split dataset, and the block that fills
    the passes a smaller part lacks."""

    forwards: int
    filler: dict[str, Any]


def process_part(dataset, processes: int, index: int, batch_size: int) -> tuple[Any, EvenForwards]:
    """Process `index`'s contiguous part of `dataset` (parts differ by at most one block, and may be empty) and
    the forward passes every part must run: that of the largest part."""
    size, extra = divmod(len(dataset), processes)
    start = index * size + min(index, extra)
    part = dataset.select(list(range(start, start + size + (index < extra))))
    if not len(dataset):
        return part, EvenForwards(forwards=0, filler={})
    return part, EvenForwards(forwards=-(-(size + (extra > 0)) // batch_size), filler=dataset[0])


def validation_loss(model: PreTrainedModel, dataset, collator, batch_size: int, chunk_size: int | None, vocab: int,
                    kind: str, autocast=contextlib.nullcontext, even: EvenForwards | None = None) -> tuple[float, int]:
    """Mean cross-entropy per taught position of `model` over `dataset`, and the number of positions."""
    total, count = 0.0, 0
    for logits, labels in taught_logits(model, dataset, collator, batch_size, chunk_size, vocab, kind, autocast,
                                        even):
        total += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        count += labels.numel()
    return (total / count if count else math.nan), count
