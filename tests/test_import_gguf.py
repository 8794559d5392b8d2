"""`kinherit import-gguf`: a GGUF file written from one of our models comes back as the same model and tokenizer."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch

from kinherit.cli import main
from kinherit.core.errors import KinheritError
from kinherit.data import load_tokenizer
from kinherit.models.gguf_import import import_gguf
from kinherit.models.loading import load_model


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's order of the rotary halves in q and k (transformers undoes it on reading)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


LAYER_PARTS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
         "lm_head.weight": "output.weight"}


def write_gguf(model, tokenizer, path) -> None:
    """A llama model and its byte-level BPE as llama.cpp writes them (float32 tensors, gpt2 tokenizer)."""
    c = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if i in tokenizer.all_special_ids else 1 for _, i in vocab])
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    for key, value in model.state_dict().items():
        value = value.float().numpy()
        if key in NAMES:
            writer.add_tensor(NAMES[key], value)
            continue
        _model, _layers, layer, *rest = key.split(".")
        part = ".".join(rest[:-1])
        if part in ("self_attn.q_proj", "self_attn.k_proj"):
            heads = c.num_attention_heads if part == "self_attn.q_proj" else c.num_key_value_heads
            value = _permute(value, heads)
        writer.add_tensor(f"blk.{layer}.{LAYER_PARTS[part]}.weight", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_gguf_file_imports_as_the_same_model_and_tokenizer(tmp_path, tokenizer, capsys) -> None:
    model = load_model("llama-1x64", tokenizer, 64)
    model.config.tie_word_embeddings = False
    write_gguf(model, tokenizer, tmp_path / "tiny.gguf")
    assert main(["import-gguf", str(tmp_path / "tiny.gguf"), str(tmp_path / "imported")]) == 0
    assert "imported a llama model" in capsys.readouterr().out
    back, back_tokenizer = load_model(str(tmp_path / "imported")), load_tokenizer(tmp_path / "imported")
    text = "The cat sat on the mat. Überraschung! 東京"
    assert back_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    torch.testing.assert_close(back(ids).logits, model(ids).logits)
    with pytest.raises(KinheritError, match="exists; give a new folder"):
        import_gguf(tmp_path / "tiny.gguf", tmp_path / "imported")
    with pytest.raises(KinheritError, match="is not a .gguf file"):
        import_gguf(tmp_path / "imported" / "config.json", tmp_path / "other")
