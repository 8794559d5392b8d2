"""What a fresh [1024, 32768] float32 tensor costs against a reused one (hand-run): the page faults of a new
mapping, for a matrix product written into it and for a plain fill."""

import time

import torch

torch.manual_seed(0)
n, hidden, vocab = 1024, 256, 32768
x, weight = torch.randn(n, hidden), torch.randn(vocab, hidden)
buffer = torch.empty(n, vocab)


def fresh_product() -> torch.Tensor:
    return torch.nn.functional.linear(x, weight)


def reused_product() -> torch.Tensor:
    return torch.matmul(x, weight.t(), out=buffer)


def fresh_fill() -> torch.Tensor:
    return torch.empty(n, vocab).fill_(0)


def reused_fill() -> torch.Tensor:
    return buffer.fill_(0)


cases = (fresh_product, reused_product, fresh_fill, reused_fill)
for case in cases:
    case()
for repeat in range(2):
    for case in cases:
        times = []
        for _ in range(15):
            started = time.perf_counter()
            case()
            times.append(time.perf_counter() - started)
        print(repeat, case.__name__, f"median {sorted(times)[7] * 1e3:.1f} ms")
