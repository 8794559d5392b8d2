"""The head product's output layout (hand-run): a [M, K] x [K, V] product written into a reused row-major [M, V]
buffer (as the step does), into a reused [V, M] buffer (the transposed product), and into [V, M] then copied back
to [M, V]; then the KI kernels (statistics, gradient) and self-learning's on row-major and on column-major
([V, M] storage viewed as [M, V]) logits. Usage: python head_layout.py M K V (e.g. 256 128 131072)."""
import sys
from pathlib import Path

import torch

from kinherit.inheritance import targets

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "benchmarks"))
from step_cost import median_seconds  # noqa: E402

M, K, V = (int(value) for value in sys.argv[1:4])
torch.manual_seed(0)


def median_ms(function, repeats: int = 7) -> float:
    """Median milliseconds of `repeats` calls after one untimed call."""
    return median_seconds(function, repeats) * 1e3


a = torch.randn(2048, 2048)
print(f"matmul 2048^3: {2 * 2048**3 / median_ms(lambda: a @ a) / 1e6:.1f} GFLOP/s")
x, weight = torch.randn(M, K), torch.randn(V, K)
rows, columns = torch.empty(M, V), torch.empty(V, M)
gflop = 2 * M * K * V / 1e9
for name, function in (("row-major [M, V] output", lambda: torch.mm(x, weight.t(), out=rows)),
                       ("transposed [V, M] output", lambda: torch.mm(weight, x.t(), out=columns)),
                       ("transposed, copied to [M, V]", lambda: rows.copy_(torch.mm(weight, x.t(), out=columns).t()))):
    print(f"{name}: {gflop / median_ms(function) * 1e3:.1f} GFLOP/s")

labels = torch.randint(0, V, (M,))
alpha = torch.tensor(0.5)


def kernel_times(layout: str, z: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> None:
    """Print the compiled kernels' median times over student logits `z` and teacher logits `t` in one layout."""
    *_, lse, tempered_lse, target_lse = targets._COMPILED_STATISTICS(z, t, 0.5, labels, 2.0, 0.0)
    statistics_ms = median_ms(lambda: targets._COMPILED_STATISTICS(z, t, 0.5, labels, 2.0, 0.0))
    copy_ms = median_ms(lambda: out.copy_(z))
    gradient_ms = median_ms(lambda: targets._COMPILED_GRADIENT(out.copy_(z), t, 0.5, lse, tempered_lse, target_lse,
                                                               alpha, 2.0)) - copy_ms
    self_ms = median_ms(lambda: targets._COMPILED_CE_STATISTICS(z, labels, 0.0))
    print(f"{layout}: KI statistics {statistics_ms:.1f} ms, KI gradient {gradient_ms:.1f} ms, "
          f"self-learning statistics {self_ms:.1f} ms, copy {copy_ms:.1f} ms")


for layout, make in (("row-major", lambda: torch.randn(M, V)), ("column-major", lambda: torch.randn(V, M).t())):
    kernel_times(layout, make(), make(), make())
print(f"matmul 2048^3: {2 * 2048**3 / median_ms(lambda: a @ a) / 1e6:.1f} GFLOP/s")
