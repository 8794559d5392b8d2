#!/usr/bin/env bash
# Peak MB of one steady causal-32k step per child process (the benchmark's memory children) with glibc's default
# allocator and with the mmap threshold fixed at 1, 4 and 16 MiB: which tensor sizes fragment the heap.
# Run from the repository root: bash docs/results/performance/2026-11-30/mmap_thresholds.sh
set -u
root=$(mktemp -d)
child() { .venv/bin/python benchmarks/step_cost.py --child causal-32k "$1" --cache-root "$root/c" | tail -1; }
echo "build $(child cache_build)"
for threshold in default 1048576 4194304 16777216; do
    for variant in self ki ki_cache; do
        if [ "$threshold" = default ]; then echo "$threshold $variant $(child "$variant")"
        else echo "$threshold $variant $(MALLOC_MMAP_THRESHOLD_=$threshold child "$variant")"; fi
    done
done
rm -rf "$root"
