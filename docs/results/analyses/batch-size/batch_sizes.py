"""Validation loss against the tokens seen, one colour per batch size (KI solid, self-learning dashed), and KI's
lead over its self-learned twin at equal tokens, from the batch-size runs' logs.
Usage: python docs/results/analyses/batch-size/batch_sizes.py [RUNS_FOLDER]   (default runs/analyses/runs)"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from kinherit.evaluation.report import read_curve  # noqa: E402

HERE = Path(__file__).parent
RUNS = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/analyses/runs")
BLOCK = 128  # tokens per sequence
PAIRS = {8: ("scratch-b8", "ki-b8", "tab:blue"), 16: ("scratch", "ki", "tab:orange"),
         32: ("scratch-b32", "ki-b32", "tab:green")}

figure, (curves, lead) = plt.subplots(1, 2, figsize=(12, 4.4))
for batch, (scratch, ki, colour) in PAIRS.items():
    tokens = batch * BLOCK / 1e6  # millions of tokens per step
    losses = {}
    for run, style, label in ((scratch, "--", "self-learning"), (ki, "-", "KI")):
        curve = [p for p in read_curve(RUNS / run) if p.step > 0]
        losses[run] = {p.step * tokens: p.loss for p in curve}
        curves.plot(list(losses[run]), list(losses[run].values()), style, color=colour, marker="o", markersize=2,
                    label=f"batch {batch}, {label} ({curve[-1].loss:.3f})")
    shared = sorted(set(losses[scratch]) & set(losses[ki]))
    lead.plot(shared, [losses[scratch][t] - losses[ki][t] for t in shared], color=colour, marker="o", markersize=2,
              label=f"batch {batch} ({losses[scratch][shared[-1]] - losses[ki][shared[-1]]:.3f} at the end)")
curves.set_ylim(5.1, 6.6)
curves.set_ylabel("validation loss (nats per token)")
lead.axhline(0, color="black", linewidth=0.6)
lead.set_ylim(-0.15, 0.4)
lead.set_ylabel("self-learning minus KI validation loss")
for ax in (curves, lead):
    ax.set_xlabel("training tokens seen (millions; 2.2 passes at the end)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
figure.tight_layout()
figure.savefig(HERE / "batch_sizes.png", dpi=110)
print("wrote", HERE / "batch_sizes.png")
