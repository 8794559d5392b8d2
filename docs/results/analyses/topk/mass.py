"""How much of the teacher's tempered distribution its top-K tokens hold, from a top-1000 teacher cache: the mean
over training positions of sum_{k <= K} p_k (the renormalised mode's 1 / scale, the tail mode's 1 - p_tail), and the
share of positions whose top-K holds at least half the mass.
Usage: python docs/results/analyses/topk/mass.py CACHE_FOLDER   (runs/analyses/caches/teacher-top1000-*)"""
import json
import sys
from pathlib import Path

from safetensors import safe_open

KS = (1, 10, 50, 100, 1000)
folder = Path(sys.argv[1])
settings = json.loads((folder / "cache.json").read_text())["settings"]
sums = {k: 0.0 for k in KS}
halves = {k: 0 for k in KS}
positions = 0
for shard in sorted(folder.glob("*.safetensors")):
    with safe_open(shard, framework="pt") as f:
        log_probs = f.get_tensor("log_probs")
    for rows in log_probs.split(65536):
        probs = rows.float().exp()
        if not bool((rows[:, :-1] >= rows[:, 1:]).all()):
            raise SystemExit(f"{shard}: top-K not sorted; this script assumes it")
        mass = probs.cumsum(dim=1)
        for k in KS:
            sums[k] += float(mass[:, k - 1].double().sum())
            halves[k] += int((mass[:, k - 1] >= 0.5).sum())
        positions += rows.shape[0]
print(f"{positions} positions, temperature {settings['temperature']}, vocabulary {settings['vocab_size']}")
print("K  mean top-K mass  positions with >= half the mass  cache bytes per position (uint16 id + float16 log-prob)")
for k in KS:
    print(f"{k:4d}  {sums[k] / positions:.4f}  {halves[k] / positions:.3f}  {4 * k}")
