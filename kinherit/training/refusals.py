"""The `TrainingArguments` and parallel set-ups the KI step cannot honour, refused before training with the reason
(a silently ignored option would train something other than what was asked)."""

from __future__ import annotations

from transformers import Trainer

from kinherit.core.errors import KinheritError
from kinherit.inheritance.teachers import TeacherSet
from kinherit.models.loading import model_kind
from kinherit.training.options import InheritanceArguments


def check_training_setup(trainer: Trainer, inherit: InheritanceArguments, teachers: TeacherSet | None) -> None:
    """Refuse the options the KI loss and evaluation replace, and the parallel set-ups the chunked loss cannot
    run under."""
    args = trainer.args
    overridden = [
        (args.average_tokens_across_devices, "--average_tokens_across_devices false: the KI loss always "
                                             "averages over the positions of every process"),
        (trainer.compute_metrics is None, "compute_metrics: evaluation reports the validation loss and perplexity "
                                          "(kinherit evaluate and finetune measure the rest)"),
        (args.metric_for_best_model in (None, "loss", "eval_loss", "ppl", "eval_ppl"),
         f"--metric_for_best_model {args.metric_for_best_model}: evaluation reports eval_loss and eval_ppl only"),
        (not (args.dataloader_persistent_workers and args.dataloader_num_workers > 0
              and model_kind(trainer.model.config) == "masked"),
         "--dataloader_persistent_workers with a masked LM: persistent workers keep the first epoch's masks "
         "(each epoch is masked afresh in the main process); leave it off"),
    ]
    refused = [message for ok, message in overridden if not ok]
    if refused:
        raise KinheritError("not supported by the KI training step: " + "; ".join(refused))
    if args.fsdp and not trainer.is_fsdp_enabled:
        raise KinheritError(
            f"--fsdp was given but this run is not sharded: accelerate applies FSDP only on GPU-class devices "
            f"(this run uses {args.device.type}). Leave out --fsdp to train with DDP, or run on GPUs")
    if trainer.is_fsdp_enabled and getattr(trainer.accelerator.state.fsdp_plugin, "fsdp_version", 1) != 2:
        raise KinheritError("FSDP version 1 is not supported: its flat parameters hide the output layer that the "
                            "chunked loss reads; set \"version\": 2 in --fsdp_config (the default)")
    if trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3:
        raise KinheritError("DeepSpeed ZeRO stage 3 partitions the output layer that the chunked loss reads "
                            "directly; use ZeRO stage 1 or 2, or FSDP (--fsdp with fsdp_config version 2)")
    if inherit.teacher_placement == "shard" and teachers is not None:
        if trainer.accelerator.num_processes == 1:
            raise KinheritError("--teacher_placement shard needs several processes (torchrun or accelerate "
                                "launch); one process holds whole teachers")
        if teachers.routes is not None:
            raise KinheritError("--teacher_placement shard does not combine with domain-routed teachers (every "
                                "process would have to run every teacher); use replicate")
