"""A stand-in for `kinherit.commands.pretrain.pretrain` in tests of the experiment runner's own logic: it writes what a
finished run writes (log.jsonl, run.json) where the runner told it to, without training."""

from __future__ import annotations

import json
from pathlib import Path


def fake_pretrain(loss: float = 5.0):
    """A `pretrain` that finishes at once with validation loss `loss`."""

    def pretrain(model_args, data, inherit, training_args, callbacks=None):
        out = Path(training_args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "log.jsonl").write_text(json.dumps({"step": 1, "eval_loss": loss, "train_flops": 1.0,
                                                   "train_seconds": 1.0}) + "\n")
        summary = {"model": model_args.model, "kind": "causal", "steps": 1, "train_loss": loss,
                   "final_val_loss": loss, "train_seconds": 1.0, "train_flops": 1.0, "tokens_per_second": 1.0,
                   "non_embedding_parameters": 1, "vocab_size": 512, "teachers": [], "teacher_val_losses": None,
                   "inherit": None}
        (out / "run.json").write_text(json.dumps(summary))
        return summary

    return pretrain
