"""CPU time to read one batch's targets (16 random blocks) from a top-K teacher cache: every column then cut to the
run's K (how a run read the cache before) against only the run's K columns (`TeacherCache(path, top_k=K)`).
Usage: python docs/results/performance/2026-11-30/cache_read.py CACHE_FOLDER [ROUNDS]"""
import statistics
import sys
import time

import torch

from kinherit.teacher_cache import TeacherCache

folder, rounds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 9
whole = TeacherCache(folder)
held, blocks, positions = whole.columns, whole.settings["blocks"], whole.settings["block_size"] - 1
print(f"cache {folder}: {held} tokens per position, {blocks} blocks")
for k in (1, 10, 100, held):
    part = TeacherCache(folder, top_k=k)
    times: dict[str, list[float]] = {"all columns, then cut": [], f"{k} columns": []}
    generator = torch.Generator().manual_seed(k)
    for _ in range(rounds):  # the two reads in turns, on the same blocks
        chosen = torch.randint(0, blocks, (16,), generator=generator)
        counts = torch.full((16,), positions)
        for label, cache, cut in zip(times, (whole, part), (k, None), strict=True):
            start = time.process_time()
            cache.target(chosen, 0, counts, torch.device("cpu")).truncated(cut, "tail")
            times[label].append(1000 * (time.process_time() - start))
    print(f"K = {k}: " + "; ".join(f"{label} median {statistics.median(t):.1f} ms (min {min(t):.1f})"
                                   for label, t in times.items()))
