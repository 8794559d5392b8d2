"""The trainer stops on a non-finite loss with an error that names the step and the term."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainingArguments

from kinherit.errors import KinheritError
from kinherit.inheritance.teachers import TeacherSet, freeze
from kinherit.models import load_model
from kinherit.trainer import InheritanceArguments, InheritanceTrainer


def make_trainer(tmp_path, tokenizer, poison: str) -> tuple[InheritanceTrainer, dict]:
    torch.manual_seed(0)
    student = load_model("llama-1x64", tokenizer, 32)
    teacher = freeze(load_model("llama-1x64", tokenizer, 32))
    if poison != "none":
        with torch.no_grad():
            (student if poison == "student" else teacher).get_output_embeddings().weight[:, 0] = float("nan")
    args = TrainingArguments(str(tmp_path), report_to="none", use_cpu=True)
    trainer = InheritanceTrainer(model=student, args=args, teachers=TeacherSet([teacher]),
                                 inherit_args=InheritanceArguments(inherit_steps=100), vocab_size=len(tokenizer))
    ids = torch.randint(5, len(tokenizer), (2, 32))
    return trainer, {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


@pytest.mark.parametrize("poison, term", [("student", "self-learning"), ("teacher", "KI")])
def test_non_finite_loss_names_step_and_term(tmp_path, tokenizer, poison, term):
    trainer, batch = make_trainer(tmp_path, tokenizer, poison)
    (tmp_path / "checkpoint-200").mkdir()
    (tmp_path / "checkpoint-1000").mkdir()
    trainer.model.train()
    with pytest.raises(KinheritError, match=f"non-finite {term}.*at step 1;.*checkpoint-1000"):
        trainer.compute_loss(trainer.model, batch)


def test_finite_loss_passes(tmp_path, tokenizer):
    trainer, batch = make_trainer(tmp_path, tokenizer, poison="none")
    trainer.model.train()
    assert torch.isfinite(trainer.compute_loss(trainer.model, batch))
