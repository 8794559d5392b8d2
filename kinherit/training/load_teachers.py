"""Loading frozen teachers for a student: checkpoint, tokenizer and kind checks, dtype, mixture or routing."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kinherit.core.errors import KinheritError
from kinherit.data.tokenizer import first_vocab_difference, load_tokenizer
from kinherit.inheritance.teachers import TeacherSet, freeze
from kinherit.models.loading import is_checkpoint, load_model, model_kind
from kinherit.models.sharded_load import load_sharded
from kinherit.training.options import TeacherArguments

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
                 device: torch.device | str = "cpu", trust_remote_code: bool = False,
                 sharded: bool = False) -> PreTrainedModel:
    """Load a frozen teacher after checking it shares the student's tokenizer and model kind.

    `sharded` reads it straight into FSDP2 shards over the processes (`--teacher_placement shard`).
    """
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
    if sharded:
        teacher = load_sharded(path, dtype, device, trust_remote_code)
    else:
        teacher = load_model(path, trust_remote_code=trust_remote_code, dtype=dtype)
    kind = model_kind(teacher.config)
    if kind != student_kind:
        raise KinheritError(f"teacher {path} is a {kind} LM but the student is a {student_kind} LM; a teacher must "
                            "predict the same thing as its student (masked for masked, causal for causal)")
    if teacher.config.vocab_size < len(student_tokenizer):
        raise KinheritError(f"teacher {path} has {teacher.config.vocab_size} output rows, fewer than the "
                            f"tokenizer's {len(student_tokenizer)} tokens")
    return freeze(teacher.to(device))




def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is bfloat16 on a CUDA device that supports it, else float32."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise KinheritError(f"unknown teacher dtype {name!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def build_teachers(inherit: TeacherArguments, tokenizer: PreTrainedTokenizerBase, tokenizer_path: str,
                   kind: str, domains: list[str], device: torch.device,
                   trust_remote_code: bool) -> TeacherSet | None:
    """Load the teachers named by `--teacher` and wire their weights or domain routing."""
    if not inherit.teacher:
        return None
    paths, teacher_domains = parse_teacher_specs(inherit.teacher)
    dtype = resolve_dtype(inherit.teacher_dtype, device)
    sharded = inherit.teacher_placement == "shard" and dist.is_initialized() and dist.get_world_size() > 1
    models = [load_teacher(path, tokenizer, kind, tokenizer_path, dtype=dtype, device=device,
                           trust_remote_code=trust_remote_code, sharded=sharded) for path in paths]
    routes = None
    if teacher_domains[0] is not None:
        unknown = [d for d in teacher_domains if d not in domains]
        if unknown:
            raise KinheritError(f"teacher routed to domain(s) {unknown}, but the corpus domains are {domains}")
        uncovered = [d for d in domains if d not in teacher_domains]
        if uncovered:
            raise KinheritError(f"corpus domain(s) {uncovered} have no routed teacher; add --teacher DOMAIN=PATH "
                                "for each domain")
        routes = {domains.index(d): i for i, d in enumerate(teacher_domains)}
        if inherit.teacher_weights:
            raise KinheritError("--teacher_weights and domain routing exclude each other; use one")
    return TeacherSet(models, weights=inherit.teacher_weights or None, routes=routes)
