"""Frozen teachers: loading with vocabulary and kind checks, and their tempered target distributions.

Several teachers are either mixed (weighted mixture of tempered probabilities, in log space) or
routed (each example is taught by the teacher of its domain).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kinherit.data.tokenizer import first_vocab_difference, load_tokenizer
from kinherit.errors import KinheritError
from kinherit.inheritance.divergences import Target, normalise_weights
from kinherit.models import (
    backbone_and_head,
    forward_as_body,
    is_checkpoint,
    load_model,
    model_kind,
    reshard_model,
    shard_layers,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_teacher_specs(specs: Sequence[str]) -> tuple[list[str], list[str | None]]:
    """Split `PATH` or `DOMAIN=PATH` items into paths and domains (all routed or none)."""
    paths, domains = [], []
    for spec in specs:
        domain, sep, path = spec.partition("=")
        if sep and domain and not os.path.exists(spec):
            paths.append(path)
            domains.append(domain)
        else:
            paths.append(spec)
            domains.append(None)
    if any(d is None for d in domains) and any(d is not None for d in domains):
        raise KinheritError("mix of routed (DOMAIN=PATH) and plain teachers; route every teacher to a domain "
                            "or none of them")
    return paths, domains


def load_teacher(path: str, student_tokenizer: PreTrainedTokenizerBase, student_kind: str,
                 student_tokenizer_path: str = "the student's tokenizer", dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", trust_remote_code: bool = False) -> PreTrainedModel:
    """Load a frozen teacher after checking it shares the student's tokenizer and model kind."""
    if not is_checkpoint(path):
        raise KinheritError(f"teacher {path!r} is not a model checkpoint folder (no config.json there); "
                            "give the folder written by `kinherit pretrain` or `save_pretrained`")
    try:
        teacher_tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    except KinheritError as error:
        raise KinheritError(f"teacher {path} has no tokenizer saved with it, so its vocabulary cannot be "
                            f"checked against the student's; save the tokenizer into that folder ({error})") from error
    difference = first_vocab_difference(student_tokenizer, teacher_tokenizer)
    if difference is not None:
        raise KinheritError(f"teacher {path} uses another tokenizer than the student ({student_tokenizer_path}): "
                            f"{difference}. KI needs identical token ids; train the teacher with the same tokenizer")
    teacher = load_model(path, trust_remote_code=trust_remote_code, dtype=dtype)
    kind = model_kind(teacher.config)
    if kind != student_kind:
        raise KinheritError(f"teacher {path} is a {kind} LM but the student is a {student_kind} LM; a teacher must "
                            "predict the same thing as its student (masked for masked, causal for causal)")
    if teacher.config.vocab_size < len(student_tokenizer):
        raise KinheritError(f"teacher {path} has {teacher.config.vocab_size} output rows, fewer than the "
                            f"tokenizer's {len(student_tokenizer)} tokens")
    return freeze(teacher.to(device))


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
               temperature: float, vocab: int) -> Target:
        """The tempered float32 target distribution [len(positions), vocab] at flattened positions."""
        if self.routes is None:
            logits = [head(h[positions])[:, :vocab] for (_body, head), h in zip(self.parts, hidden, strict=True)]
            return Target.from_logits(logits, self.weights, temperature)
        owners = row_teacher[positions]
        parts = []
        for index, ((_body, head), h) in enumerate(zip(self.parts, hidden, strict=True)):
            rows = (owners == index).nonzero().squeeze(-1)
            if rows.numel():
                parts.append((rows, Target.from_logits([head(h[positions[rows]])[:, :vocab]], [1.0], temperature)))
        return Target.assemble(parts, positions.numel())

    def to(self, device: torch.device | str) -> TeacherSet:
        """Move every teacher to `device`."""
        self.models = [m.to(device) for m in self.models]
        return self

    def shard(self) -> TeacherSet:
        """Shard every teacher over the processes (FSDP2) instead of holding a whole copy on each."""
        for model in self.models:
            shard_layers(model)  # in place: the bodies and heads in self.parts are the same modules
        return self

    def release(self) -> None:
        """Free the weights a sharded teacher gathered for this step (nothing for replicated teachers)."""
        for model in self.models:
            reshard_model(model)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is bfloat16 on a CUDA device that supports it, else float32."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise KinheritError(f"unknown teacher dtype {name!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[name]
