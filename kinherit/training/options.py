"""Every option of every `kinherit` command, in one place: a dataclass field with its help, default and check.

The command line (`kinherit pretrain --flag`), `kinherit pretrain FILE.json` and the experiment YAML
all read these fields through `transformers.HfArgumentParser`, so a YAML key is the flag's name and
each check exists once, in a `__post_init__` here.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import HfArgumentParser, TrainingArguments

from kinherit.core.errors import KinheritError
from kinherit.data.corpora import CorpusSpec, check_train_slice
from kinherit.data.tokenizer import check_vocab_size
from kinherit.inheritance.cross_vocab import CROSS_TOKENIZER_METHODS
from kinherit.inheritance.divergences import check_temperature, validate_options
from kinherit.inheritance.kernels import check_loss_kernels
from kinherit.inheritance.loss import InheritanceLoss
from kinherit.inheritance.schedules import SCHEDULES, make_schedule
from kinherit.inheritance.topk import check_top_k
from kinherit.models.lm import check_chunk_size
from kinherit.training.cache_shards import COMPRESSIONS, LOG_PROB_DTYPES

NONFINITE = ("stop", "skip")
PLACEMENTS = ("replicate", "shard")
REPEATABLE = ("--teacher", "--corpus", "--teacher_weights", "--only")
SPLITS = ("validation", "train", "all")
# The data options that belong to a corpus rather than to a run: which documents are read and held out.
# Options of earlier versions, and what replaces each: refused with that message on the command line and in YAML.
RETIRED = {"fused_loss": "--loss_kernels (false was --loss_kernels autograd)",
           "compile_loss": "--loss_kernels (false was --loss_kernels eager)"}
CORPUS_OPTIONS = ("validation_fraction", "text_field", "max_documents", "train_fraction", "train_offset")


def _check(checks: list[tuple[bool, str]]) -> None:
    """Raise the message of the first failed check."""
    for ok, message in checks:
        if not ok:
            raise KinheritError(message)


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
    text_field: str = field(default=CorpusSpec.text_field, metadata={
        "help": "Text field of .jsonl/.parquet/datasets sources."})
    validation_fraction: float = field(default=CorpusSpec.validation_fraction, metadata={
        "help": "Fraction of documents held out."})
    max_documents: int | None = field(default=None, metadata={"help": "Use at most this many documents."})
    train_fraction: float = field(default=CorpusSpec.train_fraction, metadata={
        "help": "Train on this fraction of the training documents (chosen by a hash of their ids, after the "
                "validation documents are held out; smaller fractions are subsets of larger ones)."})
    train_offset: float = field(default=CorpusSpec.train_offset, metadata={
        "help": "Start of the training slice: documents [offset, offset + fraction) in hash order, so 0 and 0.5 "
                "with --train_fraction 0.5 give two disjoint halves."})
    corpus_weights: list[float] = field(default_factory=list, metadata={
        "help": "One weight per --corpus: the training blocks are resampled so that each corpus makes up its "
                "share of them (a smaller corpus is repeated, a larger one subsampled; the total is unchanged). "
                "Validation is not reweighted."})
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
        check_vocab_size(self.vocab_size)
        checks = [(self.block_size >= 2, f"--block_size must be at least 2, got {self.block_size}"),
                  (0.0 <= self.validation_fraction < 1.0,
                   f"--validation_fraction must be in [0, 1), got {self.validation_fraction}"),
                  (0.0 < self.mlm_probability < 1.0,
                   f"--mlm_probability must be in (0, 1), got {self.mlm_probability}"),
                  (self.max_documents is None or self.max_documents > 0,
                   f"--max_documents must be positive, got {self.max_documents}"),
                  (bool(self.corpus), "--corpus needs at least one source"),
                  (not self.corpus_weights or len(self.corpus_weights) == len(self.corpus),
                   f"--corpus_weights needs one weight per --corpus ({len(self.corpus)}), got "
                   f"{len(self.corpus_weights)}"),
                  (all(w > 0 for w in self.corpus_weights), f"--corpus_weights must be positive, got "
                                                             f"{self.corpus_weights}")]
        _check(checks)
        check_train_slice(self.train_fraction, self.train_offset)

    def corpus_specs(self) -> list[CorpusSpec]:
        """`--corpus` items (`SOURCE` or `DOMAIN=SOURCE`) as corpus specs."""
        specs = []
        for item in self.corpus:
            domain, sep, source = item.partition("=")
            if not sep or os.path.exists(item) or not domain or domain.startswith("hf:"):
                domain, source = None, item
            specs.append(CorpusSpec(source=source, domain=domain, text_field=self.text_field,
                                    validation_fraction=self.validation_fraction, max_documents=self.max_documents,
                                    train_fraction=self.train_fraction, train_offset=self.train_offset))
        return specs

    def domain_weights(self, domains: list[str]) -> list[float]:
        """The --corpus_weights per domain tag of the loaded corpus (in its `domains` order)."""
        weights: dict[str, float] = {}
        for spec, weight in zip(self.corpus_specs(), self.corpus_weights, strict=True):
            if weights.setdefault(spec.domain_tag, weight) != weight:
                raise KinheritError(f"--corpus_weights gives domain {spec.domain_tag!r} two weights; give corpora of "
                                    "one domain the same weight, or distinct domains (DOMAIN=SOURCE)")
        return [weights[domain] for domain in domains]


@dataclass
class TeacherArguments:
    """Which teachers run and how (shared by `kinherit pretrain` and `kinherit cache-teacher`)."""

    teacher: list[str] = field(default_factory=list, metadata={
        "help": "Teacher checkpoint folder; repeat for several. DOMAIN=PATH routes each example to the teacher "
                "of its corpus's domain."})
    teacher_weights: list[float] = field(default_factory=list, metadata={
        "help": "Mixture weight per teacher (normalised to sum to 1); default equal."})
    temperature: float = field(default=2.0, metadata={"help": "Softmax temperature tau of the KI term."})
    chunk_size: int | None = field(default=None, metadata={
        "help": "Positions per chunk of the fused head and loss (default: as many as keep the chunk's float32 "
                "[positions, vocabulary] tensors within what one such tensor of at most 1024 positions and 256 MB "
                "holds: without a teacher 1024 up to 64k tokens and 512 at 128k, with one half as many)."})
    teacher_dtype: str = field(default="auto", metadata={
        "help": "auto (bfloat16 on a CUDA device that supports it, else float32), float32, bfloat16, float16."})
    teacher_placement: str = field(default="replicate", metadata={
        "help": "replicate: each process holds whole teachers (small teachers, the KI case); shard: teachers are "
                "sharded over the processes with FSDP2 and gathered layer by layer (teachers too large to copy)."})
    cross_tokenizer: str = field(default="map", metadata={
        "help": "How a teacher with another tokenizer teaches (same-tokenizer teachers take the exact path): map "
                "(its distribution carried into the student's vocabulary at the positions where both tokenizers "
                "end a token at the same character) or uld (the distance between the sorted distributions at those "
                "positions)."})

    def __post_init__(self) -> None:
        check_temperature(self.temperature)
        if self.cross_tokenizer not in CROSS_TOKENIZER_METHODS:
            raise KinheritError(f"--cross_tokenizer {self.cross_tokenizer!r} is not one of "
                                f"{', '.join(CROSS_TOKENIZER_METHODS)}")
        if self.teacher_placement not in PLACEMENTS:
            raise KinheritError(f"--teacher_placement {self.teacher_placement!r} is not one of {', '.join(PLACEMENTS)}")
        check_chunk_size(self.chunk_size)
        if self.teacher_weights and len(self.teacher_weights) != len(self.teacher):
            raise KinheritError(f"{len(self.teacher_weights)} --teacher_weights for {len(self.teacher)} --teacher; "
                                "give one weight per teacher")


@dataclass
class InheritanceArguments(TeacherArguments):
    """Knowledge Inheritance options (they sit beside `TrainingArguments` on the command line)."""

    divergence: str = field(default="forward_kl", metadata={"help": "forward_kl, reverse_kl, jsd or tvd."})
    jsd_beta: float = field(default=0.5, metadata={"help": "Mixture weight beta of the jsd divergence."})
    ki_weight: float = field(default=1.0, metadata={
        "help": "Weight w of the KI term: (1 - alpha) CE + alpha w tau^2 D. 1 is the paper's; w = (tau0 / tau)^2 "
                "gives tau the KI term's weight of tau0 (a control for the tau^2 factor)."})
    inherit_schedule: str = field(default="linear", metadata={"help": f"One of {', '.join(SCHEDULES)}."})
    inherit_steps: int | None = field(default=None, metadata={
        "help": "Step at which the inheritance rate reaches 0 (linear, step, cosine; optional elsewhere)."})
    inherit_start: float = field(default=1.0, metadata={"help": "Inheritance rate at step 0 (alpha_0)."})
    inherit_value: float = field(default=0.5, metadata={"help": "Rate of the constant schedule."})
    inherit_time_constant: float | None = field(default=None, metadata={
        "help": "Time constant (steps) of the exponential schedule."})
    inherit_margin: float = field(default=0.0, metadata={
        "help": "Adaptive schedule: stop once the student's validation loss is this much below the teacher's."})
    loss_kernels: str = field(default="auto", metadata={
        "help": "Backend of the closed-form CE + forward-KL gradient: auto (native on a CPU where they build, else "
                "compiled), native (single-pass C++ CPU kernels), compiled (torch.compile), eager, or autograd (the "
                "definitions through autograd: slower, the same result). All give the same loss and gradients."})
    teacher_cache: str | None = field(default=None, metadata={
        "help": "A folder written by `kinherit cache-teacher`: read the teachers' top-K targets from it instead of "
                "running teachers (forward KL only; replaces --teacher)."})
    top_k: int | None = field(default=None, metadata={
        "help": "Inherit only the teacher's K most likely tokens per position (live teachers or a cache built with "
                "at least K); default: every token the source holds."})
    top_k_mode: str = field(default="tail", metadata={
        "help": "With top-K targets: tail (the rest of the teacher's mass is one extra outcome, matched by the "
                "student's mass outside the K) or renormalize (the K probabilities rescaled to sum to 1)."})
    nonfinite: str = field(default="stop", metadata={
        "help": "On a NaN or infinite loss: stop (error naming the step, the term and the last good checkpoint) "
                "or skip (that batch adds no gradient; counted as inherit/skipped_batches in the log)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_options(self.temperature, self.divergence, self.jsd_beta, self.ki_weight)
        check_loss_kernels(self.loss_kernels)
        check_top_k(self.top_k, self.top_k_mode)
        if self.nonfinite not in NONFINITE:
            raise KinheritError(f"--nonfinite {self.nonfinite!r} is not one of {', '.join(NONFINITE)}")
        if self.teacher and self.teacher_cache:
            raise KinheritError("--teacher and --teacher_cache exclude each other: the cache replaces the teachers")
        if (self.teacher_cache or self.top_k) and self.divergence != "forward_kl":
            raise KinheritError(f"top-K targets (--teacher_cache, --top_k) support only --divergence forward_kl, not "
                                f"{self.divergence}")
        if self.teacher or self.teacher_cache:
            self.schedule()  # its parameters are checked before any data or model is loaded

    def schedule(self):
        """The configured inheritance-rate schedule."""
        return make_schedule(self.inherit_schedule, self.inherit_steps, start=self.inherit_start,
                             value=self.inherit_value, time_constant=self.inherit_time_constant,
                             margin=self.inherit_margin)

    def loss(self, vocab_size: int | None = None, label_smoothing: float = 0.0) -> InheritanceLoss:
        """The inheritance loss these options describe (`vocab_size`: logit rows beyond it are cut;
        `label_smoothing`: the training arguments' `label_smoothing_factor`, applied to the CE term)."""
        return InheritanceLoss(temperature=self.temperature, divergence=self.divergence, beta=self.jsd_beta,
                               top_k=self.top_k, top_k_mode=self.top_k_mode,
                               chunk_size=self.chunk_size, vocab_size=vocab_size, kernels=self.loss_kernels,
                               label_smoothing=label_smoothing, ki_weight=self.ki_weight)


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
    keep_checkpoints: list[int] = field(default_factory=list, metadata={
        "help": "Also checkpoint at these steps and never rotate those out (beside save_total_limit's): the "
                "checkpoints to fine-tune along pre-training."})
    report_to: None | str | list[str] = field(default="tensorboard", metadata={"help": "tensorboard, wandb, none..."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep domain ids for routing."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Start afresh in an output_dir that holds another run's checkpoints, deleting them (without it such "
                "a folder is refused, so that a later --resume_from_checkpoint auto cannot resume the other run)."})
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={
        "help": "DDP: every parameter gets a gradient in every step (the head through the chunked loss), so the "
                "graph search for unused ones is off."})

    def __post_init__(self) -> None:
        _check([(self.max_steps > 0, f"--max_steps must be positive, got {self.max_steps}"),
                (self.learning_rate > 0, f"--learning_rate must be positive, got {self.learning_rate}"),
                (self.per_device_train_batch_size > 0,
                 f"--per_device_train_batch_size must be positive, got {self.per_device_train_batch_size}"),
                (self.gradient_accumulation_steps > 0,
                 f"--gradient_accumulation_steps must be positive, got {self.gradient_accumulation_steps}"),
                (self.warmup_steps >= 0, f"--warmup_steps must be >= 0, got {self.warmup_steps}"),
                (self.weight_decay >= 0, f"--weight_decay must be >= 0, got {self.weight_decay}"),
                (self.max_grad_norm is None or self.max_grad_norm >= 0,
                 f"--max_grad_norm must be >= 0, got {self.max_grad_norm}"),
                (all(step > 0 for step in self.keep_checkpoints),
                 f"--keep_checkpoints must be positive steps, got {self.keep_checkpoints}"),
                *[(value is None or value > 0, f"--{name} must be positive, got {value}")
                  for name, value in (("eval_steps", self.eval_steps), ("logging_steps", self.logging_steps),
                                      ("save_steps", self.save_steps))]])
        if self.use_cpu or not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinned memory serves only a GPU
        super().__post_init__()


@dataclass
class CacheArguments:
    """Where the cache goes and what it keeps (the teachers, data and temperature are the usual flags)."""

    output: str = field(default="runs/teacher-cache", metadata={"help": "Folder to write the cache to."})
    top_k: int = field(default=32, metadata={"help": "Most likely tokens kept per position."})
    epochs: int = field(default=1, metadata={
        "help": "Masked LMs: epochs of masks to cache (a student inheriting beyond them is refused). Causal: 1."})
    seed: int = field(default=0, metadata={"help": "Masked LMs: the masking seed, i.e. the students' --seed."})
    batch_size: int = field(default=32, metadata={"help": "Blocks per teacher forward pass."})
    blocks_per_shard: int = field(default=4096, metadata={"help": "Blocks per shard file."})
    log_prob_dtype: str = field(default="float16", metadata={"help": "float16 or float32."})
    compression: str = field(default="zstd", metadata={
        "help": "zstd (each block's rows compressed on their own) or none (plain tensors)."})

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.epochs < 1 or self.batch_size < 1 or self.blocks_per_shard < 1:
            raise KinheritError("--top_k, --epochs, --batch_size and --blocks_per_shard must be positive")
        if self.log_prob_dtype not in LOG_PROB_DTYPES:
            raise KinheritError(f"--log_prob_dtype must be one of {', '.join(LOG_PROB_DTYPES)}")
        if self.compression not in COMPRESSIONS:
            raise KinheritError(f"--compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}")


@dataclass
class ImportArguments:
    """`kinherit import-gguf FILE OUTPUT`."""

    source: str = field(metadata={"help": "A .gguf file (llama.cpp's format; quantized weights are dequantized)."})
    output: str = field(metadata={"help": "Folder for the checkpoint and its tokenizer (must not exist)."})


@dataclass
class GrowArguments:
    """`kinherit grow SOURCE OUTPUT --to TARGET`."""

    source: str = field(metadata={"help": "The smaller model's checkpoint folder (with its tokenizer)."})
    output: str = field(metadata={"help": "Folder for the grown checkpoint (must not exist)."})
    to: str = field(metadata={"help": "Target preset (e.g. llama-4x256) or config.json."})
    noise: float = field(default=0.01, metadata={
        "help": "Symmetry-breaking noise, relative to each split weight's spread (sums to zero)."})
    seed: int = field(default=0, metadata={"help": "Seed of the symmetry-breaking noise."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the checkpoint."})
    allow_inexact: bool = field(default=False, metadata={
        "help": "Grow a residual width that is not a whole multiple anyway (function not preserved)."})

    def __post_init__(self) -> None:
        _check([(self.noise >= 0 and math.isfinite(self.noise), f"--noise must be >= 0, got {self.noise}")])


@dataclass
class TokenizerArguments:
    """`kinherit tokenizer OUTPUT`: the corpus and vocabulary are the data options of `kinherit pretrain`."""

    output: str = field(metadata={"help": "Folder to save the tokenizer in (trained on the training split only); "
                                          "it must not exist."})
    overwrite: bool = field(default=False, metadata={
        "help": "Replace a tokenizer folder that kinherit wrote there earlier (any other existing folder is refused)."})


@dataclass
class ExperimentArguments:
    """`kinherit experiment CONFIG.yaml`."""

    config: str = field(metadata={"help": "The experiment YAML file."})
    output_dir: str | None = field(default=None, metadata={"help": "Override the YAML's output_dir."})
    only: list[str] = field(default_factory=list, metadata={
        "help": "Run only these runs (and what they depend on)."})
    finetune: bool = field(default=True, metadata={
        "help": "Fine-tune the runs on their `finetune:` tasks once every run is trained and scored. "
                "`--finetune false` stops at the losses; run again without it to add the downstream accuracy."})


@dataclass
class ReportArguments:
    """`kinherit report FOLDER`."""

    folder: str = field(metadata={"help": "An experiment output folder."})
    experiment: str | None = field(default=None, metadata={
        "help": "The experiment to report on (default: every experiment in the folder)."})


@dataclass
class EvaluateArguments:
    """`kinherit evaluate CHECKPOINT --corpus SOURCE ...`: data options left out are the run's own (its run.json),
    else the defaults of `kinherit pretrain`."""

    checkpoint: str = field(metadata={"help": "A masked or causal LM checkpoint folder (with its tokenizer)."})
    corpus: list[str] = field(default_factory=list, metadata={
        "help": "Corpora to evaluate on, one row each: built-in name, local files, saved dataset or hf:NAME."})
    split: str = field(default="validation", metadata={
        "help": f"Which documents of each corpus: {', '.join(SPLITS)} (all: a corpus not trained on)."})
    block_size: int | None = field(default=None, metadata={"help": "Tokens per block (default: the run's)."})
    validation_fraction: float | None = field(default=None, metadata={
        "help": "Held-out fraction of documents (default: the run's)."})
    mlm_probability: float | None = field(default=None, metadata={"help": "Masking rate (default: the run's)."})
    eval_mask_seed: int | None = field(default=None, metadata={"help": "Validation mask seed (default: the run's)."})
    text_field: str | None = field(default=None, metadata={"help": "Text field of .jsonl/.parquet/datasets."})
    max_documents: int | None = field(default=None, metadata={"help": "Use at most this many documents."})
    train_fraction: float | None = field(default=None, metadata={
        "help": "Fraction of the training documents (--split train; default: the run's)."})
    train_offset: float | None = field(default=None, metadata={
        "help": "Start of that slice of the training documents (default: the run's)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where packed blocks are cached."})
    batch_size: int = field(default=32, metadata={"help": "Blocks per forward pass."})
    chunk_size: int | None = field(default=None, metadata={
        "help": "Positions per chunk of the LM head (default: as for kinherit pretrain, from the vocabulary)."})
    temperatures: list[float] = field(default_factory=list, metadata={
        "help": "Also report the mean entropy (nats) of the model's predictions softened by each temperature tau, "
                "softmax(z / tau): how sharp a target it would be for KI at that tau."})
    json: str | None = field(default=None, metadata={"help": "Also write the results to this JSON file."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the checkpoint."})

    def __post_init__(self) -> None:
        check_chunk_size(self.chunk_size)
        _check([(bool(self.corpus), "--corpus needs at least one source"),
                (self.split in SPLITS, f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}"),
                (self.batch_size > 0, f"--batch_size must be positive, got {self.batch_size}"),
                (all(tau > 0 for tau in self.temperatures), f"--temperatures must be positive, got "
                                                            f"{self.temperatures}")])


@dataclass
class FinetuneArguments:
    """`kinherit finetune CHECKPOINT --task TASK`: sentence classification over seeds, hyper-parameters chosen on
    the dev split (learning rate x epochs, read after each epoch of one schedule), test read once per seed."""

    checkpoint: str = field(metadata={"help": "A masked or causal LM checkpoint folder (with its tokenizer)."})
    task: str = field(metadata={
        "help": "A built-in task (rotten-tomatoes, shakespeare-genre, python-package) or a .csv/.jsonl/.parquet "
                "file or datasets folder."})
    text_field: str = field(default="text", metadata={"help": "Text field of a user's task."})
    label_field: str = field(default="label", metadata={"help": "Label field of a user's task (strings or ints)."})
    group_field: str | None = field(default=None, metadata={
        "help": "Source-document field: no group is split across train/dev/test (default: each row its own)."})
    dev_file: str | None = field(default=None, metadata={"help": "Your own dev split (with --test_file)."})
    test_file: str | None = field(default=None, metadata={"help": "Your own test split (with --dev_file)."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Fine-tuning seeds."})
    learning_rates: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3], metadata={
        "help": "Learning rates tried on dev (the paper's {1,2,3}e-5 for BASE models, scaled to small ones)."})
    epochs: int = field(default=3, metadata={"help": "Epochs of the schedule; the best epoch is chosen on dev."})
    batch_size: int = field(default=32, metadata={"help": "Examples per batch."})
    max_length: int = field(default=128, metadata={"help": "Tokens per example (longer ones are truncated)."})
    max_train_examples: int | None = field(default=2000, metadata={
        "help": "Train on a fixed random subset of this many examples (0 or none: all)."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (the paper's 0.1)."})
    warmup_steps: float = field(default=0.06, metadata={"help": "Warm-up fraction of the steps (the paper's 0.06)."})
    output_dir: str = field(default="runs/finetune", metadata={
        "help": "Where results are kept, one JSON per (checkpoint weights, task, settings): a repeat is read back."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the checkpoint."})

    def __post_init__(self) -> None:
        _check([(bool(self.seeds), "--seeds needs at least one seed"),
                (bool(self.learning_rates) and all(lr > 0 for lr in self.learning_rates),
                 f"--learning_rates must be positive numbers, got {self.learning_rates}"),
                (self.epochs > 0 and self.batch_size > 0 and self.max_length > 1,
                 "--epochs, --batch_size and --max_length must be positive"),
                (self.max_train_examples is None or self.max_train_examples >= 0,
                 f"--max_train_examples must be >= 0, got {self.max_train_examples}")])


@dataclass
class PartArguments:
    """Which share of the work this process does when `kinherit prepare` or `cache-teacher` runs on several
    processes or machines that share their output folders; the result is the same for any count."""

    parts: int | None = field(default=None, metadata={
        "help": "Split the work in this many parts, one per process or machine (default: one, or WORLD_SIZE under "
                "torchrun). The output is the same for any count."})
    part: int | None = field(default=None, metadata={
        "help": "Which part this process does, 0 to parts - 1 (default: RANK under torchrun). The process that "
                "finds every part done finishes the output."})

    def __post_init__(self) -> None:
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if self.parts is None:
            self.parts = launched
        if self.part is None:
            if self.parts > 1 and launched != self.parts:
                raise KinheritError(f"--parts {self.parts} needs --part (which one this process tokenises, 0 to "
                                    f"{self.parts - 1}), or a launch of {self.parts} processes with torchrun")
            self.part = int(os.environ.get("RANK", "0"))
        if self.parts < 1 or not 0 <= self.part < self.parts:
            raise KinheritError(f"--part {self.part} of --parts {self.parts}: parts must be at least 1 and part one "
                                f"of 0 to {self.parts - 1}")


@dataclass
class NoArguments:
    """A command without options."""


PRETRAIN_CLASSES = (ModelArguments, DataArguments, InheritanceArguments, KinheritTrainingArguments)


def merge_repeated(argv: Sequence[str], flags: Sequence[str] = REPEATABLE) -> list[str]:
    """Turn `--teacher A --teacher B` into `--teacher A B` (the parser takes lists as one flag)."""
    merged: dict[str, list[str]] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        item = argv[i]
        flag, eq, value = item.partition("=")
        if flag in flags:
            values = merged.setdefault(flag, [])
            if eq:
                values.append(value)
                i += 1
            else:
                i += 1
                while i < len(argv) and not argv[i].startswith("--"):
                    values.append(argv[i])
                    i += 1
            continue
        rest.append(item)
        i += 1
    for flag, values in merged.items():
        rest += [flag, *values]
    return rest


def parse_arguments(argv: Sequence[str], classes: tuple, prog: str, description: str = "",
                    positional: Sequence[str] = ()) -> tuple:
    """Parse `argv` into instances of the dataclasses `classes` (HF argument parser).

    The first bare arguments fill the fields named in `positional`, in order (`kinherit grow SOURCE OUTPUT`).
    Every problem (unknown flag, bad value, a dataclass's own checks) is a `KinheritError` naming it.
    """
    class Parser(HfArgumentParser):
        def error(self, message: str):
            raise KinheritError(f"{message}; see `{prog} --help`")

    argv = list(argv)
    leading = []
    while argv and len(leading) < len(positional) and not argv[0].startswith("-"):
        leading.append(argv.pop(0))
    argv = [token for name, value in zip(positional, leading, strict=False) for token in (f"--{name}", value)] + argv
    epilog = (f"{' '.join(name.upper() for name in positional)} may also be given first, without the flag"
              f"{'s' if len(positional) > 1 else ''}: {prog} {' '.join(name.upper() for name in positional)} ..."
              if positional else None)
    parser = Parser(classes, prog=prog, description=description, epilog=epilog)
    try:
        *parsed, rest = parser.parse_args_into_dataclasses(args=merge_repeated(argv), return_remaining_strings=True)
    except KinheritError:
        raise
    except (ValueError, TypeError) as error:  # the dataclasses' own checks, TrainingArguments' among them
        raise KinheritError(f"invalid option: {str(error).strip()}") from error
    if rest:
        retired = [f"--{name} is now {RETIRED[name]}" for name in (flag.lstrip("-").split("=")[0] for flag in rest)
                   if name in RETIRED]
        raise KinheritError(f"unknown option(s) {rest}; " + ("; ".join(retired) or f"see `{prog} --help` for the "
                                                                                     "valid ones"))
    return tuple(parsed)


def command_line(options: dict[str, Any]) -> list[str]:
    """Command-line flags for option values as YAML or JSON read them (None: the option's default; lists give
    several values; mappings are passed as JSON)."""
    argv = []
    for key, value in options.items():
        if value is None:
            continue  # the option's own default
        if isinstance(value, list):
            if value:
                argv += [f"--{key}", *(_flag_value(v) for v in value)]
            continue
        argv += [f"--{key}", _flag_value(value)]
    return argv


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def parse_json_arguments(path: str, classes: tuple, prog: str) -> tuple:
    """Instances of the dataclasses `classes` from one JSON object mapping option names to values, parsed
    exactly as the same options on the command line."""
    try:
        with open(path, encoding="utf-8") as handle:
            options = json.load(handle)
    except OSError as error:
        raise KinheritError(f"cannot read the arguments file {path} ({error})") from error
    except ValueError as error:
        raise KinheritError(f"{path} is not valid JSON ({error})") from error
    if not isinstance(options, dict):
        raise KinheritError(f"{path} must hold one object mapping the options of `{prog} --help` to values")
    try:
        return parse_arguments(command_line(options), classes, prog)
    except KinheritError as error:
        raise KinheritError(f"{path}: {error}") from error


def parse_pretrain_args(argv: Sequence[str]) -> tuple:
    """`kinherit pretrain` options as (ModelArguments, DataArguments, InheritanceArguments, TrainingArguments).

    A single `FILE.json` argument gives them all as one JSON object (what experiments under a launcher use).
    """
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parse_json_arguments(argv[0], PRETRAIN_CLASSES, "kinherit pretrain")
    return parse_arguments(argv, PRETRAIN_CLASSES, "kinherit pretrain")
