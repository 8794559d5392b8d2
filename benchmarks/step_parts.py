"""Time one training step of the demo-sized pair: self-learning, our KI step, and a naive KD step.

A first measurement, not yet the full benchmark of the performance work: models are randomly
initialised (timings do not depend on the weights), one process, medians after warm-up.

    python benchmarks/step_parts.py --help
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import PreTrainedTokenizerFast, TrainingArguments

from kinherit.inheritance.teachers import TeacherSet, freeze
from kinherit.models import load_model
from kinherit.trainer import InheritanceArguments, InheritanceTrainer


def main() -> None:
    """Parse options, build the pair, time each kind of step and print the medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="llama-4x256")
    parser.add_argument("--teacher", default="llama-2x128")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=6)
    options = parser.parse_args()

    from tokenizers import Tokenizer, models

    # A word-level stand-in tokenizer: the step only reads its size and special ids.
    vocab = {f"t{i}": i for i in range(options.vocab)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                        pad_token="t1", eos_token="t2", bos_token="t3")
    torch.manual_seed(0)
    student = load_model(options.student, tokenizer, options.block)
    teacher = freeze(load_model(options.teacher, tokenizer, options.block))
    ids = torch.randint(0, options.vocab, (options.batch, options.block))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    args = TrainingArguments("/tmp/kinherit-bench", report_to="none", use_cpu=True)

    def trainer(with_teacher: bool, fused: bool = True) -> InheritanceTrainer:
        inherit = InheritanceArguments(inherit_steps=10**9, temperature=1.0, fused_loss=fused)
        return InheritanceTrainer(model=student, args=args, teachers=TeacherSet([teacher]) if with_teacher else None,
                                  inherit_args=inherit, vocab_size=options.vocab)

    def ours(t: InheritanceTrainer):
        def step():
            student.zero_grad()
            t.compute_loss(student, batch).backward()
        return step

    def naive():
        student.zero_grad()
        out = student(**batch)
        with torch.no_grad():
            target = torch.log_softmax(teacher(input_ids=ids).logits, -1)
        kl = torch.nn.functional.kl_div(torch.log_softmax(out.logits, -1), target, log_target=True,
                                        reduction="batchmean")
        (0.5 * out.loss + 0.5 * kl).backward()

    steps = {"self": ours(trainer(False)), "ki": ours(trainer(True)), "ki_autograd": ours(trainer(True, False)),
             "naive": naive}
    medians = {}
    for name, step in steps.items():
        for _ in range(2):
            step()
        times = []
        for _ in range(options.repeats):
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
        medians[name] = statistics.median(times)
        print(f"{name:12s} median {medians[name]:.3f} s  (min {min(times):.3f}, max {max(times):.3f})")
    print(f"ki/self {medians['ki'] / medians['self']:.2f}   naive/ki {medians['naive'] / medians['ki']:.2f}   "
          f"ki_autograd/ki {medians['ki_autograd'] / medians['ki']:.2f}")


if __name__ == "__main__":
    main()
