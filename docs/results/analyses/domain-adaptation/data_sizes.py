"""Target-domain loss, source-domain loss (forgetting) and downstream accuracy against the share of the domain's
data, self-learning against KI, from the domain-adaptation report in this folder (report.json).
Usage: python docs/results/analyses/domain-adaptation/data_sizes.py"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
SHARES = {"all": 1.0, "1-4": 1 / 4, "1-16": 1 / 16, "1-64": 1 / 64}
METHODS = {"sl": ("self-learning", "tab:blue"), "ki": ("KI", "tab:orange")}
REFERENCES = {"scratch": "general model before", "teacher-code": "code teacher"}
DRAWN = {"code-all": ["teacher-code"], "wiki": ["scratch"]}  # the other line is far off that scale
TASK = "python-package"

report = json.loads((HERE / "report.json").read_text())
evaluation, tuned = report["evaluation"], report["finetune"].get(TASK, {})


def value(run: str, panel: str) -> tuple[float, float] | None:
    """(mean, std) of a run on a panel's measure, None where the run has no such result."""
    if panel == TASK:
        return (tuned[run]["accuracy"]["mean"], tuned[run]["accuracy"]["std"]) if run in tuned else None
    return (evaluation[run][panel], 0.0) if panel in evaluation.get(run, {}) else None


general = evaluation["scratch"]["code-all"]
panels = {"code-all": f"code validation loss (target; general model {general:.2f})",
          "wiki": "Wikipedia validation loss (forgetting)"}
if any(run.startswith(("sl-", "ki-")) for run in tuned):  # the students fine-tuned
    panels[TASK] = f"{TASK} test accuracy (mean +- std)"
figure, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8))
for ax, (panel, title) in zip(axes, panels.items(), strict=True):
    for method, (label, colour) in METHODS.items():
        points = [(share, value(f"{method}-code-{name}", panel)) for name, share in SHARES.items()]
        points = [(share, v) for share, v in points if v is not None]
        ax.errorbar([s for s, _ in points], [v[0] for _, v in points], yerr=[v[1] for _, v in points],
                    marker="o", color=colour, capsize=3, label=label)
    for (run, label), style in zip(REFERENCES.items(), ("--", ":"), strict=True):
        reference = value(run, panel)
        if reference is not None and run in DRAWN.get(panel, REFERENCES):
            ax.axhline(reference[0], color="black", linestyle=style, linewidth=1, label=f"{label} ({reference[0]:.3f})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(SHARES.values()), ["all", "1/4", "1/16", "1/64"])
    ax.minorticks_off()
    ax.set_xlabel("share of the code training files")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
figure.tight_layout()
figure.savefig(HERE / "data_sizes.png", dpi=110)
print("wrote", HERE / "data_sizes.png")
