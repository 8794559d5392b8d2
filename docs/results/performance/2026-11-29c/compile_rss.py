"""Resident size of a fresh process before and after one eager and one compiled KI kernel call (hand-run)."""

import re

import torch

from kinherit.inheritance.targets import Target


def rss_mb() -> int:
    with open("/proc/self/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1)) // 1024


z, teacher, y = torch.randn(682, 32768), torch.randn(682, 32768), torch.randint(0, 32768, (682,))
print("inputs made", rss_mb())
Target(teacher, 2.0).forward_kl_terms(z, y, 0.5, 0.5, compiled=False)
print("after the eager kernel", rss_mb())
Target(teacher, 2.0).forward_kl_terms(z, y, 0.5, 0.5, compiled=True)
print("after the compiled kernel", rss_mb())
