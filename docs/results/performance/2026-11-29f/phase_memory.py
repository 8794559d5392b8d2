"""Where in a KI step the resident set peaks: RSS sampled every ms, attributed to the phase running."""

import functools
import sys
import threading
import time

sys.path.insert(0, "benchmarks")
import torch
from step_cost import CONFIGS, Bench

import kinherit.inheritance.chunking as C
import kinherit.inheritance.loss as L
import kinherit.inheritance.targets as T
import kinherit.inheritance.teachers as TS

phase = ["other"]
peaks = {}


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def sampler():
    while True:
        r = rss()
        p = phase[0]
        if r > peaks.get(p, 0):
            peaks[p] = r
        time.sleep(0.0005)


def tag(owner, name, label):
    real = getattr(owner, name)

    @functools.wraps(real)
    def wrapped(*a, **k):
        prev = phase[0]
        phase[0] = label
        try:
            return real(*a, **k)
        finally:
            phase[0] = prev

    setattr(owner, name, wrapped)


config, variant = sys.argv[1], sys.argv[2]
bench = Bench(CONFIGS[config], torch.device("cpu"), 2.0)
step = bench.step(variant)
step()
tag(L.InheritanceLoss, "chunk", "kernel")
tag(C._LinearInto, "forward", "student head")
tag(C._LinearInto, "backward", "student head bwd")
tag(T.Target, "from_logits", "teacher target")
tag(TS.TeacherSet, "hidden_states", "teacher body")
tag(TS.TeacherSet, "logits", "teacher head")
tag(T.Target, "forward_kl_terms", "KI kernel")
orig_backward = torch.Tensor.backward


def bw(self, *a, **k):
    prev = phase[0]
    phase[0] = "backward"
    try:
        return orig_backward(self, *a, **k)
    finally:
        phase[0] = prev


torch.Tensor.backward = bw

threading.Thread(target=sampler, daemon=True).start()
base = rss()
step()
print(config, variant, "start", round(base), {k: round(v) for k, v in sorted(peaks.items(), key=lambda x: -x[1])})
