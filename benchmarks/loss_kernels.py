"""Time each loss-kernel backend on one chunk of logits: the KI terms (statistics and gradient against a dense
teacher) and the self-learning terms, per `--loss_kernels` backend, in interleaved rounds.

    python benchmarks/loss_kernels.py                       # 256 x 131072 and 512 x 32768, tau = 2
    python benchmarks/loss_kernels.py --shapes 512x32768 --temperature 0.5 --rounds 9 --json kernels.json

Every backend writes its gradient over a copy of the logits (the copy's time included, as in a training step,
where the gradient overwrites the head's buffer). Each round times every backend once, so a machine whose speed
drifts slows them alike; the table gives the medians in ms and each backend's ratio to `compiled`. The fp32
2048^3 matmul rate is measured before and after.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from kinherit.inheritance.kernels import select

BACKENDS = ("eager", "compiled", "native")


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best of `repeats` fp32 n^3 products, in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def kernel_calls(rows: int, vocab: int, temperature: float, backend: str) -> dict:
    """The two timed calls of one backend on fixed random logits (each writes over its own copy)."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(rows, vocab, generator=generator) * 3
    teacher = torch.randn(rows, vocab, generator=generator) * 3
    labels = torch.randint(0, vocab, (rows,), generator=generator)
    out = torch.empty_like(z)
    kernels = select(backend)
    return {"ki": lambda: kernels.dense_terms(z, teacher, 1.0 / temperature, labels, 0.5, temperature, 0.0, out),
            "self": lambda: kernels.self_terms(z, labels, 0.0, out)}


def measure(rows: int, vocab: int, temperature: float, rounds: int, warmup: int) -> dict:
    """Median ms per call of each backend and term over `rounds` interleaved rounds (after `warmup` untimed)."""
    calls = {backend: kernel_calls(rows, vocab, temperature, backend) for backend in BACKENDS}
    times: dict[str, dict[str, list[float]]] = {b: {"ki": [], "self": []} for b in BACKENDS}
    for round_index in range(warmup + rounds):
        for backend, terms in calls.items():
            for term, call in terms.items():
                start = time.perf_counter()
                call()
                if round_index >= warmup:
                    times[backend][term].append((time.perf_counter() - start) * 1e3)
    return {backend: {term: statistics.median(values) for term, values in terms.items()}
            for backend, terms in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["256x131072", "512x32768"], help="ROWSxVOCAB per chunk")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds (they include compilation)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    result = {"matmul_gflops_before": matmul_gflops(), "temperature": args.temperature, "threads":
              torch.get_num_threads(), "torch": torch.__version__, "shapes": {}}
    for shape in args.shapes:
        rows, vocab = (int(part) for part in shape.split("x"))
        result["shapes"][shape] = measure(rows, vocab, args.temperature, args.rounds, args.warmup)
    result["matmul_gflops_after"] = matmul_gflops()
    print(f"fp32 2048^3 matmul: {result['matmul_gflops_before']:.1f} GFLOP/s before, "
          f"{result['matmul_gflops_after']:.1f} after; tau = {args.temperature}; medians of {args.rounds} rounds")
    print("| chunk | term | " + " | ".join(f"{b} ms" for b in BACKENDS) + " | native / compiled |")
    print("|---|---|" + "---|" * (len(BACKENDS) + 1))
    for shape, backends in result["shapes"].items():
        for term in ("ki", "self"):
            cells = " | ".join(f"{backends[b][term]:.1f}" for b in BACKENDS)
            print(f"| {shape} | {term} | {cells} | {backends['native'][term] / backends['compiled'][term]:.2f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)
    return result


if __name__ == "__main__":
    main()
