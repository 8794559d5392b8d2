"""`kinherit <command>`: one subcommand per workflow, each a thin layer over a plain function."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from kinherit.core.errors import KinheritError

COMMANDS = {
    "pretrain": "pre-train a model by self-learning, or with Knowledge Inheritance from --teacher checkpoints",
    "plan": "forecast what KI will save for a student, teacher and budget from short pilots of both runs",
    "experiment": "run an experiment YAML (tokenizer, teachers, students, report); re-running skips what is done",
    "report": "regenerate report.md, report.json and the plots of the experiments in a folder from their logs",
    "evaluate": "validation loss and perplexity of a checkpoint on one or more corpora, as a run's eval_loss",
    "finetune": "fine-tune a checkpoint for sentence classification over seeds (dev-chosen settings, test accuracy)",
    "cache-teacher": "run teachers once over a corpus and store their top-K predictions for students to read",
    "import-gguf": "turn a GGUF file (a small open model as llama.cpp shares it) into a checkpoint folder to teach",
    "grow": "initialise a larger model of the same family from a smaller one, preserving its function",
    "tokenizer": "train a byte-level BPE tokenizer on a corpus and save it as an HF tokenizer",
    "prepare": "split, tokenise and pack a corpus into the block cache once, for every run that uses it",
    "presets": "list the named model presets",
    "corpora": "list the built-in offline corpora and whether each is available",
}


def parse(argv: Sequence[str], classes: tuple, command: str, positional: Sequence[str] = ()) -> tuple:
    """The options of `kinherit COMMAND` (see `kinherit.training.options.parse_arguments`)."""
    from kinherit.training.options import parse_arguments

    return parse_arguments(argv, classes, f"kinherit {command}", COMMANDS[command], positional)


def run_cache_teacher(argv: Sequence[str]) -> int:
    """Build a teacher cache."""
    from kinherit.training.options import CacheArguments, DataArguments, ModelArguments, PartArguments, TeacherArguments
    from kinherit.training.teacher_cache import build_cache

    model, data, teachers, cache, parts = parse(
        argv, (ModelArguments, DataArguments, TeacherArguments, CacheArguments, PartArguments), "cache-teacher")
    manifest = build_cache(data, teachers, cache, model.trust_remote_code, parts=parts)
    if manifest is None:
        print(f"part {parts.part} of {parts.parts} cached; the process that finishes the last part seals the cache")
        return 0
    print(f"cached {manifest['positions']} positions at top-{cache.top_k} in {cache.output}: "
          f"{manifest['bytes'] / 2**20:.1f} MiB, {manifest['bytes_per_position']:.1f} bytes per position, "
          f"{manifest['build_seconds']:.0f} s; teacher validation loss {manifest['teacher_val_loss']}")
    return 0


def run_pretrain(argv: Sequence[str]) -> int:
    """Parse `TrainingArguments` plus our dataclasses and train."""
    import torch.distributed as dist

    from kinherit.commands.pretrain import pretrain
    from kinherit.training.options import parse_pretrain_args

    model_args, data, inherit, training = parse_pretrain_args(argv)
    summary = pretrain(model_args, data, inherit, training)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()  # an orderly exit under torchrun / accelerate launch
    loss = summary["final_val_loss"]
    evaluated = f"final validation loss {loss:.4f}" if loss is not None else "no validation split"
    print(f"{evaluated} after {summary['steps']} steps; model saved to {training.output_dir}")
    return 0


def run_plan(argv: Sequence[str]) -> int:
    """Run the pilots, print the forecast and where its JSON and plot are."""
    from kinherit.experiment.plan import PlanArguments, plan, summary_lines
    from kinherit.training.options import PRETRAIN_CLASSES

    options, *pretrain_options = parse(argv, (PlanArguments, *PRETRAIN_CLASSES), "plan")
    result = plan(*pretrain_options, options)
    print("\n".join(summary_lines(result)))
    print(f"forecast and pilots: {pretrain_options[-1].output_dir}/plan.json, plot: {result['plot']}")
    return 0


def run_experiment(argv: Sequence[str]) -> int:
    """Run (or resume) every run of an experiment YAML, then write its report."""
    from kinherit.experiment.runner import run_experiment as execute
    from kinherit.training.options import ExperimentArguments

    (options,) = parse(argv, (ExperimentArguments,), "experiment", positional=("config",))
    execute(options.config, output_dir=options.output_dir, only=options.only or None, finetune=options.finetune)
    return 0


def run_evaluate(argv: Sequence[str]) -> int:
    """Evaluate a checkpoint on corpora and print the table."""
    from kinherit.commands.evaluate import evaluate, table
    from kinherit.training.options import EvaluateArguments

    (options,) = parse(argv, (EvaluateArguments,), "evaluate", positional=("checkpoint",))
    print(table(evaluate(options)))
    return 0


def run_finetune(argv: Sequence[str]) -> int:
    """Fine-tune a checkpoint on a classification task and print the test scores."""
    from kinherit.commands.finetune import finetune, table
    from kinherit.training.options import FinetuneArguments

    (options,) = parse(argv, (FinetuneArguments,), "finetune", positional=("checkpoint",))
    print(table(finetune(options)))
    return 0


def run_report(argv: Sequence[str]) -> int:
    """Rebuild an experiment's report from its run logs."""
    from kinherit.experiment.report import experiment_names, write_report
    from kinherit.training.options import ReportArguments

    (options,) = parse(argv, (ReportArguments,), "report", positional=("folder",))
    for name in [options.experiment] if options.experiment else experiment_names(options.folder):
        report = write_report(options.folder, name)
        print(f"{name}: {report['headline']}")
    return 0


def run_tokenizer(argv: Sequence[str]) -> int:
    """Train and save a tokenizer on the training split of the corpus the data options describe."""
    from kinherit.data import load_corpus, train_tokenizer
    from kinherit.data.tokenizer import check_tokenizer_output
    from kinherit.training.options import DataArguments, TokenizerArguments

    options, data = parse(argv, (TokenizerArguments, DataArguments), "tokenizer", positional=("output",))
    check_tokenizer_output(options.output, options.overwrite)  # before the corpus is read
    corpus = load_corpus(data.corpus_specs(), data.cache_dir)
    tokenizer = train_tokenizer(corpus.train, data.vocab_size, options.output, replace=options.overwrite)
    print(f"tokenizer of {len(tokenizer)} tokens saved to {options.output}")
    return 0


def run_prepare(argv: Sequence[str]) -> int:
    """Prepare a corpus's blocks."""
    from kinherit.commands.prepare import prepare
    from kinherit.training.options import DataArguments, PartArguments

    parts, data = parse(argv, (PartArguments, DataArguments), "prepare")
    summary = prepare(data, parts)
    for split in ("train", "validation"):
        part = summary.get(split)
        if part == "waiting":
            print(f"{split}: part {parts.part} of {parts.parts} tokenised; the process that finishes the last part "
                  "packs the blocks")
        elif part:
            print(f"{split}: {part['documents']:,} documents, {part['blocks']:,} blocks of {data.block_size} tokens "
                  f"in {part['file']}")
    return 0


def run_grow(argv: Sequence[str]) -> int:
    """Grow a checkpoint into a larger preset or config."""
    from kinherit.commands.grow import grow_checkpoint
    from kinherit.training.options import GrowArguments

    (options,) = parse(argv, (GrowArguments,), "grow", positional=("source", "output"))
    report = grow_checkpoint(options.source, options.to, options.output, options.noise, options.seed,
                             options.trust_remote_code, options.allow_inexact)
    print(f"grew {report.family} {report.source['layers']}x{report.source['width']} -> "
          f"{report.target['layers']}x{report.target['width']} (width x{report.width_factor}, depth: "
          f"{report.depth_method}); largest logit difference from the source "
          f"{report.max_abs_logit_difference:.2e}; saved to {options.output}")
    for note in report.notes:
        print(f"  note: {note}")
    return 0


def run_import_gguf(argv: Sequence[str]) -> int:
    """Write a GGUF file's model and tokenizer as a plain checkpoint folder."""
    from kinherit.models.gguf_import import import_gguf
    from kinherit.training.options import ImportArguments

    (options,) = parse(argv, (ImportArguments,), "import-gguf", positional=("source", "output"))
    written = import_gguf(options.source, options.output)
    print(f"imported a {written['model_type']} model of {written['parameters']:,} parameters and a "
          f"{written['vocab_size']}-token tokenizer into {written['output']}")
    return 0


def run_presets(argv: Sequence[str]) -> int:
    """Print the presets."""
    from kinherit.models.presets import GPT_PAPER, ROBERTA_PAPER, preset_names
    from kinherit.training.options import NoArguments

    parse(argv, (NoArguments,), "presets")
    shapes = {**ROBERTA_PAPER, **GPT_PAPER}
    for name in preset_names():
        shape = shapes.get(name)
        detail = f"{shape.layers} layers x {shape.width}, {shape.heads} heads, FFN {shape.ffn}" if shape else "small"
        print(f"{name:22s} {detail}")
    print("Any FAMILY-LAYERSxWIDTH (FAMILY: roberta, bert, gpt2, llama) also works, e.g. llama-3x192.")
    return 0


def run_corpora(argv: Sequence[str]) -> int:
    """Print the built-in corpora and whether their files are present."""
    from kinherit.data import BUILTIN_CORPORA
    from kinherit.training.options import NoArguments

    parse(argv, (NoArguments,), "corpora")
    for name, reader in BUILTIN_CORPORA.items():
        try:
            first = next(reader())
            status = f"available (first document: {first[0][:40]})"
        except KinheritError as error:
            status = f"missing: {error}"
        print(f"{name:12s} {status}")
    return 0


HANDLERS = {"pretrain": run_pretrain, "plan": run_plan, "experiment": run_experiment, "report": run_report,
            "evaluate": run_evaluate, "finetune": run_finetune,
            "cache-teacher": run_cache_teacher, "import-gguf": run_import_gguf, "grow": run_grow,
            "tokenizer": run_tokenizer, "prepare": run_prepare, "presets": run_presets, "corpora": run_corpora}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `kinherit` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in HANDLERS:
        lines = ["usage: kinherit <command> [options]   (kinherit <command> --help for its options)", ""]
        lines += [f"  {name:12s} {text}" for name, text in COMMANDS.items()]
        print("\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nkinherit: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return HANDLERS[argv[0]](argv[1:])
    except KinheritError as error:
        print(f"kinherit: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a disk full, a folder not writable: what the system said, without a traceback
        print(f"kinherit: error: {error}", file=sys.stderr)
        return 1
