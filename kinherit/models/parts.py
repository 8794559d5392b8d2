"""A model's parts as the chunked loss needs them: the body and the LM head apart, and FSDP2 sharding by layer."""

from __future__ import annotations

import contextlib

import torch
from transformers import (
    PreTrainedModel,
)

from kinherit.core.errors import KinheritError


def backbone_and_head(model: PreTrainedModel) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body (returns final hidden states) and the LM head (hidden states -> logits).

    Splitting them lets the loss apply the head only at the positions that need logits.
    """
    body = model.base_model
    for name in ("lm_head", "cls", "vocab_projector", "embed_out"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            if name == "vocab_projector":  # DistilBERT splits its head; it is not supported on this path
                break
            return body, head
    raise KinheritError(f"{type(model).__name__} has no LM head that kinherit recognises (lm_head or cls); use "
                        "a RoBERTa, BERT, GPT-2 or Llama-style model")


@contextlib.contextmanager
def forward_as_body(model: PreTrainedModel, body: torch.nn.Module):
    """Make `model`'s forward return its body's final hidden states [B, T, H] for the duration.

    The model is then called as a module, through whatever wraps it (DDP's gradient-sync
    bookkeeping and `no_sync`, FSDP's parameter gathering), while no full [B, T, V] logits are
    made: the head runs afterwards, chunked, only at the positions that carry a loss. A forward
    set on the instance before (accelerate's mixed-precision wrapper) is put back afterwards.
    """
    previous = model.__dict__.get("forward")

    def hidden_states(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return body(input_ids=input_ids, attention_mask=attention_mask)[0]

    model.forward = hidden_states
    try:
        yield
    finally:
        if previous is None:
            del model.forward
        else:
            model.forward = previous


def shard_layers(model: PreTrainedModel) -> PreTrainedModel:
    """Shard a model over the processes with FSDP2: each transformer layer (the longest module list), then the rest.

    A layer's weights are gathered only while it runs; the model's own (embeddings, final norm, head,
    tied or not) stay gathered after its forward, where the chunked loss reads the head, until the
    backward pass or `reshard_model`.
    """
    from torch.distributed.fsdp import fully_shard

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    if not lists:
        raise KinheritError(f"{type(model).__name__} has no list of transformer layers to shard")
    for layer in max(lists, key=len):
        fully_shard(layer)
    fully_shard(model)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `shard_layers` (FSDP2's `fully_shard`) has been applied to the model."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def reshard_model(model: torch.nn.Module) -> None:
    """Free the gathered weights of a model sharded by `shard_layers` (nothing for other models)."""
    if hasattr(model, "reshard"):
        model.reshard()
