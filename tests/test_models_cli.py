"""Presets (paper sizes), checkpoints that plain transformers loads, and the command line."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForMaskedLM

from kinherit.cli import main
from kinherit.core.errors import KinheritError
from kinherit.models.loading import load_model, model_kind
from kinherit.models.presets import preset_config
from kinherit.training.options import merge_repeated


@pytest.mark.parametrize("name, millions", [("roberta-medium", 73.5), ("roberta-base", 124.7),
                                            ("roberta-base-plus", 210.6), ("roberta-large", 355.4),
                                            ("roberta-h4", 68.0), ("roberta-d384", 55.2)])
def test_paper_presets_have_the_paper_sizes(name, millions):
    with torch.device("meta"):
        model = AutoModelForMaskedLM.from_config(preset_config(name, 50265, 512))
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.05)


def test_small_presets_of_each_family(tokenizer):
    for family, kind in (("roberta", "masked"), ("bert", "masked"), ("gpt2", "causal"), ("llama", "causal")):
        model = load_model(f"{family}-2x64", tokenizer, 32)
        assert model_kind(model.config) == kind and model.config.vocab_size == len(tokenizer)
    with pytest.raises(KinheritError, match="unknown model preset"):
        load_model("gpt5-huge", tokenizer, 32)


def test_merge_repeated_flags():
    assert merge_repeated(["--teacher", "a", "--x", "1", "--teacher=b", "--corpus", "c", "d"]) == [
        "--x", "1", "--teacher", "a", "b", "--corpus", "c", "d"]


def test_cli_pretrain_writes_a_checkpoint_pipelines_load(tmp_path, tokenizer_dir):
    from transformers import pipeline

    common = ["--tokenizer", str(tokenizer_dir), "--block_size", "32", "--max_documents", "20",
              "--validation_fraction", "0.1", "--max_steps", "20", "--eval_steps", "10", "--report_to", "tensorboard",
              "--disable_tqdm", "true", "--cache_dir", str(tmp_path / "cache"), "--use_cpu", "true"]
    assert main(["pretrain", "--model", "roberta-2x64", "--output_dir", str(tmp_path / "mlm"), *common]) == 0
    fill = pipeline("fill-mask", model=str(tmp_path / "mlm"))
    assert len(fill("The history of the <mask> is long.")) == 5
    assert list((tmp_path / "mlm").glob("runs/*/events.out.tfevents.*"))  # TensorBoard logs
    assert (tmp_path / "mlm" / "model.safetensors").exists() and (tmp_path / "mlm" / "log.jsonl").exists()
    assert main(["pretrain", "--model", "gpt2-2x64", "--output_dir", str(tmp_path / "clm"), *common]) == 0
    generate = pipeline("text-generation", model=str(tmp_path / "clm"))
    assert generate("The", max_new_tokens=5, do_sample=False)[0]["generated_text"].startswith("The")
    # saved and reloaded models give identical outputs
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "clm")
    model.save_pretrained(tmp_path / "copy")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "copy")
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(model(ids).logits, again(ids).logits)


def test_cli_pretrain_without_validation_split_and_a_used_output_dir(tmp_path, tokenizer_dir, capsys):
    argv = ["pretrain", "--model", "gpt2-2x64", "--output_dir", str(tmp_path / "run"),
            "--tokenizer", str(tokenizer_dir), "--save_steps", "2",
            "--block_size", "32", "--max_documents", "10", "--validation_fraction", "0", "--eval_strategy", "no",
            "--max_steps", "3", "--report_to", "none", "--disable_tqdm", "true", "--cache_dir", str(tmp_path / "cache"),
            "--use_cpu", "true"]
    assert main(argv) == 0
    assert "no validation split after 3 steps" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "run.json").read_text())["final_val_loss"] is None
    old = sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*"))
    assert old
    # a fresh run into a folder holding another run's checkpoints is refused, or clears them when told to
    assert main(argv) == 2
    assert f"holds an earlier run ({', '.join(old)}" in capsys.readouterr().err
    assert main([*argv[:-2], "--save_strategy", "no", "--overwrite_output_dir", "true", "--use_cpu", "true"]) == 0
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_pinned_memory_only_for_a_gpu(tmp_path):
    from kinherit.training.options import KinheritTrainingArguments

    args = KinheritTrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    assert args.dataloader_pin_memory is False


def test_cli_errors_are_one_line(capsys, tmp_path):
    assert main(["pretrain", "--corpus", "atlantis", "--output_dir", str(tmp_path)]) == 2
    assert "kinherit: error: unknown corpus 'atlantis'" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2


@pytest.mark.parametrize("argv, message", [
    (["--no_such_flag", "3"], r"unknown option\(s\) \['--no_such_flag', '3'\]"),
    (["--learning_rate", "fast"], "invalid float value: 'fast'"),
    (["--block_size", "1"], "--block_size must be at least 2"),
    (["--validation_fraction", "1"], r"--validation_fraction must be in \[0, 1\)"),
    (["--temperature", "0"], "temperature must be a positive number"),
    (["--teacher", "a", "--teacher", "b", "--teacher_weights", "1", "--inherit_steps", "5"],
     "1 --teacher_weights for 2 --teacher"),
    (["--teacher", "a", "--inherit_schedule", "linear"], "needs --inherit_steps"),
    (["--nonfinite", "ignore"], "--nonfinite 'ignore' is not one of stop, skip"),
    (["--warmup_steps", "-1"], "--warmup_steps must be >= 0"),
])
def test_command_line_errors_name_the_option(argv, message):
    from kinherit.training.options import parse_pretrain_args

    with pytest.raises(KinheritError, match=message):
        parse_pretrain_args(argv)


def test_pretrain_arguments_from_one_json_file(tmp_path):
    from kinherit.training.options import parse_pretrain_args

    path = tmp_path / "args.json"
    path.write_text(json.dumps({"model": "llama-2x64", "corpus": ["wikipedia"], "temperature": 0.5,
                                "teacher": ["runs/t"], "inherit_steps": 40, "max_steps": 80,
                                "output_dir": str(tmp_path / "run")}))
    model, data, inherit, training = parse_pretrain_args([str(path)])
    assert (model.model, data.corpus, inherit.temperature, inherit.teacher, training.max_steps) == (
        "llama-2x64", ["wikipedia"], 0.5, ["runs/t"], 80)
    path.write_text(json.dumps({"model": "llama-2x64", "temprature": 0.5}))
    with pytest.raises(KinheritError, match=r"args.json: unknown option\(s\) \['--temprature'"):
        parse_pretrain_args([str(path)])
    path.write_text(json.dumps({"teacher": ["runs/t"], "temperature": -1}))
    with pytest.raises(KinheritError, match="args.json: .*temperature"):
        parse_pretrain_args([str(path)])
    with pytest.raises(KinheritError, match="cannot read the arguments file"):
        parse_pretrain_args([str(tmp_path / "missing.json")])


def test_cli_experiment_passes_finetune_false_to_the_runner(monkeypatch):
    import kinherit.experiment.runner

    calls = []
    monkeypatch.setattr(kinherit.experiment.runner, "run_experiment", lambda *args, **kwargs: calls.append(kwargs))
    assert main(["experiment", "x.yaml", "--finetune", "false"]) == 0
    assert main(["experiment", "x.yaml", "--only", "a"]) == 0
    assert calls == [{"output_dir": None, "only": None, "finetune": False},
                     {"output_dir": None, "only": ["a"], "finetune": True}]
