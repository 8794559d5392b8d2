"""`kinherit <command>`: one subcommand per workflow, each a thin layer over a plain function."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from kinherit.errors import KinheritError

REPEATABLE = ("--teacher", "--corpus", "--teacher_weights")
COMMANDS = {
    "pretrain": "pre-train a model by self-learning, or with Knowledge Inheritance from --teacher checkpoints",
    "experiment": "run an experiment YAML (tokenizer, teachers, students, report); re-running skips what is done",
    "report": "regenerate report.md, report.json and the plots of an experiment folder from its logs",
    "cache-teacher": "run teachers once over a corpus and store their top-K predictions for students to read",
    "grow": "initialise a larger model of the same family from a smaller one, preserving its function",
    "tokenizer": "train a byte-level BPE tokenizer on a corpus and save it as an HF tokenizer",
    "presets": "list the named model presets",
    "corpora": "list the built-in offline corpora and whether each is available",
}


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


def parse_dataclasses(argv: Sequence[str], classes: tuple, command: str) -> tuple:
    """Parse `argv` into instances of the dataclasses `classes` (HF argument parser).

    Every problem (unknown flag, bad value, a dataclass's own checks) is a `KinheritError` naming it.
    """
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        def error(self, message: str):
            raise KinheritError(f"{message}; see `kinherit {command} --help`")

    parser = Parser(classes, prog=f"kinherit {command}", description=COMMANDS[command])
    try:
        *parsed, rest = parser.parse_args_into_dataclasses(args=merge_repeated(argv), return_remaining_strings=True)
    except KinheritError:
        raise
    except (ValueError, TypeError) as error:  # the dataclasses' own checks, TrainingArguments' among them
        raise KinheritError(f"invalid option: {str(error).strip()}") from error
    if rest:
        raise KinheritError(f"unknown option(s) {rest}; see `kinherit {command} --help` for the valid ones")
    return tuple(parsed)


def parse_json_arguments(path: str, classes: tuple, command: str) -> tuple:
    """Instances of the dataclasses `classes` from one JSON object mapping field names to values."""
    from transformers import HfArgumentParser

    try:
        return tuple(HfArgumentParser(classes).parse_json_file(path, allow_extra_keys=False))
    except KinheritError as error:
        raise KinheritError(f"{path}: {error}") from error
    except OSError as error:
        raise KinheritError(f"cannot read the arguments file {path} ({error})") from error
    except (ValueError, TypeError) as error:  # unknown keys, bad JSON, the dataclasses' own checks
        raise KinheritError(f"{path}: invalid arguments ({str(error).strip()}); its keys are the options of "
                            f"`kinherit {command} --help` without the dashes") from error


def parse_pretrain_args(argv: Sequence[str]) -> tuple:
    """`kinherit pretrain` options as (ModelArguments, DataArguments, InheritanceArguments, TrainingArguments).

    A single `FILE.json` argument gives them all as one JSON object (what experiments under a launcher use).
    """
    from kinherit.pretrain import DataArguments, KinheritTrainingArguments, ModelArguments
    from kinherit.trainer import InheritanceArguments

    classes = (ModelArguments, DataArguments, InheritanceArguments, KinheritTrainingArguments)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parse_json_arguments(argv[0], classes, "pretrain")
    return parse_dataclasses(argv, classes, "pretrain")


def run_cache_teacher(argv: Sequence[str]) -> int:
    """Build a teacher cache."""
    from kinherit.pretrain import DataArguments, ModelArguments
    from kinherit.teacher_cache import CacheArguments, build_cache
    from kinherit.trainer import InheritanceArguments

    argv = list(argv)
    if not any(a.startswith("--inherit_schedule") for a in argv):
        argv += ["--inherit_schedule", "constant"]  # the schedule belongs to the students, not to the cache
    model, data, inherit, cache = parse_dataclasses(
        argv, (ModelArguments, DataArguments, InheritanceArguments, CacheArguments), "cache-teacher")
    manifest = build_cache(data, inherit, cache, model.trust_remote_code)
    print(f"cached {manifest['positions']} positions at top-{cache.top_k} in {cache.output}: "
          f"{manifest['bytes'] / 2**20:.1f} MiB, {manifest['bytes_per_position']:.1f} bytes per position, "
          f"{manifest['build_seconds']:.0f} s; teacher validation loss {manifest['teacher_val_loss']}")
    return 0


def run_pretrain(argv: Sequence[str]) -> int:
    """Parse `TrainingArguments` plus our dataclasses and train."""
    import torch.distributed as dist

    from kinherit.pretrain import pretrain

    model_args, data, inherit, training = parse_pretrain_args(argv)
    summary = pretrain(model_args, data, inherit, training)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()  # an orderly exit under torchrun / accelerate launch
    print(f"final validation loss {summary['final_val_loss']:.4f} after {summary['steps']} steps; "
          f"model saved to {training.output_dir}")
    return 0


def run_experiment(argv: Sequence[str]) -> int:
    """Run (or resume) every run of an experiment YAML, then write its report."""
    from kinherit.experiment import run_experiment as execute

    parser = argparse.ArgumentParser(prog="kinherit experiment", description=COMMANDS["experiment"])
    parser.add_argument("config", help="experiment YAML file")
    parser.add_argument("--output_dir", help="override the YAML's output_dir")
    parser.add_argument("--only", nargs="+", help="run only these runs (and what they depend on)")
    options = parser.parse_args(argv)
    execute(options.config, output_dir=options.output_dir, only=options.only)
    return 0


def run_report(argv: Sequence[str]) -> int:
    """Rebuild an experiment's report from its run logs."""
    from kinherit.evaluation.report import write_report

    parser = argparse.ArgumentParser(prog="kinherit report", description=COMMANDS["report"])
    parser.add_argument("folder", help="an experiment output folder")
    options = parser.parse_args(argv)
    report = write_report(options.folder)
    print(report["headline"])
    return 0


def run_tokenizer(argv: Sequence[str]) -> int:
    """Train and save a tokenizer."""
    from kinherit.data import CorpusSpec, load_corpus, train_tokenizer

    parser = argparse.ArgumentParser(prog="kinherit tokenizer", description=COMMANDS["tokenizer"])
    parser.add_argument("output", help="folder to save the tokenizer in")
    parser.add_argument("--corpus", nargs="+", default=["wikipedia"], help="corpus sources (see pretrain)")
    parser.add_argument("--vocab_size", type=int, default=8192)
    parser.add_argument("--validation_fraction", type=float, default=0.05,
                        help="held-out documents (the tokenizer is trained on the train split only)")
    options = parser.parse_args(merge_repeated(argv))
    corpus = load_corpus([CorpusSpec(s, validation_fraction=options.validation_fraction) for s in options.corpus])
    tokenizer = train_tokenizer(corpus.train, options.vocab_size, options.output)
    print(f"tokenizer of {len(tokenizer)} tokens saved to {options.output}")
    return 0


def run_grow(argv: Sequence[str]) -> int:
    """Grow a checkpoint into a larger preset or config."""
    from kinherit.grow import grow_checkpoint

    parser = argparse.ArgumentParser(prog="kinherit grow", description=COMMANDS["grow"])
    parser.add_argument("source", help="the smaller model's checkpoint folder (with its tokenizer)")
    parser.add_argument("output", help="folder for the grown checkpoint (must not exist)")
    parser.add_argument("--to", required=True, help="target preset (e.g. llama-4x256) or config.json")
    parser.add_argument("--noise", type=float, default=0.01,
                        help="symmetry-breaking noise, relative to each split weight's spread (sums to zero)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.add_argument("--allow_inexact", action="store_true",
                        help="grow a residual width that is not a whole multiple anyway (function not preserved)")
    options = parser.parse_args(argv)
    report = grow_checkpoint(options.source, options.to, options.output, options.noise, options.seed,
                             options.trust_remote_code, options.allow_inexact)
    print(f"grew {report.family} {report.source['layers']}x{report.source['width']} -> "
          f"{report.target['layers']}x{report.target['width']} (width x{report.width_factor}, depth: "
          f"{report.depth_method}); largest logit difference from the source "
          f"{report.max_abs_logit_difference:.2e}; saved to {options.output}")
    for note in report.notes:
        print(f"  note: {note}")
    return 0


def run_presets(argv: Sequence[str]) -> int:
    """Print the presets."""
    from kinherit.models import GPT_PAPER, ROBERTA_PAPER, preset_names

    argparse.ArgumentParser(prog="kinherit presets", description=COMMANDS["presets"]).parse_args(argv)
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

    argparse.ArgumentParser(prog="kinherit corpora", description=COMMANDS["corpora"]).parse_args(argv)
    for name, reader in BUILTIN_CORPORA.items():
        try:
            first = next(reader())
            status = f"available (first document: {first[0][:40]})"
        except KinheritError as error:
            status = f"missing: {error}"
        print(f"{name:12s} {status}")
    return 0


HANDLERS = {"pretrain": run_pretrain, "experiment": run_experiment, "report": run_report,
            "cache-teacher": run_cache_teacher, "grow": run_grow,
            "tokenizer": run_tokenizer, "presets": run_presets, "corpora": run_corpora}


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
