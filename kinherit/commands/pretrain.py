"""`kinherit pretrain`: self-learning or Knowledge Inheritance pre-training on `transformers.Trainer`.

Every `TrainingArguments` flag passes through; `ModelArguments`, `DataArguments` and
`InheritanceArguments` (all in `kinherit.training.options`) add ours. The final student and its tokenizer are
saved as a standard HF checkpoint in `output_dir`, with `log.jsonl` (every log and evaluation record) and `run.json`
(written last, so its presence means the run finished).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, TrainerCallback, TrainerState, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME

from kinherit.core.atomic import write_json_atomic, write_text_atomic
from kinherit.core.errors import KinheritError
from kinherit.core.locks import exclusive
from kinherit.core.run_log import LOG_FILE, read_records
from kinherit.core.sealed import (
    checkpoint_step,
    is_sealed,
    last_good_checkpoint,
    seal,
    sealed_checkpoints,
    unseal,
    verify,
)
from kinherit.data import BlockCollator, corpus_blocks, load_corpus, load_tokenizer, train_tokenizer
from kinherit.data.corpora import Corpus
from kinherit.data.mixture import mix_blocks
from kinherit.data.tokenizer import first_vocab_difference
from kinherit.models.loading import is_checkpoint, load_model, model_kind, non_embedding_parameters
from kinherit.training.load_teachers import build_teachers
from kinherit.training.options import DataArguments, InheritanceArguments, ModelArguments
from kinherit.training.teacher_cache import open_teacher_cache
from kinherit.training.trainer import InheritanceTrainer

logger = logging.getLogger(__name__)
RUN_MARKER = "run.json"
STAGING = ".final.staging"


class JsonlLogger(TrainerCallback):
    """Append every log record (training and evaluation) to a JSON lines file, from the main process."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run re-does the steps after its checkpoint: drop their records from the file.
        if state.is_world_process_zero and self.path.exists():
            kept = [record for record in read_records(self.path) if record.get("step", 0) <= state.global_step]
            write_text_atomic(self.path, "".join(json.dumps(record) + "\n" for record in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def resolve_tokenizer(model_args: ModelArguments, data: DataArguments, corpus: Corpus,
                      output_dir: str) -> PreTrainedTokenizerBase:
    """The tokenizer named, the checkpoint's own, or a BPE trained on the corpus (saved in the run)."""
    if data.tokenizer:
        return load_tokenizer(data.tokenizer, model_args.trust_remote_code)
    if is_checkpoint(model_args.model) and (Path(model_args.model) / "tokenizer_config.json").exists():
        return load_tokenizer(model_args.model, model_args.trust_remote_code)
    path = Path(output_dir) / "tokenizer"
    if (path / "tokenizer.json").exists():
        return load_tokenizer(path)
    logger.info("training a byte-level BPE tokenizer of %d tokens on the corpus", data.vocab_size)
    return train_tokenizer(corpus.train, data.vocab_size, path)


def _resume_checkpoint(training_args: TrainingArguments) -> str | None:
    """The checkpoint to resume from: the one named (verified), the last good one for 'auto', or None."""
    resume = training_args.resume_from_checkpoint
    if resume in (None, "", "False", "false"):
        return None
    if resume in ("True", "true", "auto", "last"):
        return last_good_checkpoint(training_args.output_dir)
    if not os.path.isdir(resume):
        raise KinheritError(f"--resume_from_checkpoint {resume} is not a folder; give a checkpoint-N folder or 'auto'")
    if checkpoint_step(resume) is None or not os.path.isfile(os.path.join(resume, TRAINER_STATE_NAME)):
        raise KinheritError(f"--resume_from_checkpoint {resume} is not a training checkpoint (a checkpoint-N folder "
                            f"with {TRAINER_STATE_NAME}); to continue training a finished model, pass it as --model "
                            "in a new --output_dir")
    verify(resume, "checkpoint")
    return resume


def earlier_model(output_dir: Path) -> list[str]:
    """What an earlier run left in `output_dir` that a fresh run would overwrite: its final model (sealed or its
    `run.json`) and its log."""
    if not (is_sealed(output_dir) or (output_dir / RUN_MARKER).exists()
            or any(output_dir.glob("*.safetensors"))):
        return []
    return sorted(p.name for p in output_dir.iterdir() if p.is_file() and not p.name.startswith("."))


def claim_output_dir(output_dir: Path, overwrite: bool, training_args: TrainingArguments) -> None:
    """A fresh run refuses a folder holding another run's complete checkpoints or final model, or deletes them if
    told to."""
    old = sealed_checkpoints(output_dir)
    model = earlier_model(output_dir)
    if not old and not model:
        return
    if not overwrite:
        found = ", ".join([*(p.name for p in old), *(["a final model (" + ", ".join(model[:4]) + ", ...)"]
                                                     if model else [])])
        raise KinheritError(f"{output_dir} holds an earlier run ({found}); resume it with --resume_from_checkpoint "
                            "auto, choose another --output_dir, or pass --overwrite_output_dir true to delete it and "
                            "start afresh")
    with training_args.main_process_first(desc="deleting the earlier run's checkpoints"):
        if training_args.should_save:
            for path in old:
                unseal(path)  # a folder cut short while being deleted never reads as complete
                shutil.rmtree(path)
            unseal(output_dir)
            for name in model:
                (output_dir / name).unlink(missing_ok=True)


def check_same_tokenizer(folder: str | None, tokenizer: PreTrainedTokenizerBase, trust_remote_code: bool) -> None:
    """A checkpoint continued with another tokenizer than its own would read every token id wrongly: refuse it
    (a checkpoint saved without its tokenizer cannot be checked)."""
    if folder is None or not is_checkpoint(folder) or not (Path(folder) / "tokenizer_config.json").exists():
        return
    difference = first_vocab_difference(load_tokenizer(folder, trust_remote_code), tokenizer)
    if difference is not None:
        raise KinheritError(f"the tokenizer of this run differs from the one the checkpoint {folder} was trained with "
                            f"({difference}); continue a checkpoint with its own tokenizer (leave --tokenizer out, "
                            "or give the one it was trained with)")


def save_final(trainer: InheritanceTrainer, tokenizer: PreTrainedTokenizerBase, output_dir: Path,
               summary: dict[str, Any]) -> None:
    """Save the final model, tokenizer and `run.json` into `output_dir`: staged, moved in file by file, sealed.

    Until the manifest is written the folder reads as unfinished (`check_finished`), so a run killed
    while saving never leaves a model that loads as if it were complete. Every process takes part
    (a sharded model is gathered), the main process alone writes.
    """
    staging = output_dir / STAGING
    main = trainer.args.should_save
    if main:
        unseal(output_dir)
        (output_dir / RUN_MARKER).unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    try:
        trainer.save_model(str(staging))
        if main:
            tokenizer.save_pretrained(str(staging))
            names = [p.name for p in staging.iterdir() if p.is_file()]
            for name in names:
                os.replace(staging / name, output_dir / name)
            seal(output_dir, names)
            write_json_atomic(output_dir / RUN_MARKER, summary)
    finally:
        if main:
            shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()  # no process returns before the run reads as finished


def pretrain(model_args: ModelArguments, data: DataArguments, inherit: InheritanceArguments,
             training_args: TrainingArguments, callbacks: list[TrainerCallback] | None = None) -> dict[str, Any]:
    """Train a student (with KI when teachers are given); returns the run summary written to run.json.

    `callbacks` are added to the Trainer's (for example early stopping or custom logging). The main process holds
    the output folder's lock throughout: a second run into the same folder is refused, not mixed into this one.
    """
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    held = exclusive(output_dir, wait=False) if training_args.process_index == 0 else contextlib.nullcontext()
    with held:
        return _pretrain(model_args, data, inherit, training_args, callbacks or [], output_dir)


def _pretrain(model_args: ModelArguments, data: DataArguments, inherit: InheritanceArguments,
              training_args: TrainingArguments, callbacks: list[TrainerCallback], output_dir: Path) -> dict[str, Any]:
    """`pretrain`'s work, once the output folder is held."""
    resume = _resume_checkpoint(training_args)
    if resume is None:
        claim_output_dir(output_dir, getattr(training_args, "overwrite_output_dir", False), training_args)
    else:  # the first process evaluated at step 0; evaluating "on start" again would repeat the checkpoint's step
        training_args.eval_on_start = False
    # Each machine's first process trains the tokenizer and packs the blocks; the others then read them.
    with training_args.main_process_first(local=True, desc="preparing the tokenizer and data blocks"):
        corpus = load_corpus(data.corpus_specs(), data.cache_dir)
        tokenizer = resolve_tokenizer(model_args, data, corpus, str(output_dir))
        # without --tokenizer a checkpoint's own tokenizer is the run's, so only a given one can differ from it
        for checkpoint in ((model_args.model if data.tokenizer else None), resume):
            check_same_tokenizer(checkpoint, tokenizer, model_args.trust_remote_code)
        train_blocks = corpus_blocks(corpus, "train", tokenizer, data.block_size, data.cache_dir)
        if data.corpus_weights:
            train_blocks = mix_blocks(train_blocks, data.domain_weights(corpus.domains), training_args.data_seed
                                      if training_args.data_seed is not None else training_args.seed)
        eval_blocks = corpus_blocks(corpus, "validation", tokenizer, data.block_size, data.cache_dir)
    tokenizer_path = data.tokenizer or (model_args.model if is_checkpoint(model_args.model)
                                        else str(output_dir / "tokenizer"))
    if eval_blocks is None and training_args.eval_strategy != "no":
        raise KinheritError("evaluation needs validation documents; set --validation_fraction above 0 or "
                            "--eval_strategy no")

    # a run killed after its last step but before its final model was written: save that, train nothing more
    # (the Trainer would take one step beyond max_steps when resuming from the last one)
    finished = resume is not None and checkpoint_step(resume) >= training_args.max_steps
    torch.manual_seed(training_args.seed)
    model = load_model(resume if finished else model_args.model, tokenizer, data.block_size,
                       model_args.trust_remote_code)
    kind = model_kind(model.config)
    if model.config.vocab_size < len(tokenizer):
        raise KinheritError(f"model {model_args.model} has {model.config.vocab_size} output rows but the tokenizer "
                            f"has {len(tokenizer)} tokens; use the tokenizer the model was trained with")
    teachers = build_teachers(inherit, tokenizer, tokenizer_path, kind, corpus.domains, training_args.device,
                              model_args.trust_remote_code)
    masked = kind == "masked"
    cache = open_teacher_cache(inherit, training_args, data, tokenizer, corpus, kind, len(train_blocks))
    trainer = InheritanceTrainer(
        model=model, args=training_args, train_dataset=train_blocks, eval_dataset=eval_blocks,
        data_collator=BlockCollator(tokenizer, masked, data.mlm_probability, seed=training_args.seed),
        eval_collator=BlockCollator(tokenizer, masked, data.mlm_probability, seed=data.eval_mask_seed),
        processing_class=tokenizer, teachers=teachers, teacher_cache=cache, inherit_args=inherit,
        vocab_size=len(tokenizer),
        callbacks=[JsonlLogger(output_dir / LOG_FILE), *callbacks])
    if resume is None and (output_dir / LOG_FILE).exists() and trainer.is_world_process_zero():
        (output_dir / LOG_FILE).unlink()  # a fresh start: the old log belongs to another run
    if finished:
        trainer.state = TrainerState.load_from_json(os.path.join(resume, TRAINER_STATE_NAME))
        trainer.restore_counters(resume)
        training_loss = next((r["train_loss"] for r in reversed(trainer.state.log_history) if "train_loss" in r),
                             None)
    else:
        training_loss = trainer.train(resume_from_checkpoint=resume).training_loss
    final_eval = None
    if eval_blocks is not None:
        last = [r for r in trainer.state.log_history if "eval_loss" in r]
        final_eval = last[-1] if last and last[-1]["step"] == trainer.state.global_step else trainer.evaluate()
    summary = {
        "model": model_args.model, "kind": kind, "steps": trainer.state.global_step,
        "train_loss": training_loss, "final_val_loss": final_eval["eval_loss"] if final_eval else None,
        "train_seconds": trainer.counters.train_seconds(), "train_flops": trainer.counters.train_flops,
        "tokens_per_second": (trainer.state.global_step * training_args.per_device_train_batch_size
                              * training_args.gradient_accumulation_steps * training_args.world_size
                              * data.block_size / max(trainer.counters.train_seconds(), 1e-9)),
        "non_embedding_parameters": non_embedding_parameters(model),
        "vocab_size": len(tokenizer), "teachers": list(inherit.teacher),
        "teacher_val_losses": trainer.teacher_val_losses,
        "cross_tokenizer": trainer.source.report() if trainer.source is not None else None,
        "inherit": asdict(inherit) if inherit.teacher or inherit.teacher_cache else None,
        "corpus_fingerprint": corpus.fingerprint,
        "data": asdict(data),  # what `kinherit evaluate` needs to score the same positions
    }
    save_final(trainer, tokenizer, output_dir, summary)
    return summary
