"""`kinherit evaluate CHECKPOINT --corpus SOURCE ...`: validation loss and perplexity of any masked or causal
LM checkpoint on any corpus kinherit reads, one row per corpus.

The numbers are comparable with `eval_loss` in a run's log: the same document split, block length,
packing and fixed validation masks (seeded by `eval_mask_seed`), read from the checkpoint's `run.json`
when it was written by `kinherit pretrain` and not given on the command line (the split of a corpus
the run did not train on follows the defaults). The tokenizer is the checkpoint's own.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from kinherit.atomic import write_json_atomic
from kinherit.data import BlockCollator, build_blocks, load_corpus, load_tokenizer
from kinherit.errors import KinheritError
from kinherit.lm import validation_loss
from kinherit.models import is_checkpoint, load_model, model_kind
from kinherit.options import DataArguments, EvaluateArguments

# The data options that decide which positions an evaluation scores: the run's own (block length, masking)
# and its corpus's (which documents are held out).
RUN_OPTIONS = ("block_size", "mlm_probability", "eval_mask_seed")
CORPUS_OPTIONS = ("validation_fraction", "text_field", "max_documents")


def source_of(item: str) -> str:
    """The source of a `--corpus` item (`DOMAIN=SOURCE` or `SOURCE`): the domain tag changes no position."""
    return DataArguments(corpus=[item]).corpus_specs()[0].source


def data_options(options: EvaluateArguments, corpus: str) -> DataArguments:
    """The data options for one corpus: given on the command line, else the run's own (its run.json; the
    corpus options only for a corpus the run trained on), else the defaults of `kinherit pretrain`."""
    recorded: dict[str, Any] = {}
    marker = Path(options.checkpoint) / "run.json"
    if marker.exists():
        recorded = json.loads(marker.read_text(encoding="utf-8")).get("data") or {}
    trained_on = {source_of(item) for item in recorded.get("corpus", [])}
    inherited = RUN_OPTIONS + (CORPUS_OPTIONS if source_of(corpus) in trained_on else ())
    values = {key: getattr(options, key) for key in RUN_OPTIONS + CORPUS_OPTIONS if getattr(options, key) is not None}
    values = {**{key: recorded[key] for key in inherited if recorded.get(key) is not None}, **values}
    return DataArguments(corpus=[corpus], cache_dir=options.cache_dir, **values)


def evaluate(options: EvaluateArguments) -> dict[str, Any]:
    """Evaluate the checkpoint on each corpus; returns {checkpoint, kind, data, rows} (and writes `--json`)."""
    if not is_checkpoint(options.checkpoint):
        raise KinheritError(f"{options.checkpoint} is not a model checkpoint folder (no config.json there)")
    tokenizer = load_tokenizer(options.checkpoint, options.trust_remote_code)
    model = load_model(options.checkpoint, trust_remote_code=options.trust_remote_code)
    kind = model_kind(model.config)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for item in options.corpus:
        data = data_options(options, item)
        collator = BlockCollator(tokenizer, kind == "masked", data.mlm_probability, seed=data.eval_mask_seed)
        corpus = load_corpus(data.corpus_specs())
        parts = {"validation": [corpus.validation], "train": [corpus.train],
                 "all": [corpus.train, corpus.validation]}[options.split]
        total, count, documents = 0.0, 0, 0
        for split, docs in zip(("train", "validation") if options.split == "all" else (options.split,), parts,
                               strict=True):
            documents += len(docs)
            if not len(docs):
                continue
            blocks = build_blocks(docs, tokenizer, data.block_size, corpus.domains, corpus.fingerprint, split,
                                  data.cache_dir)
            loss, positions = validation_loss(model, blocks, collator, options.batch_size, options.chunk_size,
                                              len(tokenizer), kind)
            if positions:
                total += loss * positions
                count += positions
        if not count:
            raise KinheritError(f"corpus {item!r} has no {options.split} positions to evaluate (its split holds "
                                f"{documents} documents); use --split all or a larger --validation_fraction")
        loss = total / count
        rows.append({"corpus": item, "split": options.split, "loss": loss, "perplexity": math.exp(min(loss, 50.0)),
                     "positions": count, "documents": documents,
                     "data": {key: getattr(data, key) for key in RUN_OPTIONS + CORPUS_OPTIONS}})
    result = {"checkpoint": options.checkpoint, "kind": kind, "rows": rows}
    if options.json:
        write_json_atomic(Path(options.json), result)
    return result


def table(result: dict[str, Any]) -> str:
    """The rows as a plain-text table."""
    lines = [f"{'corpus':30s} {'split':10s} {'loss':>8s} {'ppl':>10s} {'positions':>10s}"]
    lines += [f"{r['corpus']:30s} {r['split']:10s} {r['loss']:8.4f} {r['perplexity']:10.2f} {r['positions']:10d}"
              for r in result["rows"]]
    return "\n".join(lines)

