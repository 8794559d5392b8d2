"""Grow a larger model from a smaller one of the same family, preserving its function (model growth).

Width (HyperCloning / Net2Net style): every coordinate of the residual stream is cloned n = d'/d
times, so a LayerNorm or RMSNorm sees the same mean and variance and every normalised coordinate is
unchanged. Weights that write to a cloned axis are duplicated; weights that read from one are split
into n parts that sum to the original (W/n each, plus symmetry-breaking noise that sums to zero over
the parts, so the function is still preserved exactly while the clones can diverge in training).
Attention heads (with the same head size) and FFN neurons are cloned the same way; when their new
count is not a whole multiple, the remaining heads or neurons are fresh (their usual random
initialisation on the way in, zero on the way out), which adds nothing to the output. With tied
input and output embeddings, the final norm is scaled by 1/n so the logits are unchanged.

Depth: new layers are inserted after the layers they copy, with zeroed output projections (attention
output and FFN down projection, weights and biases), so they add nothing to the residual stream at
first and learn from there. In pre-norm models (Llama, GPT-2) such a layer is exactly the identity.
In post-norm models (BERT, RoBERTa) each sub-layer ends in a LayerNorm, which would re-normalise the
stream; so the last LayerNorm before an inserted run of layers is set to the plain standardisation
(weight 1, bias 0), the inserted layers' LayerNorms too, and the last inserted layer's final
LayerNorm takes over the original weight and bias: standardising an already standardised vector
changes it only by the norm's epsilon, so the function is preserved to float tolerance.

Refused, with the reason: another family, a smaller target, another head size, another vocabulary,
and a residual width that is not a whole multiple (a norm's statistics would change) unless
`allow_inexact` is given: then the whole multiple that fits is cloned, the remaining coordinates
start fresh, and the report marks the function as not preserved (the explicit fallback).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from kinherit.core.errors import KinheritError
from kinherit.models.loading import auto_class, load_model, model_kind
from kinherit.models.presets import preset_config

logger = logging.getLogger(__name__)

PRE_NORM = ("llama", "gpt2")
POST_NORM = ("roberta", "bert")


@dataclass
class Dims:
    """The sizes growth maps: residual width, heads, key/value heads, FFN, layers, head size, positions."""

    width: int
    heads: int
    kv_heads: int
    ffn: int
    layers: int
    positions: int

    @property
    def head_size(self) -> int:
        return self.width // self.heads

    @classmethod
    def of(cls, config: PretrainedConfig) -> Dims:
        if config.model_type == "gpt2":
            return cls(config.n_embd, config.n_head, config.n_head, config.n_inner or 4 * config.n_embd,
                       config.n_layer, config.n_positions)
        kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return cls(config.hidden_size, config.num_attention_heads, kv, config.intermediate_size,
                   config.num_hidden_layers, config.max_position_embeddings)


@dataclass
class GrowthReport:
    """What growth did: the sizes, the width factor, how depth was grown, and whether the function is preserved."""

    family: str
    source: dict
    target: dict
    width_factor: int
    depth_method: str
    function_preserving: bool
    noise: float
    notes: list[str] = field(default_factory=list)
    max_abs_logit_difference: float | None = None


def _unit_map(old: int, new: int, repeat: int = 1) -> torch.Tensor:
    """Source index of each new unit: whole copies of the old units (block layout), then -1 for fresh units.

    `repeat` groups consecutive units (a head's `head_size` rows) so that whole groups are cloned.
    """
    groups_old, groups_new = old // repeat, new // repeat
    copies = groups_new // groups_old
    source = torch.cat([torch.arange(groups_old).repeat(copies),
                        torch.full((groups_new - copies * groups_old,), -1)])
    inner = torch.arange(repeat)
    return torch.where(source.repeat_interleave(repeat) >= 0,
                       source.repeat_interleave(repeat) * repeat + inner.repeat(groups_new), -1)


class _Expander:
    """Applies the unit maps of one growth to weight tensors."""

    def __init__(self, old: Dims, new: Dims, noise: float, generator: torch.Generator) -> None:
        head = old.head_size
        q_old, q_new = old.heads * head, new.heads * head
        kv_old, kv_new = old.kv_heads * head, new.kv_heads * head
        self.maps = {"d": _unit_map(old.width, new.width), "q": _unit_map(q_old, q_new, head),
                     "kv": _unit_map(kv_old, kv_new, head), "f": _unit_map(old.ffn, new.ffn),
                     "P": torch.cat([torch.arange(old.positions), torch.full((new.positions - old.positions,), -1)])}
        self.maps["qkv"] = torch.cat([torch.where(self.maps["q"] >= 0, self.maps["q"] + b * q_old, -1)
                                      for b in range(3)])
        self.noise, self.generator = noise, generator

    def _axis(self, kind: str | None, size: int) -> torch.Tensor:
        return torch.arange(size) if kind is None else self.maps[kind]

    def weight(self, old: torch.Tensor, fresh: torch.Tensor, rows: tuple[str | None, str],
               cols: tuple[str | None, str] | None = None) -> torch.Tensor:
        """The grown tensor: each axis is `(kind, role)`, role 'clone' (duplicated) or 'split' (shared out).

        `fresh` is the new model's own initialisation, kept for fresh units on a cloned axis.
        """
        axes = [rows] if cols is None else [rows, cols]
        grown = old.float()
        for dim, (kind, _role) in enumerate(axes):
            index = self._axis(kind, fresh.shape[dim])
            grown = grown.index_select(dim, index.clamp_min(0))
        fresh_mask = torch.zeros(fresh.shape, dtype=torch.bool)
        for dim, (kind, role) in enumerate(axes):
            index = self._axis(kind, fresh.shape[dim])
            shape = [1] * len(axes)
            shape[dim] = -1
            missing = (index < 0).view(shape).expand(fresh.shape)
            if role == "split":
                grown = self._split(grown, index, dim)
                grown = grown.masked_fill(missing, 0.0)  # fresh inputs contribute nothing
            else:
                fresh_mask |= missing
        grown = torch.where(fresh_mask, fresh.float(), grown)
        return grown.to(fresh.dtype)

    def _split(self, grown: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
        """Divide by the number of copies of each source unit and add noise that sums to zero over its copies."""
        valid = index.clamp_min(0)
        counts = torch.bincount(valid[index >= 0], minlength=int(valid.max()) + 1).clamp_min(1)
        shape = [1] * grown.dim()
        shape[dim] = -1
        grown = grown / counts[valid].view(shape).to(grown.dtype)
        if self.noise > 0:
            noise = torch.randn(grown.shape, generator=self.generator) * self.noise * grown.std().clamp_min(1e-8)
            noise = noise * (index >= 0).view(shape)
            moved = noise.movedim(dim, 0)
            mean = torch.zeros((len(counts), *moved.shape[1:])).index_add_(0, valid, moved) / counts.view(
                -1, *[1] * (moved.dim() - 1))
            noise = (moved - mean[valid]).movedim(0, dim)
            noise = noise * (index >= 0).view(shape)
            grown = grown + noise
        return grown


# Parameter rules per family: a name suffix (after the layer prefix) -> axes as (kind, role) pairs.
# Linear weights are [out, in]; GPT-2's Conv1D weights are [in, out].
CLONE_D = (("d", "clone"),)
LLAMA_LAYER = {"self_attn.q_proj.weight": (("q", "clone"), ("d", "split")),
               "self_attn.k_proj.weight": (("kv", "clone"), ("d", "split")),
               "self_attn.v_proj.weight": (("kv", "clone"), ("d", "split")),
               "self_attn.o_proj.weight": (("d", "clone"), ("q", "split")),
               "mlp.gate_proj.weight": (("f", "clone"), ("d", "split")),
               "mlp.up_proj.weight": (("f", "clone"), ("d", "split")),
               "mlp.down_proj.weight": (("d", "clone"), ("f", "split")),
               "input_layernorm.weight": CLONE_D, "post_attention_layernorm.weight": CLONE_D}
GPT2_LAYER = {"ln_1.weight": CLONE_D, "ln_1.bias": CLONE_D, "ln_2.weight": CLONE_D, "ln_2.bias": CLONE_D,
              "attn.c_attn.weight": (("d", "split"), ("qkv", "clone")), "attn.c_attn.bias": (("qkv", "clone"),),
              "attn.c_proj.weight": (("q", "split"), ("d", "clone")), "attn.c_proj.bias": CLONE_D,
              "mlp.c_fc.weight": (("d", "split"), ("f", "clone")), "mlp.c_fc.bias": (("f", "clone"),),
              "mlp.c_proj.weight": (("f", "split"), ("d", "clone")), "mlp.c_proj.bias": CLONE_D}
ENCODER_LAYER = {"attention.self.query.weight": (("q", "clone"), ("d", "split")),
                 "attention.self.query.bias": (("q", "clone"),),
                 "attention.self.key.weight": (("q", "clone"), ("d", "split")),
                 "attention.self.key.bias": (("q", "clone"),),
                 "attention.self.value.weight": (("q", "clone"), ("d", "split")),
                 "attention.self.value.bias": (("q", "clone"),),
                 "attention.output.dense.weight": (("d", "clone"), ("q", "split")),
                 "attention.output.dense.bias": CLONE_D,
                 "attention.output.LayerNorm.weight": CLONE_D, "attention.output.LayerNorm.bias": CLONE_D,
                 "intermediate.dense.weight": (("f", "clone"), ("d", "split")),
                 "intermediate.dense.bias": (("f", "clone"),),
                 "output.dense.weight": (("d", "clone"), ("f", "split")), "output.dense.bias": CLONE_D,
                 "output.LayerNorm.weight": CLONE_D, "output.LayerNorm.bias": CLONE_D}
IDENTITY_OUTPUTS = {"llama": ("self_attn.o_proj.weight", "mlp.down_proj.weight"),
                    "gpt2": ("attn.c_proj.weight", "attn.c_proj.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"),
                    "roberta": ("attention.output.dense.weight", "attention.output.dense.bias",
                                "output.dense.weight", "output.dense.bias")}
IDENTITY_OUTPUTS["bert"] = IDENTITY_OUTPUTS["roberta"]
# Post-norm: the LayerNorms that become plain standardisations inside an inserted run of layers.
PLAIN_ATTENTION_NORM = ("attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias")
PLAIN_OUTPUT_NORM = ("output.LayerNorm.weight", "output.LayerNorm.bias")
VOCAB = (None, "clone")


def _rules(family: str) -> tuple[str, dict, dict, tuple[str, ...]]:
    """(layer prefix, per-layer rules, other rules, parameters scaled by 1/n when embeddings are tied)."""
    if family == "llama":
        return "model.layers.", LLAMA_LAYER, {"model.embed_tokens.weight": (VOCAB, ("d", "clone")),
                                              "model.norm.weight": CLONE_D,
                                              "lm_head.weight": (VOCAB, ("d", "split"))}, ("model.norm.weight",)
    if family == "gpt2":
        return "transformer.h.", GPT2_LAYER, {"transformer.wte.weight": (VOCAB, ("d", "clone")),
                                              "transformer.wpe.weight": (("P", "clone"), ("d", "clone")),
                                              "transformer.ln_f.weight": CLONE_D, "transformer.ln_f.bias": CLONE_D,
                                              "lm_head.weight": (VOCAB, ("d", "split"))}, (
            "transformer.ln_f.weight", "transformer.ln_f.bias")
    base = "roberta" if family == "roberta" else "bert"
    head = ({"lm_head.dense.weight": (("d", "clone"), ("d", "split")), "lm_head.dense.bias": CLONE_D,
             "lm_head.layer_norm.weight": CLONE_D, "lm_head.layer_norm.bias": CLONE_D,
             "lm_head.bias": (VOCAB,), "lm_head.decoder.weight": (VOCAB, ("d", "split")),
             "lm_head.decoder.bias": (VOCAB,)}, ("lm_head.layer_norm.weight", "lm_head.layer_norm.bias"))
    if family == "bert":
        head = ({"cls.predictions.transform.dense.weight": (("d", "clone"), ("d", "split")),
                 "cls.predictions.transform.dense.bias": CLONE_D,
                 "cls.predictions.transform.LayerNorm.weight": CLONE_D,
                 "cls.predictions.transform.LayerNorm.bias": CLONE_D, "cls.predictions.bias": (VOCAB,),
                 "cls.predictions.decoder.weight": (VOCAB, ("d", "split")), "cls.predictions.decoder.bias": (VOCAB,)},
                ("cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias"))
    embeddings = {f"{base}.embeddings.word_embeddings.weight": (VOCAB, ("d", "clone")),
                  f"{base}.embeddings.position_embeddings.weight": (("P", "clone"), ("d", "clone")),
                  f"{base}.embeddings.token_type_embeddings.weight": ((None, "clone"), ("d", "clone")),
                  f"{base}.embeddings.LayerNorm.weight": CLONE_D, f"{base}.embeddings.LayerNorm.bias": CLONE_D}
    return f"{base}.encoder.layer.", ENCODER_LAYER, {**embeddings, **head[0]}, head[1]


def _check(old_config: PretrainedConfig, new_config: PretrainedConfig, old: Dims, new: Dims,
           allow_inexact: bool = False) -> int:
    family = old_config.model_type
    if new_config.model_type != family:
        raise KinheritError(f"cannot grow a {family} model into a {new_config.model_type} one; growth keeps the family")
    if family not in PRE_NORM + POST_NORM:
        raise KinheritError(f"growth supports {', '.join(PRE_NORM + POST_NORM)} models, not {family}")
    if new_config.vocab_size != old_config.vocab_size:
        raise KinheritError(f"the target has {new_config.vocab_size} tokens, the source {old_config.vocab_size}; "
                            "growth keeps the vocabulary")
    smaller = [name for name in ("width", "heads", "kv_heads", "ffn", "layers", "positions")
               if getattr(new, name) < getattr(old, name)]
    if smaller:
        raise KinheritError(f"the target is smaller than the source in {smaller}; growth only grows")
    if new.width % old.width and not allow_inexact:
        raise KinheritError(f"residual width {old.width} -> {new.width} is not a whole multiple: cloning keeps a "
                            f"norm's statistics only when every coordinate has the same number of copies; choose a "
                            f"width of {old.width * 2} or {old.width * 3}, or pass --allow_inexact to clone what "
                            "fits and start the remaining coordinates fresh (the function is then not preserved)")
    if new.head_size != old.head_size:
        raise KinheritError(f"head size {old.head_size} -> {new.head_size}: growth keeps the head size (and so "
                            f"rotary embeddings and the attention scale); use {new.width // old.head_size} heads")
    if new.heads // new.kv_heads != old.heads // old.kv_heads:
        raise KinheritError("growth keeps the number of query heads per key/value head")
    return new.width // old.width


def _depth_plan(old_layers: int, new_layers: int) -> list[tuple[int, bool]]:
    """(source layer, is_new) for every target layer: each source layer followed by its share of new layers."""
    extra = new_layers - old_layers
    plan = []
    for layer in range(old_layers):
        plan.append((layer, False))
        plan += [(layer, True)] * (extra // old_layers + (1 if layer < extra % old_layers else 0))
    return plan


def _plain_norm(plan: list[tuple[int, bool]], index: int, is_new: bool, suffix: str) -> bool:
    """Post-norm: whether this LayerNorm of target layer `index` becomes weight 1, bias 0 (see the docstring)."""
    followed = index + 1 < len(plan) and plan[index + 1][1]  # an inserted layer comes next
    return (is_new and suffix in PLAIN_ATTENTION_NORM) or (followed and suffix in PLAIN_OUTPUT_NORM)


@torch.no_grad()
def grow_model(source: PreTrainedModel, target_config: PretrainedConfig, noise: float = 0.01, seed: int = 0,
               allow_inexact: bool = False) -> tuple[PreTrainedModel, GrowthReport]:
    """A model of `target_config` initialised from `source` (see the module docstring), and what was done.

    `allow_inexact`: a residual width that is not a whole multiple is grown anyway, by cloning the
    whole multiple that fits and starting the remaining coordinates fresh (zero weights into the
    source's computation, their usual random initialisation elsewhere); the norms then see other
    statistics, so the function is only approximately preserved, and the report says so.
    """
    old_config, family = source.config, source.config.model_type
    old, new = Dims.of(old_config), Dims.of(target_config)
    factor = _check(old_config, target_config, old, new, allow_inexact)
    with torch.random.fork_rng(devices=[]):  # fresh units are seeded; the caller's random state is left alone
        torch.manual_seed(seed)
        grown = auto_class(model_kind(target_config)).from_config(target_config)
    generator = torch.Generator().manual_seed(seed)
    expander = _Expander(old, new, noise, generator)
    prefix, layer_rules, other_rules, scaled = _rules(family)
    tied = bool(getattr(target_config, "tie_word_embeddings", True))
    old_params = dict(source.named_parameters())
    plan = _depth_plan(old.layers, new.layers)
    pre_norm = family in PRE_NORM
    for name, param in grown.named_parameters():
        if name.startswith(prefix):
            index, _, suffix = name[len(prefix):].partition(".")
            layer, is_new = plan[int(index)]
            value = expander.weight(old_params[f"{prefix}{layer}.{suffix}"], param, *layer_rules[suffix])
            if is_new and suffix in IDENTITY_OUTPUTS[family]:
                value = torch.zeros_like(value)  # the new layer adds nothing to the residual stream at first
            if not pre_norm and _plain_norm(plan, int(index), is_new, suffix):
                value = torch.ones_like(value) if suffix.endswith("weight") else torch.zeros_like(value)
        elif name in other_rules:
            value = expander.weight(old_params[name], param, *other_rules[name])
            if tied and name in scaled:
                value = value / factor  # the tied output embedding reads n copies of every coordinate
        else:
            raise KinheritError(f"growth has no rule for parameter {name} of {family}; it cannot be grown safely")
        param.copy_(value)
    notes = []
    if new.ffn % old.ffn:
        notes.append(f"FFN {old.ffn} -> {new.ffn}: {new.ffn // old.ffn} copies of each neuron and "
                     f"{new.ffn % old.ffn} fresh neurons (zero outgoing weights)")
    if new.heads % old.heads:
        notes.append(f"heads {old.heads} -> {new.heads}: {new.heads % old.heads} fresh heads (zero output)")
    depth_method = "none"
    if new.layers > old.layers:
        depth_method = "inserted copies of the preceding layer with zeroed output projections"
        if not pre_norm:
            depth_method += " (post-norm: LayerNorms around each inserted run made plain standardisations)"
    exact = new.width % old.width == 0
    if not exact:
        notes.append(f"residual width {old.width} -> {new.width} is not a whole multiple: {factor} copies of each "
                     f"coordinate and {new.width % old.width} fresh ones; the function is NOT preserved")
    report = GrowthReport(family=family, source=asdict(old), target=asdict(new), width_factor=factor,
                          depth_method=depth_method, function_preserving=exact, noise=noise, notes=notes)
    return grown, report


def max_logit_difference(a: PreTrainedModel, b: PreTrainedModel, vocab: int, length: int = 16, seed: int = 0) -> float:
    """Largest absolute difference of the two models' logits on a random batch (both in eval mode)."""
    ids = torch.randint(5, vocab, (2, length), generator=torch.Generator().manual_seed(seed))
    a.eval()
    b.eval()
    with torch.no_grad():
        return float((a(input_ids=ids).logits.float() - b(input_ids=ids).logits.float()).abs().max())


def target_config_for(target: str, source_config: PretrainedConfig, tokenizer) -> PretrainedConfig:
    """The target's config: a preset (sized for the source's vocabulary and positions) or a config.json."""
    if target.endswith(".json"):
        if not Path(target).exists():
            raise KinheritError(f"target config {target} does not exist")
        data = json.loads(Path(target).read_text(encoding="utf-8"))
        return AutoConfig.for_model(**data)
    positions = Dims.of(source_config).positions - (2 if source_config.model_type == "roberta" else 0)
    config = preset_config(target, source_config.vocab_size, positions, tokenizer)
    if hasattr(source_config, "tie_word_embeddings"):
        config.tie_word_embeddings = source_config.tie_word_embeddings
    return config


def grow_checkpoint(source: str, target: str, output: str, noise: float = 0.01, seed: int = 0,
                    trust_remote_code: bool = False, allow_inexact: bool = False) -> GrowthReport:
    """`kinherit grow`: grow the checkpoint `source` into `target` and save it (with its tokenizer) in `output`."""
    from kinherit.core.sealed import staged_folder
    from kinherit.data import load_tokenizer

    if Path(output).exists():
        raise KinheritError(f"{output} already exists; choose a new folder for the grown model")
    model = load_model(source, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(source, trust_remote_code)
    config = target_config_for(target, model.config, tokenizer)
    grown, report = grow_model(model, config, noise=noise, seed=seed, allow_inexact=allow_inexact)
    report.max_abs_logit_difference = max_logit_difference(model, grown, len(tokenizer))
    if not report.function_preserving:
        logger.warning("grown model does not preserve the source's function: %s", "; ".join(report.notes))
    with staged_folder(output) as staging:
        grown.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "grow.json").write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    return report
