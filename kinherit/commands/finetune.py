"""`kinherit finetune CHECKPOINT --task TASK`: downstream accuracy of a pre-trained checkpoint.

`AutoModelForSequenceClassification` on the `transformers.Trainer` (a causal model classifies from its
last non-padding token). Hyper-parameters are chosen on the dev split only: with the first seed, each
learning rate trains for `epochs` epochs of one linear schedule and is scored on dev after every
epoch; the best (learning rate, epoch) is kept. Every seed then trains with that learning rate up to
that epoch and reads the test split once. Results are kept in `output_dir`, one JSON per (checkpoint
weights, task, settings), written only when complete; a repeat reads it back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import statistics
import tempfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from kinherit.core.atomic import write_json_atomic
from kinherit.core.errors import KinheritError
from kinherit.core.sealed import weights_digest
from kinherit.data import load_tokenizer
from kinherit.data.tasks import TaskData, load_task
from kinherit.models.loading import check_finished, is_checkpoint, load_config, model_kind, reading_weights
from kinherit.training.options import FinetuneArguments

logger = logging.getLogger(__name__)
SETTINGS = ("seeds", "learning_rates", "epochs", "batch_size", "max_length", "max_train_examples", "weight_decay",
            "warmup_steps", "text_field", "label_field", "group_field")


def scores(predictions: list[int], labels: list[int], classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 (the mean over classes of each class's F1; a class never predicted nor present
    counts as 0)."""
    accuracy = sum(p == y for p, y in zip(predictions, labels, strict=True)) / len(labels)
    f1s = []
    for c in range(classes):
        tp = sum(p == c and y == c for p, y in zip(predictions, labels, strict=True))
        predicted, actual = predictions.count(c), labels.count(c)
        f1s.append(2 * tp / (predicted + actual) if predicted + actual else 0.0)
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / classes}


def _metrics(prediction) -> dict[str, float]:
    logits, labels = prediction
    return scores(logits.argmax(-1).tolist(), labels.tolist(), logits.shape[-1])


def _encode(task: TaskData, tokenizer: PreTrainedTokenizerBase, options: FinetuneArguments) -> dict[str, Dataset]:
    """Tokenised splits (the training split cut to `max_train_examples`, a fixed random subset)."""
    index = {label: i for i, label in enumerate(task.labels)}
    encoded = {}
    for split, examples in task.splits.items():
        if split == "train" and options.max_train_examples and len(examples) > options.max_train_examples:
            chosen = sorted(random.Random(0).sample(range(len(examples)), options.max_train_examples))
            examples = [examples[i] for i in chosen]
        data = Dataset.from_dict({"text": [e.text for e in examples], "label": [index[e.label] for e in examples]})
        encoded[split] = data.map(lambda batch: tokenizer(batch["text"], truncation=True,
                                                          max_length=options.max_length),
                                  batched=True, remove_columns=["text"])
    unknown = tokenizer.unk_token_id
    if unknown is not None:
        ids = [i for row in encoded["train"]["input_ids"] for i in row]
        share = ids.count(unknown) / len(ids) if ids else 0.0
        if share > 0.05:
            raise KinheritError(f"the checkpoint's tokenizer cannot encode this task: {share:.0%} of its training "
                                "tokens are unknown; use a checkpoint trained on text like it")
    return encoded


class _EpochWatch(TrainerCallback):
    """Dev scores after each epoch and the best epoch (the first of equals); keeps that epoch's weights (if
    asked) and stops after `stop_after`."""

    def __init__(self, stop_after: int | None, keep: bool) -> None:
        self.stop_after, self.keep = stop_after, keep
        self.dev: list[dict[str, float]] = []
        self.best: dict[str, float] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if "eval_accuracy" not in metrics:  # the test split, read after training
            return
        scored = {"epoch": round(state.epoch), "accuracy": metrics["eval_accuracy"],
                  "macro_f1": metrics["eval_macro_f1"]}
        self.dev.append(scored)
        if self.best is None or scored["accuracy"] > self.best["accuracy"]:
            self.best = scored
            if self.keep:
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if self.stop_after is not None and round(state.epoch) >= self.stop_after:
            control.should_training_stop = True


class _Finetuning:
    """One checkpoint on one task: the classification model, its data, and training runs."""

    def __init__(self, options: FinetuneArguments, task: TaskData, tokenizer: PreTrainedTokenizerBase,
                 data: dict[str, Dataset], workdir: str) -> None:
        self.options, self.task, self.tokenizer, self.data, self.workdir = options, task, tokenizer, data, workdir

    def model(self) -> torch.nn.Module:
        labels = self.task.labels
        with reading_weights(self.options.checkpoint):
            return AutoModelForSequenceClassification.from_pretrained(
                self.options.checkpoint, num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)}, pad_token_id=self.tokenizer.pad_token_id,
                trust_remote_code=self.options.trust_remote_code)

    def trainer(self, model: torch.nn.Module, seed: int, learning_rate: float,
                callbacks: list[TrainerCallback] = ()) -> Trainer:
        options = self.options
        args = TrainingArguments(
            output_dir=self.workdir, learning_rate=learning_rate, num_train_epochs=options.epochs,
            per_device_train_batch_size=options.batch_size, per_device_eval_batch_size=2 * options.batch_size,
            weight_decay=options.weight_decay, warmup_steps=options.warmup_steps, lr_scheduler_type="linear",
            eval_strategy="epoch", save_strategy="no", logging_strategy="no", report_to="none", seed=seed,
            data_seed=seed, disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
            dataloader_pin_memory=torch.cuda.is_available())
        trainer = Trainer(model=model, args=args, train_dataset=self.data["train"], eval_dataset=self.data["dev"],
                          data_collator=DataCollatorWithPadding(self.tokenizer), compute_metrics=_metrics,
                          callbacks=list(callbacks))
        trainer.remove_callback(PrinterCallback)  # the scores are reported once, at the end
        return trainer

    def train(self, seed: int, learning_rate: float, stop_after: int | None = None,
              keep: bool = False) -> tuple[_EpochWatch, Trainer]:
        """Train one model; returns its per-epoch dev scores (and best weights) and its trainer."""
        watch = _EpochWatch(stop_after, keep)
        trainer = self.trainer(self.model(), seed, learning_rate, [watch])
        trainer.train()
        return watch, trainer

    def test(self, trainer: Trainer) -> dict[str, float]:
        """Accuracy and macro-F1 on the test split (read once per seed)."""
        metrics = trainer.evaluate(self.data["test"], metric_key_prefix="test")
        return {"accuracy": metrics["test_accuracy"], "macro_f1": metrics["test_macro_f1"]}


def _summary(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def finetune(options: FinetuneArguments) -> dict[str, Any]:
    """Fine-tune and test the checkpoint on the task over the seeds; returns (and keeps) the result."""
    if not is_checkpoint(options.checkpoint):
        raise KinheritError(f"{options.checkpoint} is not a model checkpoint folder (no config.json there)")
    check_finished(options.checkpoint)
    kind = model_kind(load_config(options.checkpoint, options.trust_remote_code))
    task = load_task(options.task, options.text_field, options.label_field, options.group_field, options.dev_file,
                     options.test_file)
    settings = {key: getattr(options, key) for key in SETTINGS}
    identity = {"weights": weights_digest(options.checkpoint), "task": task.name, "task_source": options.task,
                "dev_file": options.dev_file, "test_file": options.test_file, "settings": settings}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(options.output_dir) / f"{task.name}-{key}.json"
    if path.exists():
        logger.info("fine-tuning result read back from %s", path)
        return {**json.loads(path.read_text(encoding="utf-8")), "cached": True}
    tokenizer = load_tokenizer(options.checkpoint, options.trust_remote_code)
    if tokenizer.pad_token is None:  # a causal LM's tokenizer may have none: pad with its end-of-text token
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    data = _encode(task, tokenizer, options)
    train_labels = Counter(data["train"]["label"])
    majority = train_labels.most_common(1)[0][0]
    with tempfile.TemporaryDirectory() as workdir:
        run = _Finetuning(options, task, tokenizer, data, workdir)
        grid, best = [], None
        for learning_rate in options.learning_rates:
            watch, _trainer = run.train(options.seeds[0], learning_rate, keep=True)
            grid += [{"learning_rate": learning_rate, **scored} for scored in watch.dev]
            if best is None or watch.best["accuracy"] > best[1]["accuracy"]:
                best = (learning_rate, watch.best, watch.best_state)
        learning_rate, chosen, state = best
        model = run.model()
        model.load_state_dict(state)
        per_seed = [{"seed": options.seeds[0], **run.test(run.trainer(model, options.seeds[0], learning_rate))}]
        for seed in options.seeds[1:]:
            _watch, trainer = run.train(seed, learning_rate, stop_after=chosen["epoch"])
            per_seed.append({"seed": seed, **run.test(trainer)})
    test_labels = data["test"]["label"]
    result = {
        "checkpoint": options.checkpoint, "kind": kind, "task": task.name, "labels": task.labels,
        "examples": {split: len(part) for split, part in data.items()}, "settings": settings,
        "selected": {"learning_rate": learning_rate, "epoch": chosen["epoch"], "dev_accuracy": chosen["accuracy"]},
        "dev_grid": grid, "test": per_seed,
        "accuracy": _summary([r["accuracy"] for r in per_seed]),
        "macro_f1": _summary([r["macro_f1"] for r in per_seed]),
        "majority_test_accuracy": sum(y == majority for y in test_labels) / len(test_labels),
        "identity": identity, "options": asdict(options),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result)
    return result


def table(result: dict[str, Any]) -> str:
    """One line per seed and the mean, as plain text."""
    lines = [f"{result['task']}: learning rate {result['selected']['learning_rate']:g}, epoch "
             f"{result['selected']['epoch']} (dev accuracy {result['selected']['dev_accuracy']:.4f})"]
    lines += [f"  seed {r['seed']}: accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f}" for r in result["test"]]
    acc, f1 = result["accuracy"], result["macro_f1"]
    lines.append(f"  test accuracy {acc['mean']:.4f} +- {acc['std']:.4f}, macro-F1 {f1['mean']:.4f} +- "
                 f"{f1['std']:.4f} over {len(result['test'])} seeds "
                 f"(majority class {result['majority_test_accuracy']:.4f})")
    return "\n".join(lines)

