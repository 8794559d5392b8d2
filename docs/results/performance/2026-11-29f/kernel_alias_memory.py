import sys
from pathlib import Path

import torch

from kinherit.inheritance.targets import _COMPILED_KERNEL, _forward_kl_kernel

torch.manual_seed(0)
rows, V, mode, compiled = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"


def hwm():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024


def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024


z = torch.randn(rows, V)
s = torch.randn(rows, V)
labels = torch.randint(0, V, (rows,))
buf = torch.empty(rows, V) if mode == "buffer" else z
k = _COMPILED_KERNEL if compiled else _forward_kl_kernel
a = torch.tensor(0.5)
k(z.clone(), s, 2.0, labels, a, 0.5, 0.0, None if mode == "none" else (buf if mode == "buffer" else None))
zz = z.clone()
out = buf if mode == "buffer" else zz if mode == "alias" else None
base = rss()
Path("/proc/self/clear_refs").write_text("5")
r = k(zz, s, 2.0, labels, a, 0.5, 0.0, out)
tensor_mb = rows * V * 4 / 2**20
print(
    f"{mode:7s} compiled={compiled}: peak over start {hwm() - base:.0f} MB = {(hwm() - base) / tensor_mb:.2f} chunk tensors; grad is z: {r[3].data_ptr() == zz.data_ptr()}"  # noqa: E501
)
if mode == "alias":
    import kinherit.inheritance.targets as T
    from kinherit.inheritance.rowwise import CompiledKernel

    def inplace(z, s, scale, labels, a, tau, eps):
        return T._forward_kl_kernel(z, s, scale, labels, a, tau, eps, z)

    k2 = CompiledKernel(inplace) if compiled else inplace
    k2(z.clone(), s, 2.0, labels, a, 0.5, 0.0)
    zz = z.clone()
    base = rss()
    Path("/proc/self/clear_refs").write_text("5")
    r = k2(zz, s, 2.0, labels, a, 0.5, 0.0)
    print(
        f"one-arg in place compiled={compiled}: {(hwm() - base) / tensor_mb:.2f} chunk tensors; grad is z: {r[3].data_ptr() == zz.data_ptr()}"  # noqa: E501
    )
