"""Bytes per position of a teacher cache in each shard format, against what reading a student batch costs in each.

The cache's rows (top-K token ids and tempered log-probabilities) are read back whole and written again in every
format `kinherit cache-teacher --compression` offers (zstd: each block compressed on its own; none: plain
tensors). For each it reports the bytes on disk per position and the milliseconds to read the rows of one
student batch (`--batch_blocks` blocks drawn at random, as a shuffled run reads them, from the page cache), the
best of `--repeats` passes over the same `--batches` batches. For scale, ids packed in as few bits as the
vocabulary needs are given by arithmetic.

    python benchmarks/cache_bytes.py CACHE_FOLDER [--batch_blocks 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path

import torch

from kinherit.inheritance.topk import TopKTarget
from kinherit.training.cache_shards import COMPRESSIONS, ShardReader, write_shard


def _shard_reader(path: Path, settings: dict, compression: str) -> ShardReader:
    held = min(settings["top_k"], settings["vocab_size"])
    return ShardReader(path, compression, held, settings["vocab_size"], settings["log_prob_dtype"])


def measure(folder: Path, batch_blocks: int, batches: int, repeats: int) -> dict:
    """Each format's bytes per position and read milliseconds per batch, for the rows of the cache in `folder`."""
    settings = json.loads((folder / "cache.json").read_text())["settings"]
    held = min(settings["top_k"], settings["vocab_size"])
    shards = sorted(folder.glob("epoch*-shard*.safetensors"))
    rows = []  # per shard: (target, counts)
    for path in shards:
        reader = _shard_reader(path, settings, settings.get("compression", "none"))
        blocks = [reader.read(block, held) for block in range(len(reader.offsets) - 1)]
        rows.append((TopKTarget(torch.cat([b[0] for b in blocks]).long(), torch.cat([b[1] for b in blocks]).float()),
                     [len(b[0]) for b in blocks]))
    positions = sum(sum(counts) for _target, counts in rows)
    every_block = [(shard, block) for shard, (_target, counts) in enumerate(rows) for block in range(len(counts))]
    draw = random.Random(0)
    chosen = [draw.sample(every_block, min(batch_blocks, len(every_block))) for _ in range(batches)]
    report = {"positions": positions, "top_k": held, "vocab_size": settings["vocab_size"],
              "log_prob_dtype": settings["log_prob_dtype"], "batch_blocks": batch_blocks,
              "packed_id_bits": max(1, math.ceil(math.log2(settings["vocab_size"]))), "formats": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for compression in COMPRESSIONS:
            paths = [Path(scratch) / f"{compression}-{index}.safetensors" for index in range(len(rows))]
            for path, (target, counts) in zip(paths, rows, strict=True):
                write_shard(path, target, counts, settings["vocab_size"], settings["log_prob_dtype"], compression)
            readers = [_shard_reader(path, settings, compression) for path in paths]
            for batch in chosen:  # once, so that every page is in the page cache
                [readers[shard].read(block, held) for shard, block in batch]
            best = math.inf
            for _ in range(repeats):
                started = time.perf_counter()
                for batch in chosen:
                    [readers[shard].read(block, held) for shard, block in batch]
                best = min(best, (time.perf_counter() - started) / len(chosen))
            report["formats"][compression] = {
                "bytes_per_position": sum(p.stat().st_size for p in paths) / max(positions, 1),
                "read_ms_per_batch": best * 1e3}
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cache", help="a teacher cache folder (`kinherit cache-teacher --output`)")
    parser.add_argument("--batch_blocks", type=int, default=16, help="blocks per student batch (the demo's 16)")
    parser.add_argument("--batches", type=int, default=50, help="random batches timed per pass")
    parser.add_argument("--repeats", type=int, default=5, help="passes; the best is reported")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    report = measure(Path(args.cache), args.batch_blocks, args.batches, args.repeats)
    packed = report["packed_id_bits"] * report["top_k"] / 8
    print(f"{report['positions']:,} positions at K = {report['top_k']}, vocabulary {report['vocab_size']:,} "
          f"(ids packed in {report['packed_id_bits']} bits would take {packed:.0f} B/position):")
    for name, entry in report["formats"].items():
        print(f"  {name}: {entry['bytes_per_position']:.1f} bytes per position; reading one batch of "
              f"{report['batch_blocks']} blocks takes {entry['read_ms_per_batch']:.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
