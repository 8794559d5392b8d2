"""Live frozen teachers as a teacher source: their tempered target distributions, chunk by chunk.

Several teachers are either mixed (weighted mixture of tempered probabilities, in log space) or
routed (each example is taught by the teacher of its domain).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from transformers import PreTrainedModel

from kinherit.core.errors import KinheritError
from kinherit.inheritance.chunking import ChunkBuffers, linear_logits, plain_linear
from kinherit.inheritance.divergences import normalise_weights
from kinherit.inheritance.targets import Target, TargetFn
from kinherit.models.parts import backbone_and_head, forward_as_body, is_sharded, reshard_model, shard_layers


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """Eval mode, no gradients: a teacher never trains and never takes dropout."""
    model.eval()
    model.requires_grad_(False)
    return model


class TeacherSet:
    """One or more frozen teachers and how their predictions combine into the target distribution."""

    def __init__(self, models: Sequence[PreTrainedModel], weights: Sequence[float] | None = None,
                 routes: dict[int, int] | None = None) -> None:
        if not models:
            raise KinheritError("a TeacherSet needs at least one teacher")
        self.models = [freeze(m) for m in models]
        self.parts = [backbone_and_head(m) for m in self.models]
        self.routes = routes
        self.weights = normalise_weights(weights, len(models)) if routes is None else None

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      domain_ids: torch.Tensor | None) -> tuple[list[torch.Tensor | None], torch.Tensor | None]:
        """Each teacher's final hidden states flattened to [B*T, H] (routed: only its own examples are run).

        Returns the list and, when routed, the teacher index of every flattened position.
        """
        batch, length = input_ids.shape
        hidden: list[torch.Tensor | None] = []
        row_teacher = None
        with torch.inference_mode():
            if self.routes is not None:
                if domain_ids is None:
                    raise KinheritError("domain-routed teachers need batches with domain ids")
                example_teacher = torch.tensor([self.routes.get(int(d), -1) for d in domain_ids.tolist()],
                                               device=input_ids.device)
                if (example_teacher < 0).any():
                    missing = sorted({int(d) for d, t in zip(domain_ids.tolist(), example_teacher.tolist(),
                                                             strict=True) if t < 0})
                    raise KinheritError(f"examples of domain id(s) {missing} have no routed teacher")
                row_teacher = example_teacher.repeat_interleave(length)
            for index, (body, _head) in enumerate(self.parts):
                if self.routes is None:
                    selected = slice(None)
                else:
                    selected = (example_teacher == index).nonzero().squeeze(-1)
                    if selected.numel() == 0:
                        hidden.append(None)
                        continue
                mask = attention_mask[selected] if attention_mask is not None else None
                with forward_as_body(self.models[index], body):  # as a module: a sharded teacher gathers
                    states = self.models[index](input_ids=input_ids[selected], attention_mask=mask)
                if self.routes is not None:
                    full = states.new_zeros(batch, length, states.shape[-1])
                    full[selected] = states
                    states = full
                hidden.append(states.reshape(batch * length, -1))
        return hidden, row_teacher

    @torch.no_grad()
    def target(self, positions: torch.Tensor, hidden: list[torch.Tensor | None], row_teacher: torch.Tensor | None,
               temperature: float, vocab: int, buffers: ChunkBuffers | None = None) -> Target:
        """The tempered float32 target distribution [len(positions), vocab] at flattened positions (a plain
        linear head writes each teacher's logits into a reused buffer of `buffers`, valid until the next chunk)."""
        if self.routes is None:
            logits = [self.logits(index, h[positions], buffers)[:, :vocab] for index, h in enumerate(hidden)]
            return Target.from_logits(logits, self.weights, temperature)
        owners = row_teacher[positions]
        parts = []
        for index, ((_body, head), h) in enumerate(zip(self.parts, hidden, strict=True)):
            rows = (owners == index).nonzero().squeeze(-1)
            if rows.numel():
                parts.append((rows, Target.from_logits([head(h[positions[rows]])[:, :vocab]], [1.0], temperature)))
        return Target.assemble(parts, positions.numel())

    def logits(self, index: int, states: torch.Tensor, buffers: ChunkBuffers | None) -> torch.Tensor:
        """Teacher `index`'s logits at `states` ([positions, H]), in a reused buffer where its head is plain linear."""
        head = self.parts[index][1]
        if buffers is None or not plain_linear(head):
            return head(states)
        out = buffers.get(f"teacher{index}", states.shape[0], head.weight.shape[0], states.dtype, states.device)
        return linear_logits(states, head.weight, head.bias, out)

    @contextlib.contextmanager
    def targets(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor, temperature: float, vocab: int,
                top_k: int | None = None) -> Iterator[TargetFn]:
        """The teachers run once on the batch; dense targets are then made per chunk from their hidden states (the
        loss keeps their `top_k` tokens)."""
        hidden, row_teacher = self.hidden_states(inputs["input_ids"], inputs.get("attention_mask"),
                                                 inputs.get("domain_id"))
        buffers = ChunkBuffers()
        yield lambda positions: self.target(positions, hidden, row_teacher, temperature, vocab, buffers)
        self.release()

    def report(self) -> dict | None:
        """What teaching across tokenizers reached (None: the teachers share the student's tokenizer)."""
        return None

    def to(self, device: torch.device | str) -> TeacherSet:
        """Move every teacher to `device`."""
        self.models = [m.to(device) for m in self.models]
        return self

    def shard(self) -> TeacherSet:
        """Shard every teacher over the processes (FSDP2) instead of holding a whole copy on each."""
        for model in self.models:
            if not is_sharded(model):  # a teacher loaded shard by shard is sharded already
                shard_layers(model)  # in place: the bodies and heads in self.parts are the same modules
        return self

    def release(self) -> None:
        """Free the weights a sharded teacher gathered for this step (nothing for replicated teachers)."""
        for model in self.models:
            reshard_model(model)
