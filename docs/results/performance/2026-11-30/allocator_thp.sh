#!/usr/bin/env bash
# causal-32k step times and peak RSS (allocator_ab.py: self, live KI and cached KI in turns, one fresh process
# per setting) with glibc's default allocator, with its mmap threshold fixed at 4 MiB, and each of these with
# transparent huge pages asked for by glibc (GLIBC_TUNABLES=glibc.malloc.hugetlb=1: large blocks madvised
# MADV_HUGEPAGE, so a fresh mapping faults once per 2 MiB instead of once per 4 KiB).
# Run from the repository root with nothing else running: bash docs/results/performance/2026-11-30/allocator_thp.sh [ROUNDS]
set -u
rounds=${1:-4}
run() { echo "== $*"; env "$@" .venv/bin/python docs/results/performance/2026-11-30/allocator_ab.py causal-32k "$rounds"; }
cat /sys/kernel/mm/transparent_hugepage/enabled
run PYTHONUNBUFFERED=1
run MALLOC_MMAP_THRESHOLD_=4194304
run MALLOC_MMAP_THRESHOLD_=4194304 GLIBC_TUNABLES=glibc.malloc.hugetlb=1
run GLIBC_TUNABLES=glibc.malloc.hugetlb=1
date -u
