"""Bytes per position of a teacher cache, and what packing or compressing its shards would save at what read cost.

For each field of the cache's shards (top-K token ids, tempered log-probabilities) it reports the bytes on disk
per position as stored today, the bytes if ids were packed in as few bits as the vocabulary needs, and the
zstd-compressed size (levels 1 and 3, and for the half-precision log-probabilities also with their bytes
shuffled, high bytes first, which groups the exponents) with the decompression speed, against the speed of
copying the same bytes in memory (what reading today's memory-mapped shard from the page cache costs). The cost
is then put beside a student step: the milliseconds per step to decompress one batch's rows.

    python benchmarks/cache_bytes.py CACHE_FOLDER [--batch_positions 2032] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from safetensors.numpy import load_file


def _best_seconds(action, repeats: int = 5) -> float:
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def _codec_row(raw: bytes, level: int) -> dict:
    codec = pa.Codec("zstd", compression_level=level)
    packed = codec.compress(raw, asbytes=True)
    seconds = _best_seconds(lambda: codec.decompress(packed, decompressed_size=len(raw), asbytes=True))
    return {"ratio": len(raw) / len(packed), "decompress_mb_per_s": len(raw) / seconds / 1e6}


def measure(folder: Path, batch_positions: int) -> dict:
    """The cache's bytes per position by field, and each field's compression ratio and read speeds."""
    manifest = json.loads((folder / "cache.json").read_text())
    vocab = manifest["settings"]["vocab_size"]
    shards = sorted(folder.glob("epoch*-shard*.safetensors"))
    fields = {name: np.concatenate([load_file(str(path))[name] for path in shards]) for name in ("ids", "log_probs")}
    positions, columns = fields["ids"].shape
    report = {"positions": positions, "top_k": columns, "vocab_size": vocab,
              "disk_bytes_per_position": sum(p.stat().st_size for p in shards) / positions, "fields": {}}
    for name, values in fields.items():
        raw = values.tobytes()
        copy_seconds = _best_seconds(lambda values=values: values.copy())
        entry = {"dtype": str(values.dtype), "bytes_per_position": values.itemsize * columns,
                 "read_mb_per_s": len(raw) / copy_seconds / 1e6,
                 "zstd1": _codec_row(raw, 1), "zstd3": _codec_row(raw, 3)}
        if name == "ids":
            bits = max(1, math.ceil(math.log2(vocab)))
            entry["packed_bits"] = bits
            entry["packed_bytes_per_position"] = bits * columns / 8
        if values.dtype == np.float16:
            shuffled = values.view(np.uint8).reshape(-1, 2)[:, ::-1].T.copy().tobytes()
            entry["shuffled_zstd3"] = _codec_row(shuffled, 3)
        report["fields"][name] = entry
    batch_bytes = batch_positions * sum(entry["bytes_per_position"] for entry in report["fields"].values())
    report["batch_positions"] = batch_positions
    report["decompress_ms_per_batch_zstd3"] = sum(
        batch_positions * entry["bytes_per_position"] / (entry["zstd3"]["decompress_mb_per_s"] * 1e6) * 1e3
        for entry in report["fields"].values())
    report["batch_bytes"] = batch_bytes
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cache", help="a teacher cache folder (`kinherit cache-teacher --output`)")
    parser.add_argument("--batch_positions", type=int, default=16 * 127,
                        help="taught positions per student batch (default: the demo's 16 blocks of 128)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    report = measure(Path(args.cache), args.batch_positions)
    print(f"{report['positions']:,} positions at K = {report['top_k']}, vocabulary {report['vocab_size']:,}: "
          f"{report['disk_bytes_per_position']:.1f} bytes per position on disk")
    for name, entry in report["fields"].items():
        line = (f"  {name} ({entry['dtype']}): {entry['bytes_per_position']} B/position, read "
                f"{entry['read_mb_per_s']:,.0f} MB/s; zstd-1 {entry['zstd1']['ratio']:.2f}x at "
                f"{entry['zstd1']['decompress_mb_per_s']:,.0f} MB/s, zstd-3 {entry['zstd3']['ratio']:.2f}x at "
                f"{entry['zstd3']['decompress_mb_per_s']:,.0f} MB/s")
        if "packed_bits" in entry:
            line += f"; packed in {entry['packed_bits']} bits: {entry['packed_bytes_per_position']:.0f} B/position"
        if "shuffled_zstd3" in entry:
            line += f"; bytes shuffled, zstd-3 {entry['shuffled_zstd3']['ratio']:.2f}x"
        print(line)
    print(f"  decompressing one batch ({report['batch_positions']:,} positions) at zstd-3: "
          f"{report['decompress_ms_per_batch_zstd3']:.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
