"""The trainer's KI step: equal to the plain full-logits computation, and stopped on a non-finite loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import TrainingArguments

from kinherit.core.errors import KinheritError
from kinherit.core.sealed import seal
from kinherit.inheritance.teachers import TeacherSet, freeze
from kinherit.models.loading import load_model
from kinherit.training.options import InheritanceArguments
from kinherit.training.trainer import InheritanceTrainer


def make_trainer(tmp_path, tokenizer, poison: str, nonfinite: str = "stop") -> tuple[InheritanceTrainer, dict]:
    torch.manual_seed(0)
    student = load_model("llama-1x64", tokenizer, 32)
    teacher = freeze(load_model("llama-1x64", tokenizer, 32))
    if poison != "none":
        with torch.no_grad():
            (student if poison == "student" else teacher).get_output_embeddings().weight[:, 0] = float("nan")
    args = TrainingArguments(str(tmp_path), report_to="none", use_cpu=True)
    trainer = InheritanceTrainer(model=student, args=args, teachers=TeacherSet([teacher]),
                                 inherit_args=InheritanceArguments(inherit_steps=100, nonfinite=nonfinite),
                                 vocab_size=len(tokenizer))
    ids = torch.randint(5, len(tokenizer), (2, 32))
    return trainer, {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


@pytest.mark.parametrize("poison, term", [("student", "self-learning"), ("teacher", "KI")])
def test_non_finite_loss_names_step_and_term(tmp_path, tokenizer, poison, term):
    trainer, batch = make_trainer(tmp_path, tokenizer, poison)
    for step in (200, 1000):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"weights")
    seal(tmp_path / "checkpoint-200")  # checkpoint-1000 has no manifest: its writing was cut short
    trainer.model.train()
    with pytest.raises(KinheritError, match=f"non-finite {term}.*at step 1;.*good checkpoint is .*checkpoint-200"):
        trainer.compute_loss(trainer.model, batch)


@pytest.mark.parametrize("poison", ["student", "teacher"])
def test_non_finite_batches_can_be_skipped_and_are_counted(tmp_path, tokenizer, poison):
    trainer, batch = make_trainer(tmp_path, tokenizer, poison, nonfinite="skip")
    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    assert loss.item() == 0.0 and trainer.counters.skipped_batches == 1
    assert all(p.grad is None for p in trainer.model.parameters())  # AdamW leaves such parameters as they are
    trainer.log({"loss": 0.0})
    assert trainer.state.log_history[-1]["inherit/skipped_batches"] == 1


def test_unknown_nonfinite_policy_is_an_error():
    with pytest.raises(KinheritError, match="--nonfinite 'ignore' is not one of stop, skip"):
        InheritanceArguments(nonfinite="ignore")


@pytest.mark.parametrize("option, message", [
    ({"average_tokens_across_devices": False}, "--average_tokens_across_devices false"),
    ({"metric_for_best_model": "accuracy"}, "--metric_for_best_model accuracy"),
    ({"dataloader_num_workers": 2, "dataloader_persistent_workers": True}, "--dataloader_persistent_workers"),
])
def test_training_options_the_step_replaces_are_refused(tmp_path, tokenizer, option, message):
    student = load_model("roberta-1x64" if "dataloader_num_workers" in option else "llama-1x64", tokenizer, 32)
    args = TrainingArguments(str(tmp_path), report_to="none", use_cpu=True, **option)
    with pytest.raises(KinheritError, match=f"not supported by the KI training step: {message}"):
        InheritanceTrainer(model=student, args=args, vocab_size=len(tokenizer))


def test_finite_loss_passes(tmp_path, tokenizer):
    trainer, batch = make_trainer(tmp_path, tokenizer, poison="none")
    trainer.model.train()
    assert torch.isfinite(trainer.compute_loss(trainer.model, batch))


def plain_loss(student, teacher, batch, kind: str, alpha: float, tau: float, smoothing: float = 0.0) -> torch.Tensor:
    """The loss written the plain way: full logits from the standard forward, float64 formulas."""
    s = student(input_ids=batch["input_ids"]).logits
    with torch.no_grad():
        t = teacher(input_ids=batch["input_ids"]).logits
    y = batch["labels"]
    if kind == "causal":
        s, t, y = s[:, :-1], t[:, :-1], y[:, 1:]
    valid = y != -100
    s, t, y = s[valid].double(), t[valid].double(), y[valid]
    p = torch.softmax(t / tau, -1)
    kl = (p * (p.log() - torch.log_softmax(s / tau, -1))).sum(-1).mean()
    return (1 - alpha) * F.cross_entropy(s, y, label_smoothing=smoothing) + alpha * tau**2 * kl


@pytest.mark.parametrize("preset", ["llama-1x64", "roberta-1x64"])
@pytest.mark.parametrize("kernels, smoothing", [("eager", 0.0), ("auto", 0.0), ("auto", 0.2)])
def test_fast_step_equals_plain_full_logits_step(tmp_path, tokenizer, preset, kernels, smoothing):
    torch.manual_seed(0)
    student = load_model(preset, tokenizer, 32)
    teacher = freeze(load_model(preset, tokenizer, 32))
    kind = "causal" if preset.startswith("llama") else "masked"
    ids = torch.randint(5, len(tokenizer), (3, 32), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    if kind == "masked":
        keep = torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.25
        labels[~keep] = -100
        ids = torch.where(keep, torch.full_like(ids, tokenizer.mask_token_id), ids)
    else:
        labels[0, :5] = -100
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    inherit = InheritanceArguments(inherit_schedule="constant", inherit_value=0.3, temperature=2.0, chunk_size=16,
                                   loss_kernels=kernels)
    args = TrainingArguments(str(tmp_path), report_to="none", use_cpu=True, label_smoothing_factor=smoothing)
    trainer = InheritanceTrainer(model=student, args=args, teachers=TeacherSet([teacher]), inherit_args=inherit,
                                 vocab_size=len(tokenizer))
    student.train()
    torch.manual_seed(3)  # the same dropout masks in both computations
    fast = trainer.compute_loss(student, batch)
    fast.backward()
    fast_grads = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    torch.manual_seed(3)
    plain = plain_loss(student, teacher, batch, kind, alpha=0.3, tau=2.0, smoothing=smoothing)
    plain.backward()
    assert fast.item() == pytest.approx(plain.item(), rel=1e-5)
    for fast_grad, param in zip(fast_grads, student.parameters(), strict=True):
        assert torch.allclose(fast_grad, param.grad, rtol=1e-4, atol=1e-6)
