"""Named model presets: the paper's sizes (Qin et al., 2022, Table 6: the RoBERTa and GPT series) and
`{family}-{layers}x{width}` for any small model of a family, for example `llama-4x256` or `roberta-2x128`.
A preset names an architecture; the vocabulary comes from the tokenizer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transformers import (
    BertConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    RobertaConfig,
)

from kinherit.core.errors import KinheritError

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
