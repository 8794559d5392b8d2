"""Exact-enough model FLOP counts for the compute-saved analysis.

A forward pass costs 2 FLOPs per multiply-accumulate: 2 * (matrix weights of the body) per token,
plus attention scores and mixing (4 * layers * sequence * width per token, counted for the full
square as is usual), plus 2 * (matrix weights of the LM head) per position where logits are computed.
A training step costs three forward passes (forward, and backward at twice the forward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from kinherit.models.parts import backbone_and_head


def _matrix_weights(module: torch.nn.Module, skip_embeddings: bool) -> int:
    embedding_ids = set()
    if skip_embeddings:
        embedding_ids = {id(p) for m in module.modules() if isinstance(m, torch.nn.Embedding)
                         for p in m.parameters()}
    return sum(p.numel() for p in module.parameters() if p.dim() == 2 and id(p) not in embedding_ids)


@dataclass(frozen=True)
class FlopModel:
    """Per-token and per-headed-position forward FLOPs of one model."""

    body_per_token: int
    attention_per_token_per_position: int  # multiply by the sequence length
    head_per_position: int

    @classmethod
    def of(cls, model: PreTrainedModel) -> FlopModel:
        """Count the matrix weights of the model's body and LM head."""
        body, head = backbone_and_head(model)
        config = model.config
        layers = getattr(config, "num_hidden_layers", None) or config.n_layer
        width = getattr(config, "hidden_size", None) or config.n_embd
        return cls(body_per_token=2 * _matrix_weights(body, skip_embeddings=True),
                   attention_per_token_per_position=4 * layers * width,
                   head_per_position=2 * _matrix_weights(head, skip_embeddings=False))

    def forward(self, tokens: int, sequence_length: int, head_positions: int) -> int:
        """FLOPs of one forward pass over `tokens` tokens with logits at `head_positions` positions."""
        return (tokens * (self.body_per_token + self.attention_per_token_per_position * sequence_length)
                + head_positions * self.head_per_position)

    def train_step(self, tokens: int, sequence_length: int, head_positions: int) -> int:
        """FLOPs of forward plus backward (three forward passes)."""
        return 3 * self.forward(tokens, sequence_length, head_positions)


class StepFlops:
    """The FLOPs of KI training steps: the student's step, plus each teacher's forward while it teaches (a routed
    teacher charged only for its share of the batch's examples)."""

    def __init__(self, student: PreTrainedModel, teachers: list[PreTrainedModel],
                 routes: dict[int, int] | None = None) -> None:
        self.student = FlopModel.of(student)
        self.teachers = [FlopModel.of(teacher) for teacher in teachers]
        self.routes = routes

    def step(self, input_ids: torch.Tensor, positions: int, taught: bool, domain_ids: torch.Tensor | None,
             processes: int) -> float:
        """One step's FLOPs over every process: `input_ids` and `positions` are one process's batch."""
        batch, length = input_ids.shape
        tokens = input_ids.numel() * processes
        positions *= processes
        flops = self.student.train_step(tokens, length, positions)
        if taught:
            for index, teacher in enumerate(self.teachers):
                share = 1.0
                if self.routes is not None and domain_ids is not None:
                    routed = [self.routes.get(int(d)) for d in domain_ids.tolist()]
                    share = routed.count(index) / max(batch, 1)
                flops += share * teacher.forward(tokens, length, positions)
        return flops
