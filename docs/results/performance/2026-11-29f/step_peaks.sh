# peaks of self and KI steps under a fixed mmap threshold (live tensors, no heap variance), old tree vs this one
for tree in "$@"; do for c in causal-128k causal-32k; do for v in self ki; do (cd $tree && MALLOC_MMAP_THRESHOLD_=131072 PYTHONPATH=$tree /work/main/.venv/bin/python benchmarks/step_cost.py --child $c $v 2>&1 | tail -1 | tr '\n' ' '); echo " $tree $c $v"; done; done; done
