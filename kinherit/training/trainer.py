"""InheritanceTrainer: a `transformers.Trainer` whose loss adds Knowledge Inheritance from frozen teachers.

The student's body runs once; logits are computed only where a loss is taken (masked positions for
masked LMs, labelled positions for causal LMs), chunk by chunk together with the cross-entropy and
the divergence to the teachers (see `kinherit.inheritance.divergences`). Losses are sums over valid
positions divided by the number of valid positions in the whole accumulated (and, across processes,
global) batch. With no teacher, or once the inheritance rate reaches zero, the step is plain
self-learning on the same fast path and no teacher runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from typing import Any

import torch
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length

from kinherit.core.errors import KinheritError
from kinherit.core.sealed import last_good_checkpoint, rotate_checkpoints, seal, unseal
from kinherit.inheritance.schedules import AdaptiveSchedule
from kinherit.inheritance.targets import TeacherSource
from kinherit.inheritance.teachers import TeacherSet
from kinherit.models.lm import IGNORE_INDEX, perplexity, process_part, target_labels, validation_loss
from kinherit.models.loading import model_kind
from kinherit.models.parts import backbone_and_head, forward_as_body
from kinherit.training.counters import InheritStats, RunCounters
from kinherit.training.cross_teachers import CrossTokenizerTeachers
from kinherit.training.flops import StepFlops
from kinherit.training.options import InheritanceArguments
from kinherit.training.refusals import check_training_setup
from kinherit.training.sampler import BlockOrder

logger = logging.getLogger(__name__)


class _MaskEpoch(TrainerCallback):
    """Tell the training collator which epoch begins, so masks depend on (seed, epoch, block) only."""

    def __init__(self, trainer: InheritanceTrainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.trainer.data_collator, "set_epoch"):
            # state.epoch is whole at an epoch's start and fractional when resuming inside one
            self.trainer.data_collator.set_epoch(math.floor(state.epoch + 1e-6))


class _Clock(TrainerCallback):
    """Wall-clock seconds spent training (evaluation time excluded), continued across resumes."""

    def __init__(self, trainer: InheritanceTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer.resumed_from is not None:
            self.trainer.restore_counters(self.trainer.resumed_from)
        self.trainer.counters.start_clock()
        self.trainer.replay_adaptive_schedule()


class _KeptCheckpoints(TrainerCallback):
    """Checkpoint at each of `--keep_checkpoints`' steps too (rotation spares them): fine-tuning along pre-training."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in getattr(args, "keep_checkpoints", ()):
            control.should_save = True


class InheritanceTrainer(Trainer):
    """A `Trainer` that trains the student on (1 - alpha_t) * L_self + alpha_t * L_KI.

    Extra keyword arguments: `teachers` (a `TeacherSet` or None for self-learning), `teacher_cache` (a
    `TeacherCache` read instead of running teachers; either is the step's teacher source), `inherit_args`
    (an `InheritanceArguments`), `eval_collator` (a collator with fixed masking for validation), and
    `vocab_size` (the tokenizer's size: padded logit rows beyond it are cut).
    """

    def __init__(self, *args: Any, teachers: TeacherSet | None = None, teacher_cache=None,
                 inherit_args: InheritanceArguments | None = None, eval_collator=None,
                 vocab_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Our loss divides by the number of valid positions of the whole accumulated batch itself.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        self.args.remove_unused_columns = False
        self.inherit_args = inherit_args or InheritanceArguments()
        self.teachers = teachers.to(self.args.device) if teachers is not None else None
        self.teacher_cache = teacher_cache
        check_training_setup(self, self.inherit_args, self.teachers)
        if self.teachers is not None and self.inherit_args.teacher_placement == "shard":
            self.teachers.shard()
        if teachers is not None and teacher_cache is not None:
            raise KinheritError("give teachers or a teacher cache, not both")
        self.source: TeacherSource | None = self.teachers if self.teachers is not None else teacher_cache
        self.schedule = self.inherit_args.schedule() if self.source is not None else None
        self.eval_collator = eval_collator or self.data_collator
        self.vocab_size = vocab_size or self.model.config.vocab_size
        # training only: the validation loss stays the plain CE, comparable between runs
        self.loss = self.inherit_args.loss(self.vocab_size, self.args.label_smoothing_factor)
        logger.info("loss kernels: %s (--loss_kernels %s)", self.loss.backend(self.args.device).name,
                    self.inherit_args.loss_kernels)
        self.kind = model_kind(self.model.config)
        self.flops = StepFlops(self.model, teachers.models if teachers is not None else [],
                               teachers.routes if teachers is not None else None)
        self.counters = RunCounters()
        self.resumed_from: str | None = None
        # a cache measured its teachers' validation loss when it was built
        self.teacher_val_losses: list[float] | None = (
            [teacher_cache.teacher_val_loss] if teacher_cache is not None else None)
        self.stats = InheritStats()
        self.add_callback(_Clock(self))
        self.add_callback(_MaskEpoch(self))
        self.add_callback(_KeptCheckpoints())

    def _get_train_sampler(self, train_dataset=None):
        """The stock shuffled order, held in 4 bytes per block instead of a Python list (see `BlockOrder`)."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if (self.args.train_sampling_strategy != "random" or not self.accelerator.use_seedable_sampler
                or not has_length(dataset)):
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else torch.random.initial_seed()
        return BlockOrder(len(dataset), seed)

    # ---------------------------------------------------------------- the loss
    def inheritance_rate(self) -> float:
        """alpha at the current optimizer step (0 without teachers)."""
        return float(self.schedule(self.state.global_step)) if self.schedule is not None else 0.0

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """Positions that carry a loss in the whole accumulated batch, summed over every process.

        Counted exactly as `compute_loss` selects them, so that N processes x B blocks train exactly
        as 1 process x N*B blocks (the Trainer's own count guesses the label shift from the model).
        """
        if not batch_samples:
            return None
        count = sum(int((target_labels(b["labels"], self.kind) != IGNORE_INDEX).sum()) for b in batch_samples)
        count = torch.tensor(count, device=device)
        if self.accelerator.num_processes > 1:
            count = self.accelerator.reduce(count, reduction="sum")
        return count

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        """One step's loss: student body -> alpha -> loss (head, teacher targets, CE + KI per chunk) -> checks."""
        student = self.accelerator.unwrap_model(model)
        body, head = backbone_and_head(student)
        with forward_as_body(student, body):  # called as a module: DDP's / FSDP's forward hooks run
            hidden = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
        hidden = hidden.reshape(-1, hidden.shape[-1])
        labels = target_labels(inputs["labels"], self.kind)
        alpha = self.inheritance_rate() if model.training else 0.0
        taught = self.source is not None and alpha > 0.0  # at alpha = 0 no teacher runs
        with self.loss.targets(self.source, inputs, labels) if taught else contextlib.nullcontext() as targets:
            sums = self.loss.sums(hidden, labels, alpha, targets, head)
        # the loss is a sum: divide by the positions of the whole accumulated (global) batch (at least 1: a batch
        # without any taught position adds a zero loss, not 0 / 0)
        loss = sums.total / (max(num_items_in_batch, 1) if num_items_in_batch is not None else max(sums.positions, 1))
        if num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # the denominator is global; DDP averages over processes
        if model.training:
            if not self._check_finite(sums.self_loss, sums.ki_loss):
                self.counters.skipped_batches += 1
                loss = self._zero_loss(student)
            else:
                self.stats.add(sums, taught)
                self.counters.train_flops += self.flops.step(inputs["input_ids"], sums.positions, taught,
                                                             inputs.get("domain_id"), self.accelerator.num_processes)
        return (loss, {"loss": loss}) if return_outputs else loss

    def _zero_loss(self, student: torch.nn.Module) -> torch.Tensor:
        """The loss of a skipped batch: zero, adding nothing to any gradient.

        On one process it has no graph (gradients untouched: AdamW leaves parameters without one
        alone). With several, backward must still reach every parameter so that DDP synchronises
        as for any other batch: a sum over empty slices of the parameters, exactly zero even if a
        parameter is not finite, whose gradients are zeros.
        """
        if self.accelerator.num_processes == 1:
            return torch.zeros((), device=self.args.device, requires_grad=True)
        return sum(p.reshape(-1)[:0].sum() for p in student.parameters() if p.requires_grad)

    def _check_finite(self, self_sum: float, ki_sum: float) -> bool:
        """True if both loss terms are finite on every process; else stop with an error naming the step and
        the term (or, with `--nonfinite skip`, return False so the batch is skipped on every process)."""
        flags = [float(not math.isfinite(self_sum)), float(not math.isfinite(ki_sum))]
        several = self.accelerator.num_processes > 1
        if several:  # every process takes the same decision, or DDP would hang
            flags = self.accelerator.reduce(torch.tensor(flags, device=self.args.device), reduction="sum").tolist()
        bad = [name for name, flag in zip(("self-learning (cross-entropy)", "KI (divergence)"), flags, strict=True)
               if flag > 0]
        if not bad:
            return True
        if several:
            bad[-1] += " (on at least one process)"
        if self.inherit_args.nonfinite == "skip":
            return False
        try:
            saved = last_good_checkpoint(self.args.output_dir)
            last = f"the last good checkpoint is {saved}" if saved else "no checkpoint was saved yet"
        except KinheritError as error:
            last = f"no checkpoint could be verified ({error})"
        raise KinheritError(
            f"non-finite {' and '.join(bad)} loss at step {self.state.global_step + 1}; training stopped and "
            f"{last}. Lower the learning rate, set --max_grad_norm, check the teacher and the data, or pass "
            "--nonfinite skip to skip such batches.")

    # ---------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint, sealed with a manifest once complete; older ones are rotated out only then.

        A checkpoint cut short (killed while saving) has no manifest and is never resumed from, and the
        checkpoints it would have replaced are still there.
        """
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        limit = self.args.save_total_limit
        if self.args.should_save and os.path.isdir(folder):
            unseal(folder)  # a stale checkpoint of the same step is about to be overwritten
        self.args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every process has written its part (its RNG state)
        if isinstance(self.source, CrossTokenizerTeachers):  # summed over processes: every process takes part
            self.counters.cross_tokenizer = self.source.totals()
        if self.args.should_save:
            self.counters.save(folder)
            seal(folder)
            rotate_checkpoints(run_dir, limit, self.state.global_step, protect=self.state.best_model_checkpoint,
                               kept_steps=getattr(self.args, "keep_checkpoints", ()))

    def restore_counters(self, checkpoint: str) -> None:
        """The run's counters (and a cross-tokenizer teacher's) as they were when `checkpoint` was saved."""
        self.counters.restore(checkpoint)
        if isinstance(self.source, CrossTokenizerTeachers) and self.counters.cross_tokenizer is not None:
            self.source.restore(self.counters.cross_tokenizer, main=self.is_world_process_zero())

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """`Trainer.train`, remembering the checkpoint it resumes from (its counters are restored from it)."""
        self.resumed_from = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # ---------------------------------------------------------------- logging
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the inheritance statistics, cumulative FLOPs and training time to every log record."""
        stats = self.stats
        if "loss" in logs and self.accelerator.num_processes > 1:  # every process logs together
            stats = InheritStats.of(self.accelerator.reduce(stats.as_tensor(self.args.device), reduction="sum"))
        if "loss" in logs and stats.positions > 0:
            logs.update(stats.records(self.inheritance_rate() if self.schedule is not None else None))
            self.stats = InheritStats()
        if self.counters.skipped_batches:
            logs["inherit/skipped_batches"] = self.counters.skipped_batches
        logs.setdefault("train_flops", self.counters.train_flops)
        logs.setdefault("train_seconds", self.counters.train_seconds())
        super().log(logs, start_time)

    # ---------------------------------------------------------------- evaluation
    def validation_loss(self, model: PreTrainedModel, dataset) -> tuple[float, int]:
        """Mean self-supervised loss per valid position over `dataset` (fixed masking), and the count.

        With several processes each evaluates its contiguous part, all in the same number of forward passes (a
        sharded model gathers its weights in each), and the sums are added up.
        """
        processes = self.accelerator.num_processes
        even = None
        if processes > 1:
            dataset, even = process_part(dataset, processes, self.accelerator.process_index,
                                         self.args.per_device_eval_batch_size)
        loss, count = validation_loss(model, dataset, self.eval_collator, self.args.per_device_eval_batch_size,
                                      self.inherit_args.chunk_size, self.vocab_size, self.kind,
                                      self.autocast_smart_context_manager, even)
        if processes == 1:
            return loss, count
        sums = torch.tensor([loss * count if count else 0.0, float(count)], dtype=torch.float64,
                            device=self.args.device)
        total, count = self.accelerator.reduce(sums, reduction="sum").tolist()
        return (total / count if count else math.nan), int(count)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Token-weighted validation loss and perplexity of the student (self-supervised loss only)."""
        started = time.perf_counter()
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        loss, count = self.validation_loss(self.model, dataset)
        if isinstance(self.schedule, AdaptiveSchedule):
            if self.schedule.teacher_loss is None:
                self.schedule.teacher_loss = min(self.teacher_losses(dataset))
            self.schedule.observe(self.state.global_step, loss)
        self.counters.eval_seconds += time.perf_counter() - started
        metrics = {f"{metric_key_prefix}_loss": loss, f"{metric_key_prefix}_ppl": perplexity(loss),
                   f"{metric_key_prefix}_positions": count}
        if self.schedule is not None:
            metrics[f"{metric_key_prefix}_alpha"] = self.inheritance_rate()
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def teacher_losses(self, dataset) -> list[float]:
        """Each teacher's validation loss on `dataset` (computed once)."""
        if self.teacher_val_losses is None:
            self.teacher_val_losses = [self.validation_loss(m, dataset)[0] for m in self.teachers.models]
        return self.teacher_val_losses

    def replay_adaptive_schedule(self) -> None:
        """On resume, feed the adaptive schedule the evaluations already in the log."""
        if isinstance(self.schedule, AdaptiveSchedule) and self.eval_dataset is not None:
            self.schedule.teacher_loss = min(self.teacher_losses(self.eval_dataset))
            for record in self.state.log_history:
                if "eval_loss" in record:
                    self.schedule.observe(record["step"], record["eval_loss"])
