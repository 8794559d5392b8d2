"""Peak memory per process of loading a teacher for `--teacher_placement shard`: whole then sharded, or shard by shard.

A randomly initialised causal teacher is saved once; then, for each way of loading, two fresh gloo
processes load it and report how much their peak resident set grew during the load (Linux VmHWM
minus the resident set before it), beside the teacher's own size and its half.

    python benchmarks/teacher_load_memory.py --layers 12 --width 768 --vocab 32768 --json load.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import LlamaConfig, LlamaForCausalLM

from kinherit.models.loading import load_model
from kinherit.models.parts import reshard_model, shard_layers
from kinherit.models.sharded_load import load_sharded


def status_mb(field: str) -> float:
    """A field of /proc/self/status (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status (this benchmark needs Linux)")


def worker(rank: int, mode: str, path: str, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    before = status_mb("VmRSS")
    model = shard_layers(load_model(path)) if mode == "whole-then-shard" else load_sharded(path, torch.float32)
    reshard_model(model)
    held = sum(p.to_local().numel() * p.element_size() for p in model.parameters()) / 2**20
    results.put({"mode": mode, "rank": rank, "peak_growth_mb": status_mb("VmHWM") - before, "held_mb": held})
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.width, intermediate_size=4 * args.width,
                         num_hidden_layers=args.layers, num_attention_heads=args.width // 64,
                         num_key_value_heads=args.width // 64, tie_word_embeddings=False)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        LlamaForCausalLM(config).save_pretrained(folder)
        teacher_mb = sum(f.stat().st_size for f in os.scandir(folder) if f.name.endswith(".safetensors")) / 2**20
        context = mp.get_context("spawn")
        for mode in ("whole-then-shard", "shard-by-shard"):
            results = context.Queue()
            processes = [context.Process(target=worker, args=(rank, mode, folder, port, results))
                         for port in [free_port()] for rank in range(2)]
            for process in processes:
                process.start()
            rows += sorted((results.get() for _ in processes), key=lambda r: r["rank"])
            for process in processes:
                process.join()
    print(f"teacher {args.layers}x{args.width}, vocabulary {args.vocab}: {teacher_mb:.0f} MB of weights, "
          f"half {teacher_mb / 2:.0f} MB")
    print(f"{'loading':18} {'rank':>4} {'peak growth MB':>15} {'held MB':>8}")
    for row in rows:
        print(f"{row['mode']:18} {row['rank']:>4} {row['peak_growth_mb']:>15.0f} {row['held_mb']:>8.0f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"teacher_mb": teacher_mb, "settings": vars(args), "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
