"""Loss on each domain after post-training on the two-domain mixture: self-learning, KI from the two teachers
mixed, and KI routed (each example taught by its own domain's teacher), at both data sizes, from the
several-teachers report in this folder (report.json); below them, each domain's downstream test accuracy (mean
and std over fine-tuning seeds), with the general model before post-training and the domain's teacher as lines.
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
TASKS = {"python-package": "python-package (code's task)", "shakespeare-genre": "shakespeare-genre (plays' task)"}
# references drawn as lines on each task's panel: the general model before post-training, and the domain's teacher
REFERENCES = {"python-package": {"scratch": ("general model before", "--"), "teacher-code": ("code teacher", ":")},
              "shakespeare-genre": {"scratch": ("general model before", "--"), "teacher-plays": ("plays teacher", ":")}}

report = json.loads((HERE / "report.json").read_text())
evaluation = report["evaluation"]
tuned = {task: report["finetune"].get(task, {}) for task in TASKS}
tuned = {task: runs for task, runs in tuned.items() if any(run.startswith(tuple(METHODS)) for run in runs)}
rows = 2 if tuned else 1
figure, axes = plt.subplots(rows, len(PANELS), figsize=(4.6 * len(PANELS), 3.9 * rows), squeeze=False)
width = 0.8 / len(METHODS)


def draw(ax, value, ylabel: str, digits: int) -> None:
    """One panel: a bar per method and data size, `value(run)` giving (height, error) or None when not run."""
    values = []
    for i, (method, (label, colour)) in enumerate(METHODS.items()):
        points = [(j + (i - (len(METHODS) - 1) / 2) * width, value(f"{method}-{size}")) for j, size in enumerate(SIZES)]
        points = [(x, v) for x, v in points if v is not None]
        errors = [v[1] for _, v in points]
        ax.bar([x for x, _ in points], [v[0] for _, v in points], width, yerr=errors if any(errors) else None,
               color=colour, label=label, capsize=2)
        for x, (y, error) in points:
            ax.text(x, y + error + 0.005, f"{y:.{digits}f}", ha="center", va="bottom", fontsize=7, rotation=90)
        values += [v[0] + v[1] for _, v in points] + [v[0] - v[1] for _, v in points]
    span = max(values) - min(values)
    ax.set_ylim(min(values) - 0.3 * span - 0.02, max(values) + 0.35 * span + 0.02)
    ax.set_xticks(range(len(SIZES)), list(SIZES.values()))
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


for ax, (corpus, title) in zip(axes[0], PANELS.items(), strict=True):
    draw(ax, lambda run, corpus=corpus: (evaluation[run][corpus], 0.0), "validation loss (nats per token)", 3)
    ax.set_title(title, fontsize=10)
axes[0][0].legend(fontsize=7, loc="upper left")
if tuned:
    handles = []  # the reference lines, listed in the spare panel where they cover no bar
    for ax, (task, runs) in zip(axes[1], tuned.items(), strict=False):
        draw(ax, lambda run, runs=runs: (runs[run]["accuracy"]["mean"], runs[run]["accuracy"]["std"])
             if run in runs else None, "test accuracy (mean +- std over seeds)", 3)
        ax.set_title(TASKS[task], fontsize=10)
        lines = [(name, label, style) for name, (label, style) in REFERENCES[task].items() if name in runs]
        for name, label, style in lines:
            accuracy = runs[name]["accuracy"]["mean"]
            handles.append(ax.axhline(accuracy, color="black", linestyle=style, linewidth=1,
                                      label=f"{task}: {label} ({accuracy:.3f})"))
        if lines:
            low, high = ax.get_ylim()
            references = [runs[name]["accuracy"]["mean"] for name, _, _ in lines]
            ax.set_ylim(min(low, min(references) - 0.02), max(high, max(references) + 0.02))
    for ax in axes[1][len(tuned):]:
        ax.axis("off")
    if handles and len(tuned) < len(axes[1]):
        axes[1][-1].legend(handles=handles, fontsize=8, loc="center", title="fine-tuned references",
                           title_fontsize=8)
figure.tight_layout()
figure.savefig(HERE / "methods.png", dpi=110)
print("wrote", HERE / "methods.png")
