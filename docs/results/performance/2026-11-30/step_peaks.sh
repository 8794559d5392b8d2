#!/usr/bin/env bash
# Peak MB of a steady step per child process (the benchmark's memory children), with glibc's default allocator
# (two children) and with a fixed mmap threshold (one), for the configurations whose chunks the final code changed.
# Run from the repository root: bash docs/results/performance/2026-11-30/step_peaks.sh [CONFIG ...]
set -u
configs=${*:-causal-32k masked-32k causal-demo masked-demo}
root=$(mktemp -d)
child() { .venv/bin/python benchmarks/step_cost.py --child "$1" "$2" --cache-root "$root/$1" | tail -1; }
for config in $configs; do
    echo "$config cache_build $(child "$config" cache_build)"
    for variant in self ki ki_cache; do
        echo "$config $variant default $(child "$config" "$variant") $(child "$config" "$variant")" \
             "fixed-threshold $(MALLOC_MMAP_THRESHOLD_=131072 child "$config" "$variant")"
    done
done
rm -rf "$root"
