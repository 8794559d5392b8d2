"""Resident memory one loss-kernel call adds, counted in [n, V] float32 tensors (hand-run, Linux).

    python kernel_peak.py self 1024 32768 | compiled 682 32768 | eager 682 32768
"""

import re
import sys

import torch

from kinherit.inheritance.targets import Target, self_learning_terms


def status_mb(key: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(key + r":\s+(\d+)", status.read()).group(1)) // 1024


mode, n, vocab = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
z, teacher, y = torch.randn(n, vocab), torch.randn(n, vocab), torch.randint(0, vocab, (n,))
for _ in range(2):  # the first call compiles; the second is measured
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    base = status_mb("VmRSS")
    if mode == "self":
        out = self_learning_terms(z, y, 0.0)
    else:
        out = Target(teacher, 2.0).forward_kl_terms(z, y, 0.5, 0.5, compiled=mode == "compiled")
    peak = status_mb("VmHWM")
    del out
print(mode, n, vocab, f"peak over base {peak - base} MB = {(peak - base) / (n * vocab * 4 / 2**20):.2f} [n, V] tensors")
