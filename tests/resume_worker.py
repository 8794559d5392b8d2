"""Child process of test_resume: one small KI run, optionally killed with SIGKILL after a given step."""

from __future__ import annotations

import json
import os
import signal
import sys

from transformers import TrainerCallback

from kinherit.commands.pretrain import pretrain
from kinherit.training.options import DataArguments, InheritanceArguments, KinheritTrainingArguments, ModelArguments


def small_data(tokenizer: str, cache: str) -> DataArguments:
    """Two training articles (11 steps of 32 blocks of 128 per epoch) and one for validation."""
    return DataArguments(corpus=["wikipedia"], tokenizer=tokenizer, block_size=128, max_documents=3,
                         validation_fraction=0.34, cache_dir=cache)


class KillAt(TrainerCallback):
    """SIGKILL this process once the optimizer step `step` has ended (no clean-up of any kind runs)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main(settings: dict) -> None:
    args = KinheritTrainingArguments(
        output_dir=settings["output_dir"], max_steps=settings["max_steps"], eval_steps=4, logging_steps=4,
        save_steps=8, save_total_limit=1, report_to="none", disable_tqdm=True, per_device_train_batch_size=32,
        learning_rate=2e-3, seed=3, use_cpu=True, dataloader_num_workers=0, eval_on_start=True,  # as the runner
        resume_from_checkpoint=settings.get("resume"))
    data = small_data(settings["tokenizer"], settings["cache"])
    inherit = InheritanceArguments(teacher=[settings["teacher"]], inherit_steps=settings["max_steps"] - 4,
                                   temperature=1.0)
    callbacks = [KillAt(settings["kill_at"])] if settings.get("kill_at") else []
    pretrain(ModelArguments(model=settings["model"]), data, inherit, args, callbacks=callbacks)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
