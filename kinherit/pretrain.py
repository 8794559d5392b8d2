"""`kinherit pretrain`: self-learning or Knowledge Inheritance pre-training on `transformers.Trainer`.

Every `TrainingArguments` flag passes through; `ModelArguments`, `DataArguments` and
`InheritanceArguments` add ours. The final student and its tokenizer are saved as a standard HF
checkpoint in `output_dir`, with `log.jsonl` (every log and evaluation record) and `run.json`
(written last, so its presence means the run finished).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, TrainerCallback, TrainingArguments

from kinherit.atomic import write_json_atomic, write_text_atomic
from kinherit.data import BlockCollator, CorpusSpec, build_blocks, load_corpus, load_tokenizer, train_tokenizer
from kinherit.data.corpora import Corpus
from kinherit.data.tokenizer import SPECIAL_TOKENS, tokenizer_fingerprint
from kinherit.errors import KinheritError
from kinherit.inheritance.teachers import TeacherSet, load_teacher, parse_teacher_specs, resolve_dtype
from kinherit.models import is_checkpoint, load_model, model_kind, non_embedding_parameters
from kinherit.sealed import last_good_checkpoint, seal, unseal, verify
from kinherit.teacher_cache import TeacherCache
from kinherit.trainer import InheritanceArguments, InheritanceTrainer

logger = logging.getLogger(__name__)
MIN_VOCAB = 256 + len(set(SPECIAL_TOKENS.values()))  # byte-level BPE: every byte, then the special tokens
RUN_MARKER = "run.json"
LOG_FILE = "log.jsonl"
STAGING = ".final.staging"


@dataclass
class ModelArguments:
    """Which student to train."""

    model: str = field(default="llama-4x256", metadata={
        "help": "A preset (see `kinherit presets`), an HF config.json, or a checkpoint folder to continue from."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Allow custom model/tokenizer code from checkpoints (only for sources you trust)."})


@dataclass
class DataArguments:
    """Which corpus and tokenizer, and how to cut the text into blocks."""

    corpus: list[str] = field(default_factory=lambda: ["wikipedia"], metadata={
        "help": "Built-in corpus name, local file/folder/glob, saved dataset folder, or hf:NAME; repeatable. "
                "DOMAIN=SOURCE sets the domain tag used for routing."})
    text_field: str = field(default="text", metadata={"help": "Text field of .jsonl/.parquet/datasets sources."})
    validation_fraction: float = field(default=0.05, metadata={"help": "Fraction of documents held out."})
    max_documents: int | None = field(default=None, metadata={"help": "Use at most this many documents."})
    tokenizer: str | None = field(default=None, metadata={
        "help": "An HF tokenizer folder; default: the model checkpoint's, else a BPE trained on the corpus."})
    vocab_size: int = field(default=8192, metadata={"help": "Vocabulary size when training a tokenizer."})
    block_size: int = field(default=128, metadata={"help": "Tokens per training sequence."})
    cache_dir: str | None = field(default=None, metadata={
        "help": "Where packed blocks are cached (default $KINHERIT_CACHE or ~/.cache/kinherit)."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Masking rate of masked LMs."})
    eval_mask_seed: int = field(default=1234, metadata={
        "help": "Seed of the fixed validation masking, so every evaluation and every run sees the same masks."})

    def __post_init__(self) -> None:
        checks = [(self.block_size >= 2, f"--block_size must be at least 2, got {self.block_size}"),
                  (0.0 <= self.validation_fraction < 1.0,
                   f"--validation_fraction must be in [0, 1), got {self.validation_fraction}"),
                  (0.0 < self.mlm_probability < 1.0,
                   f"--mlm_probability must be in (0, 1), got {self.mlm_probability}"),
                  (self.vocab_size >= MIN_VOCAB, f"--vocab_size must be at least {MIN_VOCAB} (256 bytes and the "
                                                 f"special tokens), got {self.vocab_size}"),
                  (self.max_documents is None or self.max_documents > 0,
                   f"--max_documents must be positive, got {self.max_documents}"),
                  (bool(self.corpus), "--corpus needs at least one source")]
        for ok, message in checks:
            if not ok:
                raise KinheritError(message)


@dataclass
class KinheritTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults suited to pre-training small models."""

    output_dir: str = field(default="runs/pretrain", metadata={"help": "Where the run is written."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Blocks per batch and device."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Blocks per evaluation batch."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (the paper's 0.01)."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up steps, or a fraction of all steps."})
    max_steps: int = field(default=1000, metadata={"help": "Optimizer steps."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate: steps, epoch or no."})
    eval_steps: float | None = field(default=100, metadata={"help": "Evaluate every this many steps."})
    logging_steps: float = field(default=10, metadata={"help": "Log every this many steps."})
    save_strategy: str = field(default="steps", metadata={"help": "When to checkpoint: steps, epoch or no."})
    save_steps: float = field(default=500, metadata={"help": "Checkpoint every this many steps."})
    save_total_limit: int | None = field(default=1, metadata={"help": "Checkpoints kept."})
    report_to: None | str | list[str] = field(default="tensorboard", metadata={"help": "tensorboard, wandb, none..."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep domain ids for routing."})
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={
        "help": "DDP: every parameter gets a gradient in every step (the head through the chunked loss), so the "
                "graph search for unused ones is off."})


class JsonlLogger(TrainerCallback):
    """Append every log record (training and evaluation) to a JSON lines file, from the main process."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run re-does the steps after its checkpoint: drop their records from the file.
        if state.is_world_process_zero and self.path.exists():
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # the last line of a run killed while writing it
                    continue
                if record.get("step", 0) <= state.global_step:
                    kept.append(line)
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def parse_corpus_specs(data: DataArguments) -> list[CorpusSpec]:
    """`--corpus` items (`SOURCE` or `DOMAIN=SOURCE`) as corpus specs."""
    specs = []
    for item in data.corpus:
        domain, sep, source = item.partition("=")
        if not sep or os.path.exists(item) or not domain or domain.startswith("hf:"):
            domain, source = None, item
        specs.append(CorpusSpec(source=source, domain=domain, text_field=data.text_field,
                                validation_fraction=data.validation_fraction, max_documents=data.max_documents))
    return specs


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


def build_teachers(inherit: InheritanceArguments, tokenizer: PreTrainedTokenizerBase, tokenizer_path: str,
                   kind: str, domains: list[str], device: torch.device,
                   trust_remote_code: bool) -> TeacherSet | None:
    """Load the teachers named by `--teacher` and wire their weights or domain routing."""
    if not inherit.teacher:
        return None
    paths, teacher_domains = parse_teacher_specs(inherit.teacher)
    dtype = resolve_dtype(inherit.teacher_dtype, device)
    models = [load_teacher(path, tokenizer, kind, tokenizer_path, dtype=dtype, device=device,
                           trust_remote_code=trust_remote_code) for path in paths]
    routes = None
    if teacher_domains[0] is not None:
        unknown = [d for d in teacher_domains if d not in domains]
        if unknown:
            raise KinheritError(f"teacher routed to domain(s) {unknown}, but the corpus domains are {domains}")
        uncovered = [d for d in domains if d not in teacher_domains]
        if uncovered:
            raise KinheritError(f"corpus domain(s) {uncovered} have no routed teacher; add --teacher DOMAIN=PATH "
                                "for each domain")
        routes = {domains.index(d): i for i, d in enumerate(teacher_domains)}
        if inherit.teacher_weights:
            raise KinheritError("--teacher_weights and domain routing exclude each other; use one")
    return TeacherSet(models, weights=inherit.teacher_weights or None, routes=routes)


def open_teacher_cache(inherit: InheritanceArguments, training_args: TrainingArguments, data: DataArguments,
                       tokenizer: PreTrainedTokenizerBase, corpus: Corpus, kind: str,
                       blocks: int) -> TeacherCache | None:
    """The `--teacher_cache`, checked against this run (tokenizer, data, block layout, kind, temperature, masks)."""
    if not inherit.teacher_cache:
        return None
    cache = TeacherCache(inherit.teacher_cache)
    steps = inherit.inherit_steps or training_args.max_steps
    seen = steps * training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * \
        training_args.world_size
    run = {"tokenizer": tokenizer_fingerprint(tokenizer), "corpus": corpus.fingerprint, "block_size": data.block_size,
           "blocks": blocks, "kind": kind, "temperature": inherit.temperature, "seed": training_args.seed,
           "mlm_probability": data.mlm_probability}
    cache.check_run(run, epochs_needed=math.ceil(seen / max(blocks, 1)) if kind == "masked" else 1)
    return cache


def _resume_checkpoint(training_args: TrainingArguments) -> str | None:
    """The checkpoint to resume from: the one named (verified), the last good one for 'auto', or None."""
    resume = training_args.resume_from_checkpoint
    if resume in (None, "", "False", "false"):
        return None
    if resume in ("True", "true", "auto", "last"):
        return last_good_checkpoint(training_args.output_dir)
    if not os.path.isdir(resume):
        raise KinheritError(f"--resume_from_checkpoint {resume} is not a folder; give a checkpoint-N folder or 'auto'")
    verify(resume, "checkpoint")
    return resume


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

    `callbacks` are added to the Trainer's (for example early stopping or custom logging).
    """
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Each machine's first process trains the tokenizer and packs the blocks; the others then read them.
    with training_args.main_process_first(local=True, desc="preparing the tokenizer and data blocks"):
        corpus = load_corpus(parse_corpus_specs(data))
        tokenizer = resolve_tokenizer(model_args, data, corpus, str(output_dir))
        train_blocks = build_blocks(corpus.train, tokenizer, data.block_size, corpus.domains, corpus.fingerprint,
                                    "train", data.cache_dir)
        eval_blocks = None
        if len(corpus.validation):
            eval_blocks = build_blocks(corpus.validation, tokenizer, data.block_size, corpus.domains,
                                       corpus.fingerprint, "validation", data.cache_dir)
    tokenizer_path = data.tokenizer or (model_args.model if is_checkpoint(model_args.model)
                                        else str(output_dir / "tokenizer"))
    if eval_blocks is None and training_args.eval_strategy != "no":
        raise KinheritError("evaluation needs validation documents; set --validation_fraction above 0 or "
                            "--eval_strategy no")

    torch.manual_seed(training_args.seed)
    model = load_model(model_args.model, tokenizer, data.block_size, model_args.trust_remote_code)
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
        callbacks=[JsonlLogger(output_dir / LOG_FILE), *(callbacks or [])])
    resume = _resume_checkpoint(training_args)
    if resume is None and (output_dir / LOG_FILE).exists() and trainer.is_world_process_zero():
        (output_dir / LOG_FILE).unlink()  # a fresh start: the old log belongs to another run
    result = trainer.train(resume_from_checkpoint=resume)
    final_eval = None
    if eval_blocks is not None:
        last = [r for r in trainer.state.log_history if "eval_loss" in r]
        final_eval = last[-1] if last and last[-1]["step"] == trainer.state.global_step else trainer.evaluate()
    summary = {
        "model": model_args.model, "kind": kind, "steps": trainer.state.global_step,
        "train_loss": result.training_loss, "final_val_loss": final_eval["eval_loss"] if final_eval else None,
        "train_seconds": trainer.train_seconds(), "train_flops": trainer.train_flops,
        "tokens_per_second": (trainer.state.global_step * training_args.per_device_train_batch_size
                              * training_args.gradient_accumulation_steps * training_args.world_size
                              * data.block_size / max(trainer.train_seconds(), 1e-9)),
        "non_embedding_parameters": non_embedding_parameters(model),
        "vocab_size": len(tokenizer), "teachers": list(inherit.teacher),
        "teacher_val_losses": trainer.teacher_val_losses,
        "inherit": asdict(inherit) if inherit.teacher or inherit.teacher_cache else None,
        "corpus_fingerprint": corpus.fingerprint,
    }
    save_final(trainer, tokenizer, output_dir, summary)
    return summary
