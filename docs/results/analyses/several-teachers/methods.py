"""Loss on each domain after post-training on the two-domain mixture: self-learning, KI from the two teachers
mixed, and KI routed (each example taught by its own domain's teacher), at both data sizes, from the
several-teachers report in this folder (report.json).
Usage: python docs/results/analyses/several-teachers/methods.py"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
SIZES = {"all": "all the data", "1-16": "1/16 of it"}
METHODS = {"sl-two": ("self-learning", "tab:blue"), "ki-mixed": ("KI, teachers mixed 1:1", "tab:green"),
           "ki-routed": ("KI, routed by domain", "tab:orange")}
PANELS = {"code-all": "Python code (a target)", "plays-all": "Shakespeare's plays (a target)",
          "wiki": "Wikipedia (the source: forgetting)"}

evaluation = json.loads((HERE / "report.json").read_text())["evaluation"]
figure, axes = plt.subplots(1, len(PANELS), figsize=(4.6 * len(PANELS), 3.9))
width = 0.8 / len(METHODS)
for ax, (corpus, title) in zip(axes, PANELS.items(), strict=True):
    values = []
    for i, (method, (label, colour)) in enumerate(METHODS.items()):
        xs = [j + (i - (len(METHODS) - 1) / 2) * width for j in range(len(SIZES))]
        ys = [evaluation[f"{method}-{size}"][corpus] for size in SIZES]
        ax.bar(xs, ys, width, color=colour, label=label)
        for x, y in zip(xs, ys, strict=True):
            ax.text(x, y + 0.005, f"{y:.3f}", ha="center", va="bottom", fontsize=7, rotation=90)
        values += ys
    span = max(values) - min(values)
    ax.set_ylim(min(values) - 0.3 * span - 0.02, max(values) + 0.35 * span + 0.02)
    ax.set_xticks(range(len(SIZES)), list(SIZES.values()))
    ax.set_ylabel("validation loss (nats per token)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
axes[0].legend(fontsize=7, loc="upper left")
figure.tight_layout()
figure.savefig(HERE / "methods.png", dpi=110)
print("wrote", HERE / "methods.png")
