"""Build masked and causal students and teachers: HF checkpoints, HF config files, or named presets.

Presets name an architecture; the vocabulary comes from the tokenizer. Paper sizes follow Qin et al.
(2022), Table 6 (RoBERTa and GPT series, see PAPER.md); `{family}-{layers}x{width}` builds any small
model of a family, for example `llama-4x256` or `roberta-2x128`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    RobertaConfig,
)

from kinherit.errors import KinheritError
from kinherit.sealed import is_sealed, verify

MASKED_TYPES = {"roberta", "bert", "xlm-roberta", "camembert", "distilbert", "electra", "deberta", "deberta-v2"}
CAUSAL_TYPES = {"gpt2", "llama", "mistral", "qwen2", "qwen3", "gpt_neox", "opt", "phi", "phi3", "gemma", "olmo"}
FAMILIES = ("roberta", "bert", "gpt2", "llama")


@dataclass(frozen=True)
class Shape:
    """Transformer shape of a preset: layers, hidden width, attention heads, feed-forward width."""

    layers: int
    width: int
    heads: int
    ffn: int


# Qin et al. (2022), Table 6 and App. B: the RoBERTa series, including the depth (H_h) and width (D_d) series.
ROBERTA_PAPER = {
    "roberta-medium": Shape(9, 576, 12, 3072),
    "roberta-base": Shape(12, 768, 12, 3072),
    "roberta-base-plus": Shape(18, 864, 12, 3600),
    "roberta-large": Shape(24, 1024, 16, 4096),
    **{f"roberta-h{h}": Shape(h, 768, 12, 3072) for h in (4, 6, 8, 10)},
    **{f"roberta-d{d}": Shape(12, d, 12, 3072) for d in (288, 384, 480, 576, 672)},
}
# Qin et al. (2022), Table 6: the GPT series (auto-regressive), built here as GPT-2 models.
GPT_PAPER = {
    "gpt-73m": Shape(9, 576, 12, 3072),
    "gpt-124m": Shape(12, 768, 12, 3072),
    "gpt-209m": Shape(18, 864, 12, 3600),
    "gpt-354m": Shape(24, 1024, 16, 4096),
    "gpt-773m": Shape(36, 1280, 20, 5120),
    "gpt-1b": Shape(40, 1440, 20, 5760),
}
# Peak learning rates at batch 2,048 from the same table, for the full-scale configs.
PAPER_PEAK_LR = {"roberta-medium": 5e-4, "roberta-base": 5e-4, "roberta-base-plus": 3.5e-4,
                 "roberta-large": 2.5e-4, "gpt-73m": 5e-4, "gpt-124m": 5e-4, "gpt-209m": 4e-4,
                 "gpt-354m": 3.5e-4, "gpt-773m": 3e-4, "gpt-1b": 2.5e-4}
SMALL_PATTERN = re.compile(r"^(roberta|bert|gpt2|llama)-(\d+)x(\d+)$")


def preset_names() -> list[str]:
    """Every named preset (the `{family}-{L}x{d}` pattern is accepted as well)."""
    small = [f"{family}-{shape}" for family in FAMILIES for shape in ("2x128", "4x256", "6x384")]
    return sorted(ROBERTA_PAPER) + sorted(GPT_PAPER) + small


def _small_shape(layers: int, width: int) -> Shape:
    heads = max(1, width // 64)
    if width % heads:
        raise KinheritError(f"width {width} is not divisible into {heads} heads of 64; use a multiple of 64")
    return Shape(layers, width, heads, 4 * width)


def preset_config(name: str, vocab_size: int, block_size: int, tokenizer: PreTrainedTokenizerBase | None = None
                  ) -> PretrainedConfig:
    """The HF config of a preset, sized for `vocab_size` and sequences of `block_size` tokens."""
    special = {}
    if tokenizer is not None:
        special = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
                   "eos_token_id": tokenizer.eos_token_id}
    if name in ROBERTA_PAPER:
        family, shape = "roberta", ROBERTA_PAPER[name]
    elif name in GPT_PAPER:
        family, shape = "gpt2", GPT_PAPER[name]
    elif match := SMALL_PATTERN.match(name):
        family, shape = match.group(1), _small_shape(int(match.group(2)), int(match.group(3)))
    else:
        raise KinheritError(f"unknown model preset {name!r}; known presets: {', '.join(preset_names())} "
                            "(or any FAMILY-LAYERSxWIDTH with FAMILY in roberta, bert, gpt2, llama), or give a "
                            "checkpoint folder or a config.json")
    if family == "roberta":
        # RoBERTa offsets positions by padding_idx + 1, so it needs two spare position embeddings.
        return RobertaConfig(vocab_size=vocab_size, hidden_size=shape.width, num_hidden_layers=shape.layers,
                             num_attention_heads=shape.heads, intermediate_size=shape.ffn,
                             max_position_embeddings=block_size + 2, type_vocab_size=1, **special)
    if family == "bert":
        return BertConfig(vocab_size=vocab_size, hidden_size=shape.width, num_hidden_layers=shape.layers,
                          num_attention_heads=shape.heads, intermediate_size=shape.ffn,
                          max_position_embeddings=block_size, type_vocab_size=1, **special)
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=shape.width, n_layer=shape.layers, n_head=shape.heads,
                          n_inner=shape.ffn, n_positions=block_size, **special)
    return LlamaConfig(vocab_size=vocab_size, hidden_size=shape.width, num_hidden_layers=shape.layers,
                       num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
                       intermediate_size=shape.ffn * 2 // 3 // 8 * 8 or 8, max_position_embeddings=block_size,
                       tie_word_embeddings=True, **special)


def model_kind(config: PretrainedConfig) -> str:
    """'masked' or 'causal', from the model type or the architectures a config declares."""
    if config.model_type in MASKED_TYPES:
        return "masked"
    if config.model_type in CAUSAL_TYPES:
        return "causal"
    for architecture in getattr(config, "architectures", None) or []:
        if architecture.endswith("ForMaskedLM"):
            return "masked"
        if architecture.endswith("ForCausalLM") or architecture.endswith("LMHeadModel"):
            return "causal"
    raise KinheritError(f"cannot tell whether model type {config.model_type!r} is a masked or a causal LM; "
                        "use a RoBERTa/BERT or GPT-2/Llama-style checkpoint")


def auto_class(kind: str):
    return AutoModelForMaskedLM if kind == "masked" else AutoModelForCausalLM


def is_checkpoint(path: str) -> bool:
    """A folder with an HF config (weights are checked when loading)."""
    return Path(path).is_dir() and (Path(path) / "config.json").exists()


def check_finished(folder: str) -> None:
    """Refuse a checkpoint folder that is known to be incomplete or corrupt.

    A sealed folder (ours) is verified against its manifest; a `kinherit pretrain` output folder with
    a model but neither manifest nor run.json was interrupted while saving its final model. Other
    folders load as they are.
    """
    if is_sealed(folder):
        verify(folder, "model checkpoint")
    elif (Path(folder) / "log.jsonl").exists() and not (Path(folder) / "run.json").exists():
        raise KinheritError(f"{folder} is the output of a `kinherit pretrain` run that did not finish saving its "
                            "model; resume that run (same command with --resume_from_checkpoint auto) or use one "
                            "of its checkpoint-N folders")


@contextlib.contextmanager
def reading_weights(source: str) -> Iterator[None]:
    """Turn any failure of an HF loader inside the block into an error naming the checkpoint: truncated or foreign
    weight files fail deep inside the loaders."""
    try:
        yield
    except KinheritError:
        raise
    except Exception as error:  # noqa: BLE001 - the loaders raise many kinds (OSError, ValueError, safetensors')
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise KinheritError(f"could not load model weights from {source}: {first}. Check that the folder "
                            "holds a complete checkpoint (re-save or re-download it)") from error


def load_config(source: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The HF config of a checkpoint folder, or a clear error if transformers does not know its architecture."""
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError) as error:
        try:
            model_type = json.loads((Path(source) / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError):
            model_type = None
        import transformers

        raise KinheritError(
            f"{source}: model type {model_type!r} is not known to transformers {transformers.__version__} "
            f"({str(error).splitlines()[0]}). kinherit trains masked LMs ({', '.join(sorted(MASKED_TYPES))}) and "
            f"causal LMs ({', '.join(sorted(CAUSAL_TYPES))}) or any architecture transformers knows; if the checkpoint "
            "ships its own model code, pass --trust_remote_code true (only for sources you trust)") from error


def load_model(source: str, tokenizer: PreTrainedTokenizerBase | None = None, block_size: int = 128,
               trust_remote_code: bool = False, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A model from a checkpoint folder (weights loaded), a config.json (fresh weights), or a preset."""
    if is_checkpoint(source):
        check_finished(source)
        config = load_config(source, trust_remote_code)
        with reading_weights(source):
            return auto_class(model_kind(config)).from_pretrained(
                source, trust_remote_code=trust_remote_code, dtype=dtype or torch.float32)
    if source.endswith(".json"):
        if not os.path.exists(source):
            raise KinheritError(f"model config file {source} does not exist; check the path")
        with open(source, encoding="utf-8") as handle:
            data = json.load(handle)
        if "model_type" not in data:
            raise KinheritError(f"{source} has no 'model_type'; it must be an HF config.json")
        config = AutoConfig.for_model(**data)
        if tokenizer is not None and "vocab_size" not in data:
            config.vocab_size = len(tokenizer)
        return auto_class(model_kind(config)).from_config(config, trust_remote_code=trust_remote_code)
    if os.sep in source or source.startswith("."):
        raise KinheritError(f"model path {source} does not exist or has no config.json; give a checkpoint "
                            "folder, a config.json, or a preset name")
    if tokenizer is None:
        raise KinheritError("building a model from a preset needs a tokenizer for its vocabulary size")
    config = preset_config(source, len(tokenizer), block_size, tokenizer)
    return auto_class(model_kind(config)).from_config(config)


def non_embedding_parameters(model: PreTrainedModel) -> int:
    """Parameters outside the token and position embeddings (the usual measure of model size)."""
    embedding_ids = {id(p) for module in model.modules() if isinstance(module, torch.nn.Embedding)
                     for p in module.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding_ids)


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
