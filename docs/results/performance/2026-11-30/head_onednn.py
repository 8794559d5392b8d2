"""The head product through MKL (torch.mm into a reused buffer, as the step does) and through oneDNN's
prepacked linear (`torch.ops.mkldnn._linear_pointwise`, the op inductor uses for frozen linears; a new output
each call), in interleaved rounds (hand-run). Usage: python head_onednn.py ROUNDS M,K,V [M,K,V ...]"""
import statistics
import sys
import time

import torch


def seconds(function) -> float:
    """One call's wall time."""
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


a = torch.randn(2048, 2048)
print(f"matmul 2048^3: {2 * 2048**3 / min(seconds(lambda: a @ a) for _ in range(5)) / 1e9:.1f} GFLOP/s")
rounds = int(sys.argv[1])
for shape in sys.argv[2:]:
    M, K, V = (int(value) for value in shape.split(","))
    x, weight, out = torch.randn(M, K), torch.randn(V, K), torch.empty(M, V)
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, M)
    variants = {"mkl into reused": lambda x=x, weight=weight, out=out: torch.mm(x, weight.t(), out=out),
                "onednn prepacked": lambda x=x, packed=packed: torch.ops.mkldnn._linear_pointwise(x, packed, None,
                                                                                                 "none", [], "")}
    assert torch.allclose(variants["onednn prepacked"](), variants["mkl into reused"](), atol=1e-3)
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, function in variants.items():
            times[name].append(seconds(function))
    rates = ", ".join(f"{name} {2 * M * K * V / statistics.median(t) / 1e9:.1f}" for name, t in times.items())
    print(f"[{M}, {K}] x [{K}, {V}]: {rates} GFLOP/s (medians of {rounds})")
print(f"matmul 2048^3: {2 * 2048**3 / min(seconds(lambda: a @ a) for _ in range(5)) / 1e9:.1f} GFLOP/s")
