"""Loading frozen teachers for a student: checkpoint, tokenizer and kind checks, dtype, mixture or routing."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kinherit.core.errors import KinheritError
from kinherit.data.token_text import Bridge
from kinherit.data.tokenizer import first_vocab_difference, load_tokenizer
from kinherit.inheritance.teachers import TeacherSet, freeze
from kinherit.models.loading import is_checkpoint, load_model, model_kind
from kinherit.models.sharded_load import load_sharded
from kinherit.training.cross_teachers import CrossTokenizerTeachers
from kinherit.training.options import TeacherArguments

logger = logging.getLogger(__name__)

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
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 trust_remote_code: bool = False,
                 sharded: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """Load a frozen teacher after checking its model kind; returns it with its tokenizer when that differs from the
    student's (None: the same token ids, the exact path).

    `sharded` reads it straight into FSDP2 shards over the processes (`--teacher_placement shard`).
    """
    if not is_checkpoint(path):
        raise KinheritError(f"teacher {path!r} is not a model checkpoint folder (no config.json there); "
                            "give the folder written by `kinherit pretrain` or `save_pretrained`")
    try:
        teacher_tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    except KinheritError as error:
        raise KinheritError(f"teacher {path} has no tokenizer saved with it, so its text cannot be matched with the "
                            f"student's; save the tokenizer into that folder ({error})") from error
    same = first_vocab_difference(student_tokenizer, teacher_tokenizer) is None
    if sharded:
        teacher = load_sharded(path, dtype, device, trust_remote_code)
    else:
        teacher = load_model(path, trust_remote_code=trust_remote_code, dtype=dtype)
    kind = model_kind(teacher.config)
    if kind != student_kind:
        raise KinheritError(f"teacher {path} is a {kind} LM but the student is a {student_kind} LM; a teacher must "
                            "predict the same thing as its student (masked for masked, causal for causal)")
    needed = len(student_tokenizer) if same else len(teacher_tokenizer)
    if teacher.config.vocab_size < needed:
        raise KinheritError(f"teacher {path} has {teacher.config.vocab_size} output rows, fewer than its "
                            f"tokenizer's {needed} tokens")
    return freeze(teacher.to(device)), None if same else teacher_tokenizer


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
    loaded = [load_teacher(path, tokenizer, kind, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                           sharded=sharded) for path in paths]
    models = [model for model, _ in loaded]
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
    weights = inherit.teacher_weights or None
    if all(other is None for _, other in loaded):
        return TeacherSet(models, weights=weights, routes=routes)
    check_cross_tokenizer(inherit, kind, paths)
    bridges = []
    for path, (model, other) in zip(paths, loaded, strict=True):
        bridge = Bridge.build(tokenizer, other or tokenizer, model.config.vocab_size)
        bridge.check(path)
        logger.info("teacher %s has another tokenizer than the student (%s): %d tokens, %.1f%% of them a student "
                    "token, %.1f%% mapped to one; it teaches by --cross_tokenizer %s", path, tokenizer_path,
                    len(other or tokenizer), 100 * bridge.exact_share, 100 * bridge.mapped_share,
                    inherit.cross_tokenizer)
        bridges.append(bridge)
    return CrossTokenizerTeachers(models, bridges, inherit.cross_tokenizer, weights=weights, routes=routes)


def check_cross_tokenizer(inherit: TeacherArguments, kind: str, paths: Sequence[str]) -> None:
    """Refuse what teachers with another tokenizer cannot do."""
    refused = [
        (kind == "causal", f"the student is a {kind} LM: teachers with another tokenizer teach causal LMs (masked "
                           "positions do not line up between two tokenizers)"),
        (inherit.teacher_placement == "replicate", "--teacher_placement shard"),
        (getattr(inherit, "divergence", "forward_kl") == "forward_kl",
         f"--divergence {getattr(inherit, 'divergence', '')} (forward_kl only)"),
        (getattr(inherit, "inherit_schedule", "") != "adaptive",
         "--inherit_schedule adaptive (it compares the student's loss with the teacher's, which another tokenizer "
         "counts in other units)"),
    ]
    reasons = [reason for ok, reason in refused if not ok]
    if reasons:
        raise KinheritError(f"teacher(s) {', '.join(paths)} use another tokenizer than the student, which does not "
                            f"support: {'; '.join(reasons)}")
