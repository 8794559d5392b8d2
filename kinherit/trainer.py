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
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from kinherit.errors import KinheritError
from kinherit.evaluation.flops import FlopModel
from kinherit.inheritance.divergences import IGNORE_INDEX, chunked_loss, loss_chunk, validate_options
from kinherit.inheritance.schedules import SCHEDULES, AdaptiveSchedule, make_schedule
from kinherit.inheritance.teachers import TeacherSet
from kinherit.inheritance.topk import TopKTarget
from kinherit.models import backbone_and_head, forward_as_body, model_kind
from kinherit.sealed import last_good_checkpoint, rotate_checkpoints, seal, unseal

NONFINITE = ("stop", "skip")
PLACEMENTS = ("replicate", "shard")


@dataclass
class InheritanceArguments:
    """Knowledge Inheritance options (they sit beside `TrainingArguments` on the command line)."""

    teacher: list[str] = field(default_factory=list, metadata={
        "help": "Teacher checkpoint folder; repeat for several. DOMAIN=PATH routes each example to the teacher "
                "of its corpus's domain."})
    teacher_weights: list[float] = field(default_factory=list, metadata={
        "help": "Mixture weight per teacher (normalised to sum to 1); default equal."})
    temperature: float = field(default=2.0, metadata={"help": "Softmax temperature tau of the KI term."})
    divergence: str = field(default="forward_kl", metadata={"help": "forward_kl, reverse_kl, jsd or tvd."})
    jsd_beta: float = field(default=0.5, metadata={"help": "Mixture weight beta of the jsd divergence."})
    inherit_schedule: str = field(default="linear", metadata={"help": f"One of {', '.join(SCHEDULES)}."})
    inherit_steps: int | None = field(default=None, metadata={
        "help": "Step at which the inheritance rate reaches 0 (linear, step, cosine; optional elsewhere)."})
    inherit_start: float = field(default=1.0, metadata={"help": "Inheritance rate at step 0 (alpha_0)."})
    inherit_value: float = field(default=0.5, metadata={"help": "Rate of the constant schedule."})
    inherit_time_constant: float | None = field(default=None, metadata={
        "help": "Time constant (steps) of the exponential schedule."})
    inherit_margin: float = field(default=0.0, metadata={
        "help": "Adaptive schedule: stop once the student's validation loss is this much below the teacher's."})
    chunk_size: int = field(default=1024, metadata={"help": "Positions per chunk of the fused head and loss."})
    fused_loss: bool = field(default=True, metadata={
        "help": "Closed-form gradient of CE + forward KL per chunk (False: autograd, slower, same result)."})
    compile_loss: bool = field(default=True, metadata={
        "help": "torch.compile the fused forward-KL kernel (falls back to eager, with a warning, if it fails)."})
    teacher_dtype: str = field(default="auto", metadata={
        "help": "auto (bfloat16 on a CUDA device that supports it, else float32), float32, bfloat16, float16."})
    teacher_cache: str | None = field(default=None, metadata={
        "help": "A folder written by `kinherit cache-teacher`: read the teachers' top-K targets from it instead of "
                "running teachers (forward KL only; replaces --teacher)."})
    teacher_placement: str = field(default="replicate", metadata={
        "help": "replicate: each process holds whole teachers (small teachers, the KI case); shard: teachers are "
                "sharded over the processes with FSDP2 and gathered layer by layer (teachers too large to copy)."})
    nonfinite: str = field(default="stop", metadata={
        "help": "On a NaN or infinite loss: stop (error naming the step, the term and the last good checkpoint) "
                "or skip (that batch adds no gradient; counted as inherit/skipped_batches in the log)."})

    def __post_init__(self) -> None:
        validate_options(self.temperature, self.divergence, self.jsd_beta)
        if self.teacher_placement not in PLACEMENTS:
            raise KinheritError(f"--teacher_placement {self.teacher_placement!r} is not one of {', '.join(PLACEMENTS)}")
        if self.nonfinite not in NONFINITE:
            raise KinheritError(f"--nonfinite {self.nonfinite!r} is not one of {', '.join(NONFINITE)}")
        if self.chunk_size < 1:
            raise KinheritError(f"--chunk_size must be positive, got {self.chunk_size}")
        if self.teacher_weights and len(self.teacher_weights) != len(self.teacher):
            raise KinheritError(f"{len(self.teacher_weights)} --teacher_weights for {len(self.teacher)} --teacher; "
                                "give one weight per teacher")
        if self.teacher and self.teacher_cache:
            raise KinheritError("--teacher and --teacher_cache exclude each other: the cache replaces the teachers")
        if self.teacher_cache and self.divergence != "forward_kl":
            raise KinheritError(f"--teacher_cache supports only --divergence forward_kl, not {self.divergence}")
        if self.teacher or self.teacher_cache:
            self.schedule()  # its parameters are checked before any data or model is loaded

    def schedule(self):
        """The configured inheritance-rate schedule."""
        return make_schedule(self.inherit_schedule, self.inherit_steps, start=self.inherit_start,
                             value=self.inherit_value, time_constant=self.inherit_time_constant,
                             margin=self.inherit_margin)


def target_labels(labels: torch.Tensor, kind: str) -> torch.Tensor:
    """The label each flattened position predicts: itself (masked) or the next token (causal)."""
    if kind == "masked":
        return labels.reshape(-1)
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    return shifted.reshape(-1)


@torch.inference_mode()
def validation_loss(model: PreTrainedModel, dataset, collator, batch_size: int, chunk_size: int, vocab: int,
                    kind: str, autocast=contextlib.nullcontext) -> tuple[float, int]:
    """Mean cross-entropy per valid position of `model` over `dataset`, and the number of positions.

    Logits are made chunk by chunk at the valid positions only; the model is left in the mode it had.
    """
    was_training = model.training
    model.eval()
    body, head = backbone_and_head(model)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collator)
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for batch in loader:
        input_ids = batch["input_ids"].to(device)
        labels = target_labels(batch["labels"].to(device), kind)
        positions = (labels != IGNORE_INDEX).nonzero().squeeze(-1)
        with autocast():
            hidden = body(input_ids=input_ids)[0]
            hidden = hidden.reshape(-1, hidden.shape[-1])
        for chunk in positions.split(chunk_size):
            logits = head(hidden[chunk])[:, :vocab].float()
            total += torch.nn.functional.cross_entropy(logits, labels[chunk], reduction="sum").item()
        count += positions.numel()
    model.train(was_training)
    return (total / count if count else math.nan), count


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
        for record in reversed(state.log_history):
            if "train_seconds" in record:
                self.trainer.train_seconds_offset = record["train_seconds"]
                self.trainer.train_flops = record.get("train_flops", 0.0)
                self.trainer.skipped_batches = int(record.get("inherit/skipped_batches", 0))
                break
        self.trainer.clock_start = time.perf_counter()
        self.trainer.eval_seconds = 0.0
        self.trainer.replay_adaptive_schedule()


class InheritanceTrainer(Trainer):
    """A `Trainer` that trains the student on (1 - alpha_t) * L_self + alpha_t * L_KI.

    Extra keyword arguments: `teachers` (a `TeacherSet` or None for self-learning), `teacher_cache` (a
    `TeacherCache` read instead of running teachers), `inherit_args`
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
        self._check_parallelism()
        if self.teachers is not None and self.inherit_args.teacher_placement == "shard":
            self.teachers.shard()
        if teachers is not None and teacher_cache is not None:
            raise KinheritError("give teachers or a teacher cache, not both")
        inherits = teachers is not None or teacher_cache is not None
        self.schedule = self.inherit_args.schedule() if inherits else None
        self.eval_collator = eval_collator or self.data_collator
        self.vocab_size = vocab_size or self.model.config.vocab_size
        self.kind = model_kind(self.model.config)
        self.student_flops = FlopModel.of(self.model)
        self.teacher_flops = [FlopModel.of(m) for m in teachers.models] if teachers is not None else []
        self.train_flops = 0.0
        self.skipped_batches = 0
        self.train_seconds_offset = 0.0
        self.clock_start: float | None = None
        self.eval_seconds = 0.0
        # a cache measured its teachers' validation loss when it was built
        self.teacher_val_losses: list[float] | None = (
            [teacher_cache.teacher_val_loss] if teacher_cache is not None else None)
        # ce sum, ki sum, agreements, positions, positions taught by a teacher
        self._stats = torch.zeros(5, dtype=torch.float64)
        self.add_callback(_Clock(self))
        self.add_callback(_MaskEpoch(self))

    def _check_parallelism(self) -> None:
        """Refuse, before training, the parallel set-ups the chunked loss cannot run under."""
        if self.args.fsdp and not self.is_fsdp_enabled:
            raise KinheritError(
                f"--fsdp was given but this run is not sharded: accelerate applies FSDP only on GPU-class devices "
                f"(this run uses {self.args.device.type}). Leave out --fsdp to train with DDP, or run on GPUs")
        if self.is_fsdp_enabled and getattr(self.accelerator.state.fsdp_plugin, "fsdp_version", 1) != 2:
            raise KinheritError("FSDP version 1 is not supported: its flat parameters hide the output layer that the "
                                "chunked loss reads; set \"version\": 2 in --fsdp_config (the default)")
        if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            raise KinheritError("DeepSpeed ZeRO stage 3 partitions the output layer that the chunked loss reads "
                                "directly; use ZeRO stage 1 or 2, or FSDP (--fsdp with fsdp_config version 2)")
        placement = self.inherit_args.teacher_placement
        if placement == "shard" and self.teachers is not None:
            if self.accelerator.num_processes == 1:
                raise KinheritError("--teacher_placement shard needs several processes (torchrun or accelerate "
                                    "launch); one process holds whole teachers")
            if self.teachers.routes is not None:
                raise KinheritError("--teacher_placement shard does not combine with domain-routed teachers (every "
                                    "process would have to run every teacher); use replicate")

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
        """Self loss and KI loss at the valid positions, fused with the LM head in chunks."""
        student = self.accelerator.unwrap_model(model)
        body, head = backbone_and_head(student)
        input_ids, attention_mask = inputs["input_ids"], inputs.get("attention_mask")
        labels = target_labels(inputs["labels"], self.kind)
        positions = (labels != IGNORE_INDEX).nonzero().squeeze(-1)
        alpha = self.inheritance_rate() if model.training else 0.0
        use_teacher = self.schedule is not None and alpha > 0.0

        with forward_as_body(student, body):  # called as a module: DDP's / FSDP's forward hooks run
            hidden = model(input_ids=input_ids, attention_mask=attention_mask)
        hidden = hidden.reshape(-1, hidden.shape[-1])
        teacher_hidden, row_teacher, cached, cache_row = None, None, None, None
        if use_teacher and self.teacher_cache is not None:
            counts = (labels.view(input_ids.shape) != IGNORE_INDEX).sum(1)
            cached = self.teacher_cache.target(inputs["block_index"], int(inputs["mask_epoch"]), counts,
                                               labels.device)
            cache_row = torch.full_like(labels, -1)
            cache_row[positions] = torch.arange(positions.numel(), device=labels.device)
        elif use_teacher:
            teacher_hidden, row_teacher = self.teachers.hidden_states(input_ids, attention_mask,
                                                                      inputs.get("domain_id"))
        names, params = zip(*head.named_parameters(), strict=True)
        args = self.inherit_args
        vocab = self.vocab_size

        def compute(chunk, row_leaves, shared_leaves):
            logits = torch.func.functional_call(head, dict(zip(names, shared_leaves, strict=True)),
                                                (row_leaves[0],))[:, :vocab]
            target = None
            if cached is not None:
                rows = cache_row[chunk]
                target = TopKTarget(cached.ids[rows], cached.log_probs[rows])
            elif use_teacher:
                target = self.teachers.target(chunk, teacher_hidden, row_teacher, args.temperature, vocab)
            return loss_chunk(logits, target, labels[chunk], alpha, args.temperature, args.divergence,
                              args.jsd_beta, args.fused_loss, args.compile_loss)

        total, stats = chunked_loss(compute, positions, args.chunk_size, [hidden], list(params), n_stats=3)
        if teacher_hidden is not None:
            self.teachers.release()
        count = positions.numel()
        denominator = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
        loss = total / denominator
        if num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # the denominator is global; DDP averages over processes
        if model.training:
            ce, ki, agree = stats.tolist()
            if not self._check_finite(ce, ki):
                self.skipped_batches += 1
                zero = self._zero_loss(student)
                return (zero, {"loss": zero}) if return_outputs else zero
            self._stats += torch.tensor([ce, ki, agree, count, count if use_teacher else 0], dtype=torch.float64)
            self._count_flops(input_ids, count, use_teacher, inputs.get("domain_id"))
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

    def _count_flops(self, input_ids: torch.Tensor, positions: int, use_teacher: bool,
                     domain_ids: torch.Tensor | None) -> None:
        batch, length = input_ids.shape
        tokens = input_ids.numel() * self.accelerator.num_processes
        positions *= self.accelerator.num_processes
        flops = self.student_flops.train_step(tokens, length, positions)
        if use_teacher:
            for index, teacher in enumerate(self.teacher_flops):
                share = 1.0
                if self.teachers.routes is not None and domain_ids is not None:
                    routed = [self.teachers.routes.get(int(d)) for d in domain_ids.tolist()]
                    share = routed.count(index) / max(batch, 1)
                flops += share * teacher.forward(tokens, length, positions)
        self.train_flops += flops

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
        if self.args.should_save:
            seal(folder)
            rotate_checkpoints(run_dir, limit, self.state.global_step, protect=self.state.best_model_checkpoint)

    # ---------------------------------------------------------------- logging
    def train_seconds(self) -> float:
        """Training wall-clock seconds so far (evaluation excluded)."""
        if self.clock_start is None:
            return self.train_seconds_offset
        return self.train_seconds_offset + time.perf_counter() - self.clock_start - self.eval_seconds

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the inheritance statistics, cumulative FLOPs and training time to every log record."""
        stats = self._stats
        if "loss" in logs and self.accelerator.num_processes > 1:  # every process logs together
            stats = self.accelerator.reduce(stats.to(self.args.device), reduction="sum").cpu()
        if "loss" in logs and stats[3] > 0:
            ce, ki, agree, count, taught = stats.tolist()
            logs["inherit/self_loss"] = ce / count
            if self.schedule is not None:
                logs["inherit/alpha"] = self.inheritance_rate()
            if taught > 0:  # the KI terms are only computed while the teacher runs
                logs["inherit/ki_loss"] = ki / taught
                logs["inherit/agreement"] = agree / taught
            self._stats.zero_()
        if self.skipped_batches:
            logs["inherit/skipped_batches"] = self.skipped_batches
        logs.setdefault("train_flops", self.train_flops)
        logs.setdefault("train_seconds", self.train_seconds())
        super().log(logs, start_time)

    # ---------------------------------------------------------------- evaluation
    def validation_loss(self, model: PreTrainedModel, dataset) -> tuple[float, int]:
        """Mean self-supervised loss per valid position over `dataset` (fixed masking), and the count.

        With several processes each evaluates its contiguous shard and the sums are added up.
        """
        processes = self.accelerator.num_processes
        if processes > 1:
            dataset = dataset.shard(num_shards=processes, index=self.accelerator.process_index, contiguous=True)
        loss, count = validation_loss(model, dataset, self.eval_collator, self.args.per_device_eval_batch_size,
                                      self.inherit_args.chunk_size, self.vocab_size, self.kind,
                                      self.autocast_smart_context_manager)
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
        self.eval_seconds += time.perf_counter() - started
        metrics = {f"{metric_key_prefix}_loss": loss, f"{metric_key_prefix}_ppl": math.exp(min(loss, 50.0)),
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
