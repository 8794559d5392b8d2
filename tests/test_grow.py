"""Model growth: the grown model computes its source's function (width, depth, both; all four families), loads in
plain transformers, trains, and refuses what it cannot grow; experiments can start a run from a grown teacher."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from kinherit.commands.grow import grow_checkpoint, grow_model, max_logit_difference, target_config_for
from kinherit.commands.pretrain import pretrain
from kinherit.core.errors import KinheritError
from kinherit.experiment.runner import run_experiment
from kinherit.experiment.spec import parse_experiment
from kinherit.models.loading import load_model
from kinherit.training.options import DataArguments, InheritanceArguments, KinheritTrainingArguments, ModelArguments

FAMILIES = ["llama", "gpt2", "roberta", "bert"]
SHAPES = {"width": "2x128", "depth": "5x64", "both": "4x192"}


def source_model(family, tokenizer, shape="2x64"):
    """A small model with weights large enough that its logits vary by several units."""
    torch.manual_seed(0)
    model = load_model(f"{family}-{shape}", tokenizer, 32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            is_norm = param.dim() == 1 and ("norm" in name.lower() or "ln_" in name)
            param.copy_(1 + 0.3 * torch.randn_like(param) if is_norm and name.endswith("weight")
                        else 0.15 * torch.randn_like(param))
    return model.eval()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("growth", list(SHAPES))
def test_grown_model_computes_the_same_function(family, growth, tokenizer):
    source = source_model(family, tokenizer)
    config = target_config_for(f"{family}-{SHAPES[growth]}", source.config, tokenizer)
    grown, report = grow_model(source, config, noise=0.05)
    ids = torch.randint(5, len(tokenizer), (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        scale = source(input_ids=ids).logits.abs().max().item()
    assert scale > 1.0  # a function worth preserving
    assert max_logit_difference(source, grown, len(tokenizer)) < 1e-4 * scale
    assert report.function_preserving and sum(p.numel() for p in grown.parameters()) > sum(
        p.numel() for p in source.parameters())


def test_noise_breaks_the_symmetry_of_clones_but_sums_to_zero(tokenizer):
    source = source_model("llama", tokenizer)
    config = target_config_for("llama-2x128", source.config, tokenizer)
    quiet, _ = grow_model(source, config, noise=0.0)
    noisy, _ = grow_model(source, config, noise=0.05)
    old = source.model.layers[0].mlp.down_proj.weight  # [64, 168]: its input neurons are split over 2 copies
    for model, equal in ((quiet, True), (noisy, False)):
        new = model.model.layers[0].mlp.down_proj.weight  # [128, 2 x 168 + 8 fresh]
        halves = new[:64, :168], new[:64, 168:336]
        assert torch.equal(*halves) is equal
        torch.testing.assert_close(halves[0] + halves[1], old, rtol=1e-5, atol=1e-6)
        assert torch.count_nonzero(new[:, 336:]) == 0  # fresh neurons add nothing


def test_growth_is_seeded_without_touching_the_global_random_state(tokenizer):
    source = source_model("llama", tokenizer)
    config = target_config_for("llama-4x192", source.config, tokenizer)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, _ = grow_model(source, config, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(456)
    second, _ = grow_model(source, config, seed=3)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)  # the same seed grows the same model whatever the global state


@pytest.mark.parametrize("family, auto", [("llama", AutoModelForCausalLM), ("roberta", AutoModelForMaskedLM)])
def test_grown_checkpoint_loads_in_plain_transformers(tmp_path, tokenizer, family, auto):
    source = source_model(family, tokenizer)
    source.save_pretrained(tmp_path / "source")
    tokenizer.save_pretrained(tmp_path / "source")
    report = grow_checkpoint(str(tmp_path / "source"), f"{family}-4x128", str(tmp_path / "grown"))
    loaded = auto.from_pretrained(tmp_path / "grown")
    assert max_logit_difference(source, loaded, len(tokenizer)) < 1e-4 * 10
    assert report.max_abs_logit_difference < 1e-3
    assert json.loads((tmp_path / "grown" / "grow.json").read_text())["width_factor"] == 2
    with pytest.raises(KinheritError, match="already exists"):
        grow_checkpoint(str(tmp_path / "source"), f"{family}-4x128", str(tmp_path / "grown"))


@pytest.mark.parametrize("target, message", [
    ("gpt2-2x128", "cannot grow a llama model into a gpt2 one"),
    ("llama-2x96", "not a whole multiple"),
    ("llama-1x128", "smaller than the source in"),
])
def test_refused_growth_says_why(tokenizer, target, message):
    source = source_model("llama", tokenizer)
    with pytest.raises(KinheritError, match=message):
        grow_model(source, target_config_for(target, source.config, tokenizer))


def test_inexact_width_is_an_explicit_fallback(tokenizer):
    source = source_model("llama", tokenizer, "2x128")  # 2 heads of 64
    config = target_config_for("llama-2x192", source.config, tokenizer)  # 1.5x the width, 3 heads of 64
    with pytest.raises(KinheritError, match="not a whole multiple.*pass --allow_inexact"):
        grow_model(source, config)
    grown, report = grow_model(source, config, allow_inexact=True)
    assert not report.function_preserving and "NOT preserved" in report.notes[-1]
    difference = max_logit_difference(source, grown, len(tokenizer))
    assert 0 < difference < float("inf")  # a model is produced; it only approximates the source


def test_head_size_must_stay(tokenizer):
    source = source_model("llama", tokenizer)
    config = target_config_for("llama-2x128", source.config, tokenizer)
    config.num_attention_heads = config.num_key_value_heads = 1
    with pytest.raises(KinheritError, match="growth keeps the head size"):
        grow_model(source, config)


def test_training_from_a_grown_model_is_finite_and_improves(tmp_path, tokenizer, tokenizer_dir):
    source = source_model("llama", tokenizer)
    source.save_pretrained(tmp_path / "source")
    tokenizer.save_pretrained(tmp_path / "source")
    grow_checkpoint(str(tmp_path / "source"), "llama-3x128", str(tmp_path / "grown"))
    args = KinheritTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=12, eval_steps=12, logging_steps=4,
                                     save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                                     eval_on_start=True, learning_rate=3e-3)
    data = DataArguments(tokenizer=str(tokenizer_dir), block_size=32, max_documents=3, validation_fraction=0.34,
                         cache_dir=str(tmp_path / "cache"))
    summary = pretrain(ModelArguments(model=str(tmp_path / "grown")), data, InheritanceArguments(), args)
    evals = [json.loads(line)["eval_loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
             if "eval_loss" in line]
    assert summary["final_val_loss"] == pytest.approx(evals[-1]) and evals[-1] < evals[0] - 0.1


def test_experiment_runs_grow_from_a_teacher(tmp_path, tokenizer_dir, capsys):
    config = {
        "name": "growth", "output_dir": str(tmp_path / "out"), "tokenizer": {"path": str(tokenizer_dir)},
        "corpora": {"wiki": {"source": "wikipedia", "max_documents": 3, "validation_fraction": 0.34}},
        "defaults": {"block_size": 32, "per_device_train_batch_size": 8, "eval_steps": 5, "logging_steps": 5,
                     "save_steps": 10,
                     "training_args": {"report_to": "none", "disable_tqdm": True}},
        "runs": [{"name": "teacher", "model": "llama-1x64", "max_steps": 20},
                 {"name": "scratch", "model": "llama-2x128", "max_steps": 10},
                 {"name": "grown", "model": "llama-2x128", "max_steps": 10, "grow": "teacher", "baseline": "scratch"},
                 {"name": "grown_ki", "model": "llama-2x128", "max_steps": 10, "grow": "teacher",
                  "teachers": ["teacher"], "baseline": "scratch", "inherit": {"inherit_steps": 5, "temperature": 1.0}}]}
    path = tmp_path / "growth.yaml"
    path.write_text(yaml.safe_dump(config))
    experiment = parse_experiment(config)
    assert experiment.order().index("teacher") < experiment.order().index("grown")
    report = run_experiment(path)
    assert "grown from teacher" in capsys.readouterr().out
    assert {"grown", "grown_ki"} <= set(report["compute_saved"])
    teacher_final = report["final_val_loss"]["teacher"]
    first = json.loads((tmp_path / "out" / "runs" / "grown" / "log.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and first["eval_loss"] == pytest.approx(teacher_final, abs=1e-3)  # starts as the teacher
