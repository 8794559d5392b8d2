"""`kinherit evaluate CHECKPOINT --corpus SOURCE ...`: validation loss and perplexity of any masked or causal
LM checkpoint on any corpus kinherit reads, one row per corpus.

The numbers are comparable with `eval_loss` in a run's log: the same document split, block length,
packing and fixed validation masks (seeded by `eval_mask_seed`), read from the checkpoint's `run.json`
when it was written by `kinherit pretrain` and not given on the command line (the split of a corpus
the run did not train on follows the defaults). The tokenizer is the checkpoint's own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from kinherit.core.atomic import write_json_atomic
from kinherit.core.errors import KinheritError
from kinherit.data import BlockCollator, corpus_blocks, load_corpus, load_tokenizer
from kinherit.models.lm import perplexity, taught_logits
from kinherit.models.loading import is_checkpoint, load_model, model_kind
from kinherit.training.options import CORPUS_OPTIONS, DataArguments, EvaluateArguments

# The data options that decide which positions an evaluation scores: the run's own (block length, masking)
# and its corpus's (CORPUS_OPTIONS: which documents are held out).
RUN_OPTIONS = ("block_size", "mlm_probability", "eval_mask_seed")


def source_of(item: str) -> str:
    """The source of a `--corpus` item (`DOMAIN=SOURCE` or `SOURCE`): the domain tag changes no position."""
    return DataArguments(corpus=[item]).corpus_specs()[0].source


def recorded_data_options(checkpoint: str) -> dict[str, Any]:
    """The data options a `kinherit pretrain` run recorded in its run.json (none for other checkpoints)."""
    marker = Path(checkpoint) / "run.json"
    return (json.loads(marker.read_text(encoding="utf-8")).get("data") or {}) if marker.exists() else {}


def data_options(options: EvaluateArguments, corpus: str, recorded: dict[str, Any]) -> DataArguments:
    """The data options for one corpus: given on the command line, else the run's own (`recorded`; the
    corpus options only for a corpus the run trained on), else the defaults of `kinherit pretrain`."""
    trained_on = {source_of(item) for item in recorded.get("corpus", [])}
    inherited = RUN_OPTIONS + (CORPUS_OPTIONS if source_of(corpus) in trained_on else ())
    values = {key: getattr(options, key) for key in RUN_OPTIONS + CORPUS_OPTIONS if getattr(options, key) is not None}
    values = {**{key: recorded[key] for key in inherited if recorded.get(key) is not None}, **values}
    return DataArguments(corpus=[corpus], cache_dir=options.cache_dir, **values)


def evaluate(options: EvaluateArguments) -> dict[str, Any]:
    """Evaluate the checkpoint on each corpus; returns {checkpoint, kind, rows} (and writes `--json`)."""
    if not is_checkpoint(options.checkpoint):
        raise KinheritError(f"{options.checkpoint} is not a model checkpoint folder (no config.json there)")
    tokenizer = load_tokenizer(options.checkpoint, options.trust_remote_code)
    model = load_model(options.checkpoint, trust_remote_code=options.trust_remote_code)
    kind = model_kind(model.config)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    recorded = recorded_data_options(options.checkpoint)
    splits = ("train", "validation") if options.split == "all" else (options.split,)
    rows = []
    for item in options.corpus:
        data = data_options(options, item, recorded)
        collator = BlockCollator(tokenizer, kind == "masked", data.mlm_probability, seed=data.eval_mask_seed)
        corpus = load_corpus(data.corpus_specs(), data.cache_dir)
        total, count, documents = 0.0, 0, 0
        entropy = dict.fromkeys(options.temperatures, 0.0)
        for split in splits:
            documents += corpus.count(split)
            blocks = corpus_blocks(corpus, split, tokenizer, data.block_size, data.cache_dir)
            if blocks is None:
                continue
            for logits, labels in taught_logits(model, blocks, collator, options.batch_size, options.chunk_size,
                                                len(tokenizer), kind):
                total += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
                count += labels.numel()
                for tau in options.temperatures:
                    log_p = torch.log_softmax(logits / tau, dim=-1)
                    entropy[tau] += -(log_p.exp() * log_p).sum().item()
        if not count:
            raise KinheritError(f"corpus {item!r} has no {options.split} positions to evaluate (its split holds "
                                f"{documents} documents); use --split all or a larger --validation_fraction")
        loss = total / count
        rows.append({"corpus": item, "split": options.split, "loss": loss, "perplexity": perplexity(loss),
                     "positions": count, "documents": documents,
                     "entropy": {str(tau): value / count for tau, value in entropy.items()},
                     "data": {key: getattr(data, key) for key in RUN_OPTIONS + CORPUS_OPTIONS}})
    result = {"checkpoint": options.checkpoint, "kind": kind, "rows": rows}
    if options.json:
        write_json_atomic(Path(options.json), result)
    return result


def table(result: dict[str, Any]) -> str:
    """The rows as a plain-text table."""
    taus = list(result["rows"][0]["entropy"]) if result["rows"] else []
    lines = [f"{'corpus':30s} {'split':10s} {'loss':>8s} {'ppl':>10s} {'positions':>10s}"
             + "".join(f" {'H@' + tau:>8s}" for tau in taus)]
    lines += [f"{r['corpus']:30s} {r['split']:10s} {r['loss']:8.4f} {r['perplexity']:10.2f} {r['positions']:10d}"
              + "".join(f" {r['entropy'][tau]:8.4f}" for tau in taus) for r in result["rows"]]
    return "\n".join(lines)

