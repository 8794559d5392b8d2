"""Live teachers with other tokenizers: each reads the text of the student's blocks in its own tokens, and teaches
the student positions aligned with its own (`kinherit.data.token_text`, `kinherit.inheritance.cross_vocab`).

Several teachers are mixed (each row's target is the weighted mean of the teachers aligned there, in
probability) or routed (each example by its domain's teacher), as same-tokenizer teachers are.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from transformers import PreTrainedModel

from kinherit.core.errors import KinheritError
from kinherit.data.token_text import Bridge
from kinherit.inheritance.cross_vocab import AlignedTarget, SortedTarget, mapped_probs, mapped_target
from kinherit.inheritance.targets import TargetFn
from kinherit.inheritance.teachers import TeacherSet
from kinherit.models.parts import forward_as_body

logger = logging.getLogger(__name__)


class CrossTokenizerTeachers(TeacherSet):
    """Frozen teachers whose tokenizers differ from the student's, teaching by `method` (map or uld)."""

    def __init__(self, models: Sequence[PreTrainedModel], bridges: Sequence[Bridge], method: str,
                 weights: Sequence[float] | None = None, routes: dict[int, int] | None = None) -> None:
        super().__init__(models, weights, routes)
        self.bridges = list(bridges)
        self.method = method
        self.mappings = [torch.as_tensor(b.mapping) for b in self.bridges]
        self.taught = self.aligned = 0
        self.mass = 0.0

    def example_weights(self, batch: int, domain_ids: torch.Tensor | None) -> torch.Tensor:
        """[teachers, batch]: each teacher's weight on each example (routed: 1 for its own examples)."""
        if self.routes is None:
            return torch.tensor(self.weights, dtype=torch.float32)[:, None].expand(-1, batch)
        if domain_ids is None:
            raise KinheritError("domain-routed teachers need batches with domain ids")
        owners = torch.tensor([self.routes.get(int(d), -1) for d in domain_ids.tolist()])
        if (owners < 0).any():
            raise KinheritError(f"examples of domain id(s) {sorted(set(domain_ids[owners < 0].tolist()))} have no "
                                "routed teacher")
        return (owners[None, :] == torch.arange(len(self.models))[:, None]).float()

    def teacher_batch(self, index: int, input_ids: torch.Tensor,
                      examples: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher `index`'s ids and attention mask for the text of `examples` (cut at its longest input), and the
        teacher row (flattened) aligned with every flattened student position (-1: none)."""
        batch, length = input_ids.shape
        limit = getattr(self.models[index].config, "max_position_embeddings", None) or 1 << 30
        sequences, aligned = [], []
        for example in examples:
            ids, pairs = self.bridges[index].align(input_ids[example].tolist())
            sequences.append(ids[:limit])
            aligned.append([(i, j) for i, j in pairs if j < limit])
        width = max(1, max(map(len, sequences), default=0))
        ids = torch.full((len(sequences), width), self.bridges[index].teacher.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros_like(ids)
        where = torch.full((batch * length,), -1, dtype=torch.long)
        for row, (sequence, pairs) in enumerate(zip(sequences, aligned, strict=True)):
            ids[row, :len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            mask[row, :len(sequence)] = 1
            if pairs:
                student, teacher = torch.tensor(pairs, dtype=torch.long).T
                where[examples[row] * length + student] = row * width + teacher
        return ids, mask, where

    @contextlib.contextmanager
    def targets(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor, temperature: float, vocab: int,
                top_k: int | None = None) -> Iterator[TargetFn]:
        """Each teacher runs once on its own tokens of the batch; a chunk's target is then made at its aligned
        rows."""
        input_ids = inputs["input_ids"]
        device = input_ids.device
        weights = self.example_weights(input_ids.shape[0], inputs.get("domain_id"))
        runs: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor] | None] = []
        length = input_ids.shape[1]
        with torch.inference_mode():
            for index, (body, _head) in enumerate(self.parts):
                examples = weights[index].nonzero().squeeze(-1).tolist()
                if not examples:
                    runs.append(None)
                    continue
                ids, mask, where = self.teacher_batch(index, input_ids.cpu(), examples)
                with forward_as_body(self.models[index], body):
                    states = self.models[index](input_ids=ids.to(device), attention_mask=mask.to(device))
                row_weight = weights[index].repeat_interleave(length)
                runs.append((index, states.reshape(-1, states.shape[-1]), where.to(device), row_weight.to(device)))
        yield lambda positions: self.target(positions, runs, temperature, vocab)

    @torch.no_grad()
    def target(self, positions: torch.Tensor, runs: list, temperature: float, vocab: int) -> AlignedTarget:
        """The target at the aligned rows of one chunk of flattened student positions (`vocab` None: the student
        tokenizer's size)."""
        vocab = vocab or len(self.bridges[0].student_bytes)
        total = None
        weight_sum = torch.zeros(positions.numel(), device=positions.device)
        mass = torch.zeros_like(weight_sum)
        for run in runs:
            if run is None:
                continue
            index, states, where, row_weight = run
            rows, weights = where[positions], row_weight[positions]
            here = (rows >= 0) & (weights > 0)
            if not here.any():
                continue
            logits = self.parts[index][1](states[rows[here]])
            weight = weights[here]
            if self.method == "uld":
                part = SortedTarget.from_logits(logits[:, :self.mappings[index].numel()], temperature).probs
                row_mass = torch.ones_like(weight)
            else:
                part, row_mass = mapped_probs(logits, self.mappings[index].to(logits.device), vocab, temperature)
            if total is None:
                total = part.new_zeros(positions.numel(), part.shape[-1])
            elif total.shape[-1] < part.shape[-1]:  # sorted distributions of different lengths: pad with zeros
                total = torch.nn.functional.pad(total, (0, part.shape[-1] - total.shape[-1]))
            total[here, :part.shape[-1]] += weight[:, None] * part
            weight_sum[here] += weight
            mass[here] += weight * row_mass
        aligned = weight_sum > 0
        self.taught += positions.numel()
        self.aligned += int(aligned.sum())
        if total is None:
            return AlignedTarget(SortedTarget(weight_sum.new_zeros(0, 1)), aligned)
        mixed = total[aligned] / weight_sum[aligned, None]
        self.mass += float((mass[aligned] / weight_sum[aligned]).sum())
        if self.method == "uld":
            return AlignedTarget(SortedTarget(mixed), aligned)
        return AlignedTarget(mapped_target(mixed), aligned)

    def totals(self) -> list[float]:
        """The counts (taught positions, aligned positions, mass on student tokens) summed over the processes of
        a distributed run, each of which counted its own batches; every process must call it."""
        counts = torch.tensor([self.taught, self.aligned, self.mass], dtype=torch.float64)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            counts = counts.to(device)
            dist.all_reduce(counts)
        return counts.tolist()

    def restore(self, totals: list[float], main: bool) -> None:
        """Continue from a checkpoint's `totals`: the main process holds them, the others start from zero, so
        that the next sum over processes counts each position once."""
        self.taught, self.aligned, self.mass = totals if main else (0, 0, 0.0)

    def report(self) -> dict[str, Any]:
        """What ran and how much of the student it reached (over every process and, after a resume, the whole run):
        the method, the share of taught student positions that had an aligned teacher position, the share of the
        teacher's mass that landed on student tokens, and each teacher's vocabulary map."""
        taught, aligned, mass = self.totals()
        return {"method": self.method,
                "aligned_share": aligned / taught if taught else None,
                "mapped_mass_share": (mass / aligned if aligned else None) if self.method == "map" else None,
                "vocabulary": [{"exact_share": b.exact_share, "mapped_share": b.mapped_share} for b in self.bridges]}
