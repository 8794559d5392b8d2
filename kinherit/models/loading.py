"""Load and classify HF models: checkpoints, config files and presets, safetensors only, remote code only when asked."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from kinherit.core.errors import KinheritError
from kinherit.core.sealed import is_sealed, verify
from kinherit.models.presets import preset_config

MASKED_TYPES = {"roberta", "bert", "xlm-roberta", "camembert", "distilbert", "electra", "deberta", "deberta-v2"}


CAUSAL_TYPES = {"gpt2", "llama", "mistral", "qwen2", "qwen3", "gpt_neox", "opt", "phi", "phi3", "gemma", "olmo"}


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
    """The HF config of a checkpoint folder, or a clear error if the folder is missing or transformers does not know
    its architecture."""
    if source.startswith(("/", ".", "~")) and not is_checkpoint(source):  # a local path, not a hub id
        raise KinheritError(f"model path {source} does not exist or has no config.json; give a checkpoint folder "
                            "(for a `kinherit pretrain` run: its output folder, which holds the final model)")
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
