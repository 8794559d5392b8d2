"""Final validation loss and steps to the self-learned student's final loss against K, for the renormalised and the
tail top-K modes, beside the full-vocabulary KI student and self-learning, from the top-K report in this folder.
Usage: python docs/results/analyses/topk/topk.py"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
KS = (1, 10, 50, 100, 1000)
MODES = {"reno": ("renormalize (the paper's)", "tab:blue", "o"),
         "tail": ("tail (kinherit's default)", "tab:orange", "s")}
POSITIONS = 735_330  # labelled training positions in the cache (cache.json)

report = json.loads((HERE / "report.json").read_text())
finals, saved = report["final_val_loss"], report["compute_saved"]
panels = {"final": ("final validation loss (nats per token)", "{:.3f}", lambda run: finals.get(run)),
          "steps": ("steps to scratch's final loss (% of its steps)", "{:.1f}%",
                    lambda run: None if saved.get(run, {}).get("steps_fraction") is None
                    else 100 * saved[run]["steps_fraction"])}
figure, axes = plt.subplots(1, 2, figsize=(13, 4.6))
for ax, (label, style, measure) in zip(axes, panels.values(), strict=True):
    for mode, (name, colour, marker) in MODES.items():
        points = [(k, measure(f"ki-top{k}-{mode}")) for k in KS]
        points = [(k, v) for k, v in points if v is not None]
        ax.plot([k for k, _ in points], [v for _, v in points], marker=marker, color=colour, label=name)
        for k, v in points:
            ax.annotate(style.format(v), (k, v), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color=colour)
    full = measure("ki")
    ax.axhline(full, color="black", linestyle="--", linewidth=1,
               label=f"full vocabulary, teacher live ({style.format(full)})")
    if ax is axes[0]:
        ax.axhline(finals["scratch"], color="grey", linestyle=":", linewidth=1,
                   label=f"self-learning ({finals['scratch']:.3f})")
    ax.set_xscale("log")
    ax.set_xticks(KS, [f"{k}\n{4 * k * POSITIONS / 1e6:,.0f} MB" for k in KS], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("K (teacher tokens kept per position) and its cache size")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
figure.tight_layout()
figure.savefig(HERE / "topk.png", dpi=110)
print("wrote", HERE / "topk.png")
