"""End to end on CPU: teachers pre-trained in the fixture, students trained with and without KI."""

from __future__ import annotations

import json

import pytest
import torch

from kinherit.commands.pretrain import pretrain
from kinherit.core.errors import KinheritError
from kinherit.training.options import DataArguments, InheritanceArguments, KinheritTrainingArguments, ModelArguments

STEPS = 60


def train(tmp, name, tokenizer_dir, model, steps, teachers=(), corpus=("wikipedia",), data_options=None, **inherit):
    args = KinheritTrainingArguments(output_dir=str(tmp / name), max_steps=steps, eval_steps=steps // 2,
                                     logging_steps=10, save_strategy="no", report_to="none", disable_tqdm=True,
                                     per_device_train_batch_size=16, learning_rate=2e-3, seed=0, use_cpu=True)
    data = DataArguments(corpus=list(corpus), tokenizer=str(tokenizer_dir), block_size=32, max_documents=30,
                         validation_fraction=0.1, cache_dir=str(tmp / "cache"), **(data_options or {}))
    return pretrain(ModelArguments(model=model), data, InheritanceArguments(teacher=list(teachers), **inherit), args)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def teacher(workdir, tokenizer_dir):
    summary = train(workdir, "teacher", tokenizer_dir, "llama-2x64", 300)
    return workdir / "teacher", summary


@pytest.fixture(scope="module")
def scratch(workdir, tokenizer_dir):
    return train(workdir, "scratch", tokenizer_dir, "llama-3x128", STEPS)


def test_ki_student_beats_scratch_at_equal_steps(workdir, tokenizer_dir, teacher, scratch):
    ki = train(workdir, "ki", tokenizer_dir, "llama-3x128", STEPS, teachers=[str(teacher[0])], inherit_steps=40,
               temperature=1.0)
    assert scratch["final_val_loss"] < 6.24 * 0.95  # far below ln(512) = 6.24: the baseline learns
    assert ki["final_val_loss"] < scratch["final_val_loss"] - 0.05
    records = [json.loads(line) for line in (workdir / "ki" / "log.jsonl").read_text().splitlines()]
    alphas = [(r["step"], r["inherit/alpha"]) for r in records if "inherit/alpha" in r]
    assert alphas and all(a == pytest.approx(max(0.0, 1 - s / 40)) for s, a in alphas)
    assert any(a == 0.0 for _, a in alphas) and any(0 < a < 1 for _, a in alphas)
    assert all("inherit/ki_loss" in r and "inherit/agreement" in r for r in records if r.get("inherit/alpha", 0) > 0)
    # once the teacher has stopped for a whole logging window, no KI terms are reported for it
    late = [r for r in records if "loss" in r and r["step"] >= 50]
    assert late and not any("inherit/ki_loss" in r for r in late)
    # only the student is saved, and it loads in plain transformers
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(workdir / "ki")
    assert student.config.num_hidden_layers == 3


def test_teacher_of_other_depth_and_width_and_two_mixed_teachers(workdir, tokenizer_dir, teacher):
    other = train(workdir, "teacher2", tokenizer_dir, "llama-1x128", 100)
    assert other["final_val_loss"] < 6.0
    mixed = train(workdir, "mixed", tokenizer_dir, "llama-3x128", 20, teachers=[str(teacher[0]),
                  str(workdir / "teacher2")], teacher_weights=[3.0, 1.0], inherit_steps=20)
    assert torch.isfinite(torch.tensor(mixed["final_val_loss"]))


def test_domain_routing_with_two_domains(workdir, tokenizer_dir, teacher):
    corpus = ("wiki=wikipedia", "code=bible")
    routed = train(workdir, "routed", tokenizer_dir, "llama-2x128", 20, teachers=[f"wiki={teacher[0]}",
                   f"code={teacher[0]}"], corpus=corpus, inherit_steps=20,
                   data_options={"corpus_weights": [3.0, 1.0], "train_fraction": 0.5})
    assert torch.isfinite(torch.tensor(routed["final_val_loss"]))
    recorded = json.loads((workdir / "routed" / "run.json").read_text())["data"]
    assert recorded["corpus_weights"] == [3.0, 1.0] and recorded["train_fraction"] == 0.5
    with pytest.raises(KinheritError, match=r"\['code'\] have no routed teacher"):
        train(workdir, "routed-missing", tokenizer_dir, "llama-2x128", 4, teachers=[f"wiki={teacher[0]}"],
              corpus=corpus, inherit_steps=4)


@pytest.mark.parametrize("method", ["map", "uld"])
def test_teacher_with_another_tokenizer_teaches_and_says_how_much_it_reached(workdir, tokenizer_dir, teacher,
                                                                              wiki_corpus, method):
    from kinherit.data import train_tokenizer

    other = workdir / "other-tok"
    if not other.exists():
        train_tokenizer(wiki_corpus.train, 600, other)
    summary = train(workdir, f"cross-{method}", other, "llama-2x128", 10, teachers=[str(teacher[0])], inherit_steps=20,
                    cross_tokenizer=method)
    assert torch.isfinite(torch.tensor(summary["final_val_loss"]))
    report = json.loads((workdir / f"cross-{method}" / "run.json").read_text())["cross_tokenizer"]
    assert report["method"] == method
    assert 0.8 < report["aligned_share"] <= 1.0  # two BPEs of 512 and 600 tokens on the same text end mostly together
    assert report["vocabulary"][0]["mapped_share"] == 1.0 and report["vocabulary"][0]["exact_share"] > 0.9
    if method == "map":
        assert 0.9 < report["mapped_mass_share"] <= 1.0 + 1e-6
    records = [json.loads(line) for line in (workdir / f"cross-{method}" / "log.jsonl").read_text().splitlines()]
    assert any("inherit/ki_loss" in r for r in records)


def test_a_masked_student_refuses_a_teacher_with_another_tokenizer(workdir, tokenizer_dir, wiki_corpus):
    from kinherit.data import train_tokenizer

    other = workdir / "other-tok-masked"
    train_tokenizer(wiki_corpus.train, 600, other)
    masked_teacher = train(workdir, "masked-teacher", tokenizer_dir, "roberta-2x64", 2)
    assert masked_teacher["steps"] == 2
    with pytest.raises(KinheritError, match="the student is a masked LM: teachers with another tokenizer teach causal"):
        train(workdir, "masked-cross", other, "roberta-2x64", 2, teachers=[str(workdir / "masked-teacher")],
              inherit_steps=2)


def test_teacher_of_the_wrong_kind_is_an_error(workdir, tokenizer_dir, teacher):
    with pytest.raises(KinheritError, match="causal LM but the student is a masked LM"):
        train(workdir, "wrong-kind", tokenizer_dir, "roberta-2x64", 2, teachers=[str(teacher[0])], inherit_steps=2)


def test_missing_teacher_path_is_an_error(workdir, tokenizer_dir):
    with pytest.raises(KinheritError, match="not a model checkpoint folder"):
        train(workdir, "missing", tokenizer_dir, "llama-2x128", 2, teachers=[str(workdir / "nope")], inherit_steps=2)
