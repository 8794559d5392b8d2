"""Dense KI kernel: peak over base (fixed mmap threshold) and median time, old (grad buffer) vs new (over z)."""

import sys
import time
from pathlib import Path

import torch

from kinherit.inheritance.targets import Target


def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) // 1024


n, V, tau, compiled = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "compiled"
torch.manual_seed(0)
z0 = torch.randn(n, V) * 3
sc = torch.randn(n, V) * 3
lab = torch.randint(0, V, (n,))
z = z0.clone()
buf = torch.empty_like(z)
buf.zero_()
target = Target(sc, 1 / tau)
times = []
for _ in range(9):
    z.copy_(z0)
    Path("/proc/self/clear_refs").write_text("5")
    base = rss()
    t0 = time.perf_counter()
    out = z if "new" in sys.argv[5] else buf
    ce, kl, agree, g = target.forward_kl_terms(z, lab, 0.5, tau, compiled, 0.0, out)
    times.append(time.perf_counter() - t0)
    peak = rss() - base
print(
    sys.argv[5],
    n,
    V,
    tau,
    sys.argv[4],
    f"median ms {sorted(times)[4] * 1000:.1f} peak+ MB {peak} ce {ce.item():.4f} kl {kl.item():.4f} g {g.double().abs().sum().item():.6f}",  # noqa: E501
)
