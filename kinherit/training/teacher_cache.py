"""Teacher cache: run frozen teachers once over a corpus's packed training blocks and keep, for every
position a student is taught on, the teacher's top-K token ids and tempered log-probabilities.

Many students (the paper's analyses train dozens from the same teachers) then read the cache instead
of running the teachers. Layout of a cache folder (sealed, see `kinherit.core.sealed`):

- `cache.json`: the manifest: what was cached (teachers and their weight digests, tokenizer, corpus
  and block layout fingerprints, temperature, K, masking seed, probability and epochs), the teachers'
  validation loss, sizes and build time.
- `epoch{E}-shard{S}.safetensors`: for blocks `S * blocks_per_shard ...` in block-index order, each block's
  top-K ids and log-probabilities (float16 or float32), compressed block by block or plain
  (`kinherit.training.cache_shards`).

Positions: causal LMs are taught at every position that has a next token (block length - 1 per
block), the same in every epoch, so one epoch is stored. Masked LMs are taught at the masked positions
of each epoch's masks, which are a function of (seed, epoch, block) (see `kinherit.data.collate`); the
cache stores `--epochs` epochs of them, and a student that would still inherit in a later epoch is
refused before training starts. A build is written to `OUTPUT.partial/`, one shard file at a time
(each atomically); an interrupted build resumes from the shards already there, and only the complete,
sealed folder is renamed to `OUTPUT`. Several processes or machines (torchrun, or `--parts N --part I`) build
every N-th shard each into the same partial folder; the one that finds every shard there seals the cache.
Opening a cache checks every file's size; each shard's SHA-256 is checked when a process first reads it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import PreTrainedTokenizerBase, TrainingArguments

from kinherit.core.atomic import fsync_folder, write_json_atomic
from kinherit.core.errors import KinheritError
from kinherit.core.locks import exclusive
from kinherit.core.sealed import seal, unseal, verify, verify_file, weights_digest
from kinherit.data import BlockCollator, corpus_blocks, load_corpus, load_tokenizer
from kinherit.data.corpora import Corpus
from kinherit.data.tokenizer import tokenizer_fingerprint
from kinherit.inheritance.cross_vocab import AlignedTarget, SortedTarget
from kinherit.inheritance.targets import TargetFn
from kinherit.inheritance.topk import TopKTarget, check_cached_k
from kinherit.models.lm import (
    IGNORE_INDEX,
    SCORING_TENSORS,
    chunk_positions,
    target_labels,
    taught_positions,
    validation_loss,
)
from kinherit.models.loading import load_config, model_kind
from kinherit.training.cache_shards import ShardReader, write_shard
from kinherit.training.cross_teachers import CrossTokenizerTeachers
from kinherit.training.load_teachers import build_teachers, parse_teacher_specs
from kinherit.training.options import (
    CacheArguments,
    DataArguments,
    InheritanceArguments,
    PartArguments,
    TeacherArguments,
)

logger = logging.getLogger(__name__)

CACHE_FORMAT = "kinherit-teacher-cache-v1"
MANIFEST_NAME = "cache.json"
# Settings a student run must share with the cache it reads (the manifest's `settings`).
MATCHED = ("tokenizer", "corpus", "block_size", "blocks", "kind", "temperature")
MATCHED_MASKED = ("seed", "mlm_probability")


def _fixed_mmap_threshold() -> None:
    """Keep glibc from moving freed vocabulary-sized buffers into a fragmented heap.

    glibc raises its mmap threshold to the size of each freed mmapped block (up to 32 MiB), after which
    the [chunk, vocabulary] temporaries of every batch come from the heap, interleaved with the small
    results that are kept, and the heap can never shrink: building the demo's cache grew to 5.8 GB of
    resident memory, 0.7 GB with the threshold fixed at 128 KiB. No effect off glibc.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


def partial_folder(output: str | os.PathLike) -> Path:
    """Where the cache `output` is built before it is complete: its sibling `NAME.partial`."""
    output = Path(os.path.abspath(output))
    return output.with_name(f"{output.name}.partial")


def build_cache(data: DataArguments, inherit: TeacherArguments, cache: CacheArguments,
                trust_remote_code: bool = False, reuse: bool = False,
                parts: PartArguments | None = None) -> dict[str, Any] | None:
    """Run the teachers of `inherit` over the training blocks of `data` and write the cache; returns its manifest.

    One process builds a given cache at a time (a second waits for it). An existing cache is never overwritten:
    it is an error, or with `reuse` (a runner sharing caches between runs) its verified manifest is returned.
    With `parts` (torchrun, or processes on several machines sharing the output's folder), each process builds
    every `parts`-th shard; the one that finds every shard written seals the cache, the others return None."""
    if not inherit.teacher:
        raise KinheritError("cache-teacher needs at least one --teacher")
    parts = parts or PartArguments(parts=1, part=0)
    output = Path(os.path.abspath(cache.output))
    if output.parent == output:
        raise KinheritError(f"--output {cache.output!r} names no folder; give a new folder's path")
    alone = parts.parts == 1
    with exclusive(output, waiting=f"waiting for {output}: another process is building it") if alone else \
            contextlib.nullcontext():
        if output.exists():
            if not reuse:
                raise KinheritError(f"{output} already exists; a cache is never overwritten: delete it or choose "
                                    "another --output")
            return TeacherCache(output).manifest
        return _build(data, inherit, cache, output, trust_remote_code, parts)


def _build(data: DataArguments, inherit: TeacherArguments, cache: CacheArguments, output: Path,
           trust_remote_code: bool, parts: PartArguments) -> dict[str, Any] | None:
    """Build this process's shards in the partial folder (resuming a build with the same settings); when every
    shard is there, measure the teachers' validation loss and seal the cache into place."""
    _fixed_mmap_threshold()
    partial = partial_folder(output)
    started = time.perf_counter()
    corpus = load_corpus(data.corpus_specs(), data.cache_dir)
    paths, _domains = parse_teacher_specs(inherit.teacher)
    tokenizer_path = data.tokenizer or paths[0]  # default: the (first) teacher's own tokenizer
    tokenizer = load_tokenizer(tokenizer_path, trust_remote_code)
    blocks = corpus_blocks(corpus, "train", tokenizer, data.block_size, data.cache_dir)
    device = (torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available()
              else torch.device("cpu"))
    kind = model_kind(load_config(paths[0], trust_remote_code))
    teachers = build_teachers(inherit, tokenizer, tokenizer_path, kind, corpus.domains, device, trust_remote_code)
    masked = kind == "masked"
    epochs = cache.epochs if masked else 1
    vocab = len(tokenizer)
    settings = cache_settings(tokenizer=tokenizer_fingerprint(tokenizer), corpus=corpus.fingerprint,
                              block_size=data.block_size, blocks=len(blocks), kind=kind,
                              temperature=inherit.temperature, top_k=cache.top_k, epochs=epochs,
                              blocks_per_shard=cache.blocks_per_shard, log_prob_dtype=cache.log_prob_dtype,
                              compression=cache.compression,
                              seed=cache.seed if masked else None,
                              mlm_probability=data.mlm_probability if masked else None,
                              teachers=[{"spec": spec, "weights": weights_digest(path)}
                                        for spec, path in zip(inherit.teacher, paths, strict=True)],
                              teacher_weights=list(inherit.teacher_weights), vocab_size=vocab,
                              cross_tokenizer=getattr(teachers, "method", None))
    with exclusive(partial):  # the processes of one build start it once
        _prepare_partial(partial, settings)
    collator = BlockCollator(tokenizer, masked, data.mlm_probability, seed=cache.seed)
    shards = math.ceil(len(blocks) / cache.blocks_per_shard)
    every = [(epoch, shard) for epoch in range(epochs) for shard in range(shards)]
    cross = isinstance(teachers, CrossTokenizerTeachers)
    for epoch, shard in every[parts.part::parts.parts]:
        path = partial / shard_name(epoch, shard)
        if path.exists():
            continue
        collator.set_epoch(epoch)
        lo, hi = shard * cache.blocks_per_shard, min((shard + 1) * cache.blocks_per_shard, len(blocks))
        logger.info("caching epoch %d, blocks %d-%d of %d", epoch, lo, hi, len(blocks))
        if cross:
            teachers.restore([0, 0, 0.0], main=True)
        target, counts = _cache_blocks(blocks, range(lo, hi), collator, teachers, kind, inherit.temperature,
                                       cache.top_k, vocab, inherit.chunk_size, cache.batch_size, device)
        if cross:  # each shard's counts, written before it: a part or a resumed build counts what it did not cache
            write_json_atomic(path.with_suffix(CROSS_COUNTS), teachers.totals())
        write_shard(path, target, counts, vocab, cache.log_prob_dtype, cache.compression)
    with exclusive(output) if parts.parts > 1 else contextlib.nullcontext():
        if output.exists():  # another part finished it
            return TeacherCache(output).manifest
        missing = [name for name in (shard_name(epoch, shard) for epoch, shard in every)
                   if not (partial / name).exists()]
        if missing:
            logger.info("part %d of %d done; %d shard(s) of other parts still to come (%s, ...)", parts.part,
                        parts.parts, len(missing), missing[0])
            return None
        positions = 0
        for epoch_shard in sorted(partial.glob("epoch*-shard*.safetensors")):
            with safe_open(str(epoch_shard), "pt") as handle:
                positions += int(handle.get_tensor("offsets")[-1])
        shard_bytes = sum(p.stat().st_size for p in partial.glob("epoch*-shard*.safetensors"))
        if cross:  # the whole cache's shares, over every part and every resumed build
            files = [(partial / shard_name(epoch, shard)).with_suffix(CROSS_COUNTS) for epoch, shard in every]
            teachers.restore([sum(values) for values in zip(*(json.loads(f.read_text()) for f in files),
                                                            strict=True)], main=True)
        teacher_val_loss = None
        eval_blocks = corpus_blocks(corpus, "validation", tokenizer, data.block_size, data.cache_dir)
        if eval_blocks is not None and settings["cross_tokenizer"] is None:  # another tokenizer's loss: other units
            eval_collator = BlockCollator(tokenizer, masked, data.mlm_probability, seed=data.eval_mask_seed)
            teacher_val_loss = min(validation_loss(m, eval_blocks, eval_collator, cache.batch_size,
                                                   inherit.chunk_size, vocab, kind)[0] for m in teachers.models)
        manifest = {"format": CACHE_FORMAT, "settings": settings, "positions": positions, "bytes": shard_bytes,
                    "bytes_per_position": shard_bytes / max(positions, 1), "teacher_val_loss": teacher_val_loss,
                    "build_seconds": time.perf_counter() - started, "parts": parts.parts,
                    "cross_tokenizer": teachers.report()}
        seal_cache(partial, output, manifest)  # build.json stays: a build stopped at any point resumes from it
        return manifest


CROSS_COUNTS = ".cross.json"  # beside each shard of a cross-tokenizer cache: its taught, aligned and mapped counts


def shard_name(epoch: int, shard: int) -> str:
    """The file of one shard of the cache: the targets of blocks shard * blocks_per_shard ... in one epoch."""
    return f"epoch{epoch}-shard{shard:05d}.safetensors"


def cache_settings(*, tokenizer: str, corpus: str, block_size: int, blocks: int, kind: str, temperature: float,
                   top_k: int, epochs: int, blocks_per_shard: int, log_prob_dtype: str, compression: str,
                   seed: int | None,
                   mlm_probability: float | None, teachers: list[dict[str, str]], teacher_weights: list[float],
                   vocab_size: int, cross_tokenizer: str | None) -> dict[str, Any]:
    """A manifest's `settings`: what a run must share with the cache (MATCHED) and what reading it needs. Every
    key is required, so that a cache written outside `build_cache` (a benchmark's) cannot lack one."""
    return {"tokenizer": tokenizer, "corpus": corpus, "block_size": block_size, "blocks": blocks, "kind": kind,
            "temperature": temperature, "top_k": top_k, "epochs": epochs, "blocks_per_shard": blocks_per_shard,
            "log_prob_dtype": log_prob_dtype, "compression": compression, "seed": seed,
            "mlm_probability": mlm_probability,
            "teachers": teachers, "teacher_weights": teacher_weights, "vocab_size": vocab_size,
            "cross_tokenizer": cross_tokenizer}


def seal_cache(partial: Path, output: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest into the finished `partial` folder, seal it and move it to `output`: a cache folder
    exists only complete. A build stopped after sealing, before the move, is sealed anew."""
    unseal(partial)
    write_json_atomic(partial / MANIFEST_NAME, manifest)
    seal(partial)
    os.replace(partial, output)
    fsync_folder(output.parent)


def batch_top_k(target_of: TargetFn, labels: torch.Tensor, blocks: int, top_k: int, vocab: int,
                chunk_size: int | None) -> tuple[TopKTarget, list[int]]:
    """The top-K targets of one batch's taught positions (`labels` flattened, `blocks` blocks), one chunk of
    positions at a time so that no [positions, V] tensor exists for all of them at once, and each block's count
    of taught positions (its rows in a shard)."""
    counts = (labels != IGNORE_INDEX).view(blocks, -1).sum(1).tolist()
    ids, log_probs = [], []
    for chunk in taught_positions(labels).split(chunk_positions(chunk_size, vocab, SCORING_TENSORS)):
        target = target_of(chunk)
        top = target.top_k(min(top_k, vocab)) if isinstance(target, AlignedTarget) else \
            TopKTarget.from_log_probs(target.log_probs, min(top_k, vocab))
        ids.append(top.ids.cpu())
        log_probs.append(top.log_probs.cpu())
    return TopKTarget(torch.cat(ids), torch.cat(log_probs)), counts


def _prepare_partial(partial: Path, settings: dict[str, Any]) -> None:
    """Resume a partial build with the same settings; restart one with other settings; refuse anything else."""
    build = partial / "build.json"
    if partial.exists():
        if not build.exists():
            raise KinheritError(f"{partial} exists but is not a partial cache build (no build.json); move it away")
        if json.loads(build.read_text())["settings"] == settings:
            logger.info("resuming the cache build in %s", partial)
            return
        logger.warning("%s holds a partial build with other settings; starting over", partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    write_json_atomic(build, {"settings": settings})


def _cache_blocks(blocks, indices: range, collator: BlockCollator, teachers, kind: str, temperature: float,
                  top_k: int, vocab: int, chunk_size: int | None, batch_size: int,
                  device: torch.device) -> tuple[TopKTarget, list[int]]:
    """Top-K targets of the taught positions of `blocks[indices]` (rows in block order) and each block's count."""
    ids, log_probs, counts = [], [], []
    for start in range(indices.start, indices.stop, batch_size):
        rows = [blocks[i] for i in range(start, min(start + batch_size, indices.stop))]
        batch = {key: value.to(device) for key, value in collator(rows).items()}
        labels = target_labels(batch["labels"], kind)
        with teachers.targets(batch, labels, temperature, vocab) as target_of:
            top, batch_counts = batch_top_k(target_of, labels, len(rows), top_k, vocab, chunk_size)
        counts += batch_counts
        ids.append(top.ids)
        log_probs.append(top.log_probs)
    return TopKTarget(torch.cat(ids), torch.cat(log_probs)), counts


class TeacherCache:
    """A built cache, verified on opening; `target` returns the top-K targets of a batch's taught positions.

    A batch's targets read only each position's first K tokens (the loss's `top_k`): a cache built once with a
    large K then serves a small-K run at the small K's reading cost, not the large K's.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_dir() and partial_folder(self.path).is_dir():
            raise KinheritError(f"teacher cache {self.path} is incomplete (its build was interrupted); re-run the same "
                                "`kinherit cache-teacher` command to finish it")
        if not self.path.is_dir():
            raise KinheritError(f"teacher cache {self.path} does not exist; build it with `kinherit cache-teacher`")
        self.entries = verify(self.path, "teacher cache", hash_now=lambda name: not name.endswith(".safetensors"))
        self.manifest = json.loads((self.path / MANIFEST_NAME).read_text())
        if self.manifest.get("format") != CACHE_FORMAT:
            raise KinheritError(f"{self.path} is not a {CACHE_FORMAT} teacher cache")
        self.settings = self.manifest["settings"]
        self.held = min(self.settings["top_k"], self.settings["vocab_size"])  # a K above V was built as V
        self._shards: dict[tuple[int, int], ShardReader] = {}

    def report(self) -> dict[str, Any] | None:
        """What a teacher with another tokenizer reached when the cache was built (None: the same tokenizer)."""
        return self.manifest.get("cross_tokenizer")

    @property
    def teacher_val_loss(self) -> float | None:
        """The (best) teacher's validation loss measured when the cache was built."""
        return self.manifest.get("teacher_val_loss")

    def check_run(self, run: dict[str, Any], epochs_needed: int) -> None:
        """Refuse a run whose tokenizer, data, block layout, kind, temperature or masking differ from the cache's."""
        keys = MATCHED + (MATCHED_MASKED if self.settings["kind"] == "masked" else ())
        differ = [f"{key}: cache {self.settings[key]!r}, run {run[key]!r}" for key in keys
                  if self.settings[key] != run[key]]
        if differ:
            raise KinheritError(f"teacher cache {self.path} does not match this run ({'; '.join(differ)}); rebuild the "
                                "cache with the run's settings or change the run")
        if epochs_needed > self.settings["epochs"]:
            raise KinheritError(f"this run inherits over {epochs_needed} epochs of masks but the cache {self.path} "
                                f"holds {self.settings['epochs']}; rebuild it with --epochs {epochs_needed} or "
                                "inherit over fewer steps")

    @contextlib.contextmanager
    def targets(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor, temperature: float, vocab: int,
                top_k: int | None = None) -> Iterator[TargetFn]:
        """The cached rows of the batch's taught positions, their first `top_k` tokens (None: all the cache holds);
        a chunk of flattened positions picks its rows. The temperature, vocabulary and K were checked against the
        run when the cache was opened (`open_teacher_cache`)."""
        positions = taught_positions(labels)
        counts = (labels.view(inputs["input_ids"].shape) != IGNORE_INDEX).sum(1)
        cached = self.target(inputs["block_index"], int(inputs["mask_epoch"]), counts, labels.device,
                             top_k or self.held)
        row = torch.full_like(labels, -1)
        row[positions] = torch.arange(positions.numel(), device=labels.device)
        if self.settings.get("cross_tokenizer") is None:
            yield lambda chunk: TopKTarget(cached.ids[row[chunk]], cached.log_probs[row[chunk]])
        else:
            yield lambda chunk: cross_tokenizer_rows(cached.ids[row[chunk]], cached.log_probs[row[chunk]],
                                                     self.settings["cross_tokenizer"])

    def _shard(self, epoch: int, shard: int) -> ShardReader:
        key = (epoch, shard)
        if key not in self._shards:
            path = self.path / shard_name(epoch, shard)
            verify_file(path, self.entries[path.name], "teacher cache")  # each shard hashed once, when first read
            settings = self.settings
            self._shards[key] = ShardReader(path, settings.get("compression", "none"), self.held,
                                            settings["vocab_size"], settings["log_prob_dtype"])
        return self._shards[key]

    def target(self, block_index: torch.Tensor, epoch: int, counts: torch.Tensor, device: torch.device,
               columns: int) -> TopKTarget:
        """The first `columns` tokens of the cached rows of these blocks (in order), checked against the positions
        the batch is taught on."""
        if self.settings["kind"] != "masked":
            epoch = 0
        if epoch >= self.settings["epochs"]:
            raise KinheritError(f"teacher cache {self.path} holds masks for {self.settings['epochs']} epoch(s); "
                                f"the run reached epoch {epoch + 1} while still inheriting")
        per_shard = self.settings["blocks_per_shard"]
        positions = int(counts.sum())
        ids = torch.empty(positions, columns, dtype=torch.long)
        log_probs = torch.empty(positions, columns, dtype=torch.float32)
        row = 0
        for block, count in zip(block_index.tolist(), counts.tolist(), strict=True):
            if not 0 <= block < self.settings["blocks"]:
                raise KinheritError(f"block {block} is not in teacher cache {self.path}")
            shard = self._shard(epoch, block // per_shard)
            lo, hi = shard.rows(block % per_shard)
            if hi - lo != count:
                raise KinheritError(f"teacher cache {self.path} holds {hi - lo} positions for block {block} but the "
                                    f"run is taught on {count}: the masks differ (seed or masking settings)")
            # only the columns the run reads, converted once, straight into the batch's tensors
            ids[row:row + count], log_probs[row:row + count] = shard.read(block % per_shard, columns)
            row += count
        return TopKTarget(ids.to(device), log_probs.to(device))


def cross_tokenizer_rows(ids: torch.Tensor, log_probs: torch.Tensor, method: str) -> AlignedTarget:
    """Cached rows of a teacher with another tokenizer: rows without an aligned teacher position hold -inf."""
    aligned = torch.isfinite(log_probs[:, 0])
    if method == "uld":
        return AlignedTarget(SortedTarget(log_probs[aligned].exp()), aligned)
    return AlignedTarget(TopKTarget(ids[aligned], log_probs[aligned]), aligned)


def open_teacher_cache(inherit: InheritanceArguments, training_args: TrainingArguments, data: DataArguments,
                       tokenizer: PreTrainedTokenizerBase, corpus: Corpus, kind: str,
                       blocks: int) -> TeacherCache | None:
    """The `--teacher_cache`, checked against this run (tokenizer, data, block layout, kind, temperature, masks)."""
    if not inherit.teacher_cache:
        return None
    cache = TeacherCache(inherit.teacher_cache)
    check_cached_k(inherit.top_k, cache.held)
    steps = inherit.inherit_steps or training_args.max_steps
    seen = steps * training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * \
        training_args.world_size
    run = {"tokenizer": tokenizer_fingerprint(tokenizer), "corpus": corpus.fingerprint, "block_size": data.block_size,
           "blocks": blocks, "kind": kind, "temperature": inherit.temperature, "seed": training_args.seed,
           "mlm_probability": data.mlm_probability}
    if cache.settings.get("cross_tokenizer") not in (None, inherit.cross_tokenizer):
        raise KinheritError(f"teacher cache {cache.path} holds --cross_tokenizer {cache.settings['cross_tokenizer']} "
                            f"targets, but this run asks for {inherit.cross_tokenizer}; rebuild the cache or match it")
    cache.check_run(run, epochs_needed=math.ceil(seen / max(blocks, 1)) if kind == "masked" else 1)
    return cache
