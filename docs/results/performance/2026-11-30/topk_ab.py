"""Top-K kernel: peak over base (fixed mmap threshold) and median time; out = a separate buffer (old) or z (new)."""

import sys
import time
from pathlib import Path

import torch

from kinherit.inheritance.topk import TopKTarget


def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) // 1024


n, V, tau, compiled, K, mode = (
    int(sys.argv[1]),
    int(sys.argv[2]),
    float(sys.argv[3]),
    sys.argv[4] == "compiled",
    int(sys.argv[5]),
    sys.argv[6],
)
torch.manual_seed(0)
z0 = torch.randn(n, V) * 3
sc = torch.randn(n, V) * 3
lab = torch.randint(0, V, (n,))
target = TopKTarget.from_log_probs(torch.log_softmax(sc / tau, -1), K, mode)
del sc
z = z0.clone()
buf = torch.empty_like(z)
buf.zero_()
times = []
for _ in range(9):
    z.copy_(z0)
    Path("/proc/self/clear_refs").write_text("5")
    base = rss()
    t0 = time.perf_counter()
    out = z if sys.argv[7] == "over" else buf
    ce, kl, agree, g = target.forward_kl_terms(z, lab, 0.5, tau, compiled, 0.0, out)
    times.append(time.perf_counter() - t0)
    peak = rss() - base
print(
    sys.argv[7],
    n,
    V,
    tau,
    K,
    mode,
    sys.argv[4],
    f"median ms {sorted(times)[4] * 1000:.1f} peak+ MB {peak} ce {ce.item():.4f} kl {kl.item():.4f} g {g.double().abs().sum().item():.6f}",  # noqa: E501
)
