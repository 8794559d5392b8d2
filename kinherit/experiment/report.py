"""`kinherit report FOLDER`: report.md, report.json and PNG plots, rebuilt from the runs' logs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from kinherit.core.atomic import save_figure_atomic, write_json_atomic, write_text_atomic
from kinherit.core.errors import KinheritError
from kinherit.core.names import check_name
from kinherit.core.run_log import LOG_FILE, read_records
from kinherit.experiment.compute_saved import EvalPoint, compute_saved, downstream_saved, loss_at, summarise
from kinherit.experiment.layout import (
    FINETUNING,
    FINETUNING_ALONG,
    MANIFESTS,
    START,
    check_current_layout,
    manifest_path,
    read_results,
    report_folder,
)
from kinherit.models.lm import perplexity

FRACTIONS = ("steps_fraction", "flops_fraction", "time_fraction")


def read_curve(run_dir: Path) -> list[EvalPoint]:
    """The evaluation records of a run's log.jsonl, in step order (later records win on repeats)."""
    by_step: dict[int, EvalPoint] = {}
    for record in read_records(run_dir / LOG_FILE):
        if "eval_loss" in record and "step" in record:
            by_step[record["step"]] = EvalPoint(step=record["step"], loss=record["eval_loss"],
                                                flops=record.get("train_flops", 0.0),
                                                seconds=record.get("train_seconds", 0.0))
    return [by_step[s] for s in sorted(by_step)]


def inheritance_end(run_dir: Path) -> int | None:
    """The first logged step at which the run's inheritance rate was 0 (None: it inherited to its last log)."""
    for record in read_records(run_dir / LOG_FILE):
        if record.get("inherit/alpha") == 0.0 and "step" in record:
            return int(record["step"])
    return None


def _percent(value: float | None) -> str:
    return "not reached" if value is None else f"{100 * value:.0f}%"


def _headline(compute: dict[str, Any], groups: dict[str, Any]) -> str:
    if groups:
        name, group = next(iter(groups.items()))
        parts = []
        for key, label in zip(FRACTIONS, ("steps", "FLOPs", "time"), strict=True):
            s = group[key]
            parts.append("never" if s["mean"] is None else
                         f"{100 * s['mean']:.0f}% ± {100 * s['std']:.0f}% of the {label}")
        return (f"KI ({name}, {group[FRACTIONS[0]]['runs']} seeds) reached the from-scratch final validation loss in "
                f"{parts[0]}, {parts[1]} and {parts[2]} (mean ± std)")
    if not compute:
        return "no KI run with a baseline in this experiment"
    name, c = next(iter(compute.items()))
    if c["steps_fraction"] is None:
        return (f"KI ({name}) did not reach the from-scratch final validation loss "
                f"({c['ki_final_val_loss']:.3f} vs {c['baseline_final_val_loss']:.3f})")
    return (f"KI ({name}) reached the from-scratch final validation loss in {_percent(c['steps_fraction'])} of the "
            f"steps, {_percent(c['flops_fraction'])} of the FLOPs and {_percent(c['time_fraction'])} of the time")


def _students(curves: dict[str, list[EvalPoint]], teacher_losses: dict[str, float],
              runs: dict[str, Any]) -> dict[str, list[EvalPoint]]:
    """The runs drawn as curves: every run with evaluations but the teachers, except a self-learned teacher that
    is also a baseline (a chain of sizes), and but the runs others start from (`start:`: a general model whose
    pre-training would share the step axis with its post-training runs)."""

    baselines = {run.get("baseline") for run in runs.values()}
    models = [str(run.get("model", "")) for run in runs.values()]
    starts = {model.removeprefix(START) for model in models if model.startswith(START)}
    return {n: c for n, c in curves.items() if (n not in teacher_losses or n in baselines) and n not in starts and c}


def plot_curves(folder: Path, students: dict[str, list[EvalPoint]], teacher_losses: dict[str, float],
                compute: dict[str, Any], runs: dict[str, Any]) -> list[str]:
    """The `students`' validation loss against steps, training FLOPs and seconds (one panel each), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not students:
        return []
    axes_spec = [("step", "optimizer steps", 1.0), ("flops", "training FLOPs (x 1e12, teacher forwards charged)",
                                                     1e-12), ("seconds", "training wall-clock (s)", 1.0)]
    entries = len(students) + len(teacher_losses)  # the legend goes below the panels, three entries a row
    legend_rows = math.ceil(entries / 3)
    figure, axes = plt.subplots(1, 3, figsize=(17, 5.2 + 0.2 * legend_rows), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    finals = [c[-1].loss for c in students.values()] + list(teacher_losses.values())
    starts = [p.loss for c in students.values() for p in c if p.step > 0][:1]
    top = max(finals) + 0.9 * (max(starts[0] if starts else max(finals), max(finals)) - max(finals)) * 0.5 + 0.5
    for ax, (attr, label, scale) in zip(axes, axes_spec, strict=True):
        for i, (name, curve) in enumerate(students.items()):
            run = runs.get(name, {})
            kind = " + ".join([*(["grown"] if run.get("grow") else []), *(["KI"] if run.get("teachers") else [])])
            kind = kind or "self-learning"
            reached = compute.get(name, {}).get("steps_fraction")
            if reached is not None:  # the legend says it, so that any number of KI runs stays legible
                kind += f"; {compute[name]['baseline']}'s final at {_percent(reached)} of the steps"
            ax.plot([getattr(p, attr) * scale for p in curve], [p.loss for p in curve], marker="o", markersize=2.5,
                    color=colours[i % len(colours)], label=f"{name} ({kind})")
        for j, (name, loss) in enumerate(teacher_losses.items()):
            ax.axhline(loss, color="grey", linestyle=["--", ":", "-."][j % 3], linewidth=1,
                       label=f"teacher '{name}' final ({loss:.2f})")
        for c in compute.values():
            ax.axhline(c["baseline_final_val_loss"], color="black", linewidth=0.6, alpha=0.5)
            if c["steps_fraction"] is not None and attr == "step":
                ax.axvline(c["reached_at_step"], color="black", linewidth=0.6, alpha=0.5)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.set_ylim(min(finals) - 0.15, top)
    axes[0].set_ylabel("validation loss (nats per token)")
    secondary = axes[2].secondary_yaxis("right", functions=(lambda x: x, lambda x: x))
    ticks = axes[0].get_yticks()
    secondary.set_yticks(ticks)
    secondary.set_yticklabels([f"{perplexity(t):.0f}" for t in ticks])
    secondary.set_ylabel("validation perplexity")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    has_ki = any(runs.get(name, {}).get("teachers") for name in students)
    figure.suptitle("Validation loss: Knowledge Inheritance vs self-learning" if has_ki else "Validation loss")
    figure.tight_layout(rect=(0, (0.2 * legend_rows + 0.1) / (5.2 + 0.2 * legend_rows), 1, 1))
    name = "validation_loss.png"
    save_figure_atomic(figure, folder / name, dpi=110)
    plt.close(figure)
    return [name]


def plot_summary(folder: Path, curves: dict[str, list[EvalPoint]], students: dict[str, list[EvalPoint]],
                 compute: dict[str, Any], finished: set[str]) -> list[str]:
    """For experiments of many students: the second half of every student's curve (left) and each one's final
    validation loss against its baseline's (right), where differences of a few hundredths stay legible.
    Only `finished` runs are drawn: an unfinished run's last loss is not its final one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = {n: c for n, c in students.items() if n in finished}
    if len(students) < 3:
        return []
    figure, (left, right) = plt.subplots(1, 2, figsize=(15, 0.32 * len(students) + 4.5),
                                         gridspec_kw={"width_ratios": [1.3, 1]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for i, (name, curve) in enumerate(students.items()):
        late = [p for p in curve if p.step >= 0.4 * curve[-1].step]
        left.plot([p.step for p in late], [p.loss for p in late], marker="o", markersize=2.5,
                  color=colours[i % len(colours)], linestyle=styles[(i // len(colours)) % len(styles)], label=name)
    ended = [(name, c["inheritance_end_step"], c["val_loss_at_inheritance_end"]) for name, c in compute.items()
             if name in students and c.get("inheritance_end_step") is not None
             and c["inheritance_end_step"] < students[name][-1].step]  # a switch before the end of the run
    for j, (name, step, loss) in enumerate(ended):
        left.plot([step], [loss], marker="D", markersize=7, markeredgecolor="black", linestyle="none",
                  color=colours[list(students).index(name) % len(colours)],
                  label="where inheritance ended" if j == 0 else None)
    left.set_xlabel("optimizer steps (second half of each run, or more)")
    left.set_ylabel("validation loss (nats per token)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8, ncol=2)
    names = list(students)[::-1]
    finals = [students[n][-1].loss for n in names]
    right.barh(range(len(names)), finals, color=[colours[list(students).index(n) % len(colours)] for n in names])
    for y, value in enumerate(finals):
        right.annotate(f"{value:.3f}", (value, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    drawn = sorted({c["baseline"] for n, c in compute.items() if n in students and c["baseline"] in finished})
    for k, baseline in enumerate(drawn):
        right.axvline(curves[baseline][-1].loss, color="black", linestyle=styles[k % len(styles)], linewidth=1,
                      label=f"{baseline} final")
    right.set_yticks(range(len(names)), names, fontsize=8)
    span = max(finals) - min(finals)
    right.set_xlim(min(finals) - 0.1 * span - 0.02, max(finals) + 0.25 * span + 0.02)
    right.set_xlabel("final validation loss (nats per token)")
    right.grid(axis="x", alpha=0.3)
    if compute:
        right.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    name = "summary.png"
    save_figure_atomic(figure, folder / name, dpi=110)
    plt.close(figure)
    return [name]


def plot_evaluation(folder: Path, evaluation: dict[str, dict[str, float]], students: set[str]) -> list[str]:
    """Each run's loss on every corpus its `evaluate:` lists, one panel per corpus (a domain-adapted model's
    target and source domains side by side: what it gained and what it forgot), saved as PNG. Each panel's
    scale is set by the `students` (the runs compared), so that a teacher or general model far off it does not
    flatten their differences; such a bar is cut at the panel's edge, with its value written there."""
    corpora = sorted({corpus for losses in evaluation.values() for corpus in losses})
    if len(corpora) < 2 or len(evaluation) < 2:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(evaluation)[::-1]  # the YAML's order, top to bottom
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    figure, axes = plt.subplots(1, len(corpora), figsize=(4.2 * len(corpora) + 1.5, 0.3 * len(names) + 1.8),
                                sharey=True, squeeze=False)
    for ax, corpus in zip(axes[0], corpora, strict=True):
        rows = [(y, evaluation[n][corpus]) for y, n in enumerate(names) if corpus in evaluation[n]]
        scale = [evaluation[n][corpus] for n in names if n in students and corpus in evaluation[n]]
        values = scale if len(scale) >= 2 else [v for _, v in rows]
        span = max(values) - min(values)
        low, high = min(values) - 0.15 * span - 0.05, max(values) + 0.3 * span + 0.05  # differences stay legible
        ax.barh([y for y, _ in rows], [min(v, high) for _, v in rows],
                color=[colours[(len(names) - 1 - y) % len(colours)] for y, _ in rows])
        for y, value in rows:
            if value > high:
                ax.annotate(f"{value:.3f} >", (high, y), xytext=(-3, 0), textcoords="offset points", va="center",
                            ha="right", fontsize=7, color="white", fontweight="bold")
            elif value < low:
                ax.annotate(f"< {value:.3f}", (low, y), xytext=(3, 0), textcoords="offset points", va="center",
                            fontsize=7)
            else:
                ax.annotate(f"{value:.3f}", (value, y), xytext=(3, 0), textcoords="offset points", va="center",
                            fontsize=7)
        ax.set_xlim(low, high)
        ax.set_title(corpus, fontsize=10)
        ax.set_xlabel("validation loss (nats per token)")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(names)), names, fontsize=8)
    figure.suptitle("Validation loss on each corpus (`evaluate:`)", fontsize=10)
    figure.tight_layout()
    name = "evaluation.png"
    save_figure_atomic(figure, folder / name, dpi=110)
    plt.close(figure)
    return [name]


def plot_finetuning(folder: Path, finetuning: dict[str, dict[str, Any]]) -> list[str]:
    """Test accuracy per task and run, bars with the seeds' standard deviation, saved as PNG."""
    if not finetuning:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({name for results in finetuning.values() for name in results})
    figure, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(finetuning) * len(names) / 2 + 2), 4.5))
    width = 0.8 / len(names)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    hatches = ["", "//", ".."]  # past the colour cycle, bars differ by hatching as curves do by line style
    low, high = 1.0, 0.0  # the axis spans the bars and the majority class, so that differences show
    for i, name in enumerate(names):
        xs = [t + (i - (len(names) - 1) / 2) * width for t in range(len(finetuning))]
        means = [results[name]["accuracy"]["mean"] if name in results else 0.0 for results in finetuning.values()]
        stds = [results[name]["accuracy"]["std"] if name in results else 0.0 for results in finetuning.values()]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=name, color=colours[i % len(colours)],
               hatch=hatches[(i // len(colours)) % len(hatches)], edgecolor="white")
        for x, mean, std in zip(xs, means, stds, strict=True):
            if mean:
                ax.text(x, mean + std + 0.003, f"{mean:.3f}", ha="center", va="bottom", fontsize=7, rotation=90)
                low, high = min(low, mean - std), max(high, mean + std)
    for t, results in enumerate(finetuning.values()):
        majority = next(iter(results.values()))["majority_test_accuracy"]
        low = min(low, majority)
        ax.hlines(majority, t - 0.45, t + 0.45, colors="black", linestyles="--", linewidth=1,
                  label="majority class" if t == 0 else None)
    ax.set_xticks(range(len(finetuning)), list(finetuning))
    ax.set_ylabel("test accuracy (mean +- std over seeds)")
    ax.set_ylim(max(0.0, low - 0.05), min(1.0, high + 0.08))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Downstream accuracy after fine-tuning")
    figure.tight_layout()
    name = "finetune.png"
    save_figure_atomic(figure, folder / name, dpi=110)
    plt.close(figure)
    return [name]


def plot_downstream(folder: Path, downstream: dict[str, dict[str, Any]]) -> list[str]:
    """Fine-tuned test accuracy against the pre-training step of each KI run and its baseline, one panel per task,
    with the baseline's final accuracy as a dashed line; saved as PNG."""
    tasks = sorted({task for results in downstream.values() for task in results})
    if not tasks:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        drawn: set[str] = set()
        for name, results in downstream.items():
            if task not in results:
                continue
            d = results[task]
            for run, points in ((name, d["ki"]), (d["baseline"], d["baseline_curve"])):
                if run in drawn:
                    continue
                drawn.add(run)
                steps = [float(step) for step in points]
                ax.errorbar(steps, [p["mean"] for p in points.values()], yerr=[p["std"] for p in points.values()],
                            marker="o", capsize=3, label=run)
            ax.axhline(d["baseline_final_accuracy"], color="grey", linestyle="--", linewidth=1)
            if d["reached_at_step"] is not None:
                ax.axvline(d["reached_at_step"], color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{task}: fine-tuned along pre-training")
        ax.set_xlabel("pre-training step of the checkpoint")
        ax.set_ylabel("test accuracy (mean +- std over fine-tuning seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    name = "finetune_steps.png"
    save_figure_atomic(figure, folder / name, dpi=110)
    plt.close(figure)
    return [name]


def keep_run_records(folder: Path, target: Path, names: list[str]) -> None:
    """Copy each finished run's log.jsonl and run.json into the report's `runs/NAME/`, so that a number read from
    a run's training log (a batch mean, an agreement, a FLOP total) is kept with the report that cites it."""
    for name in names:
        (target / "runs" / name).mkdir(parents=True, exist_ok=True)
        for record in (LOG_FILE, "run.json"):
            source = folder / "runs" / name / record
            if source.exists():
                write_text_atomic(target / "runs" / name / record, source.read_text(encoding="utf-8"))


def experiment_names(folder: str | Path) -> list[str]:
    """The experiments that use an output folder (each has a manifest there)."""
    check_current_layout(Path(folder))
    names = sorted(path.stem for path in (Path(folder) / MANIFESTS).glob("*.json"))
    if not names:
        raise KinheritError(f"{folder} is not an experiment folder (no {MANIFESTS}/NAME.json); give the output_dir "
                            "of `kinherit experiment`")
    return names


def write_report(folder: str | Path, experiment: str) -> dict[str, Any]:
    """Rebuild report.json, report.md and the plots of one experiment of output folder `folder` from the runs'
    logs, into `folder/reports/EXPERIMENT/`."""

    folder = Path(folder)
    if experiment not in experiment_names(folder):
        raise KinheritError(f"{folder} holds no experiment {experiment!r}; it holds "
                            f"{', '.join(experiment_names(folder))}")
    manifest = json.loads(manifest_path(folder, experiment).read_text(encoding="utf-8"))
    target = report_folder(folder, experiment)
    target.mkdir(parents=True, exist_ok=True)
    runs = manifest["runs"]
    for name in runs:
        check_name(f"run in {manifest_path(folder, experiment)}", name)
    curves = {name: read_curve(folder / "runs" / name) for name in runs}
    summaries = {}
    for name in runs:
        marker = folder / "runs" / name / "run.json"
        summaries[name] = json.loads(marker.read_text()) if marker.exists() else None
    sources = {name: [*r["teachers"], *([r["grow"]] if r.get("grow") else [])] for name, r in runs.items()}
    teacher_losses = {t: curves[t][-1].loss for t in sorted({t for s in sources.values() for t in s}) if curves.get(t)}
    compute: dict[str, Any] = {}
    for name, run in runs.items():
        baseline = run.get("baseline")
        if baseline and curves.get(name) and curves.get(baseline) and summaries.get(name) and summaries.get(baseline):
            teacher_loss = min((teacher_losses[t] for t in sources[name] if t in teacher_losses), default=None)
            compute[name] = compute_saved(curves[name], curves[baseline], teacher_loss)
            compute[name]["baseline"] = baseline
            end = inheritance_end(folder / "runs" / name)
            compute[name]["inheritance_end_step"] = end
            compute[name]["val_loss_at_inheritance_end"] = loss_at(curves[name], end) if end is not None else None
    groups: dict[str, Any] = {}
    by_group: dict[str, list[str]] = {}
    for name in compute:
        by_group.setdefault(runs[name]["group"], []).append(name)
    for group, members in by_group.items():
        if len(members) > 1:
            groups[group] = {key: summarise([compute[m][key] for m in members]) for key in FRACTIONS}
            groups[group]["members"] = members
            for key in ("ki_final_val_loss", "baseline_final_val_loss"):
                groups[group][key] = summarise([compute[m][key] for m in members])
    throughput = {name: s["tokens_per_second"] for name, s in summaries.items() if s}
    evaluation = {}  # each run's loss on the corpora its `evaluate:` lists
    finetuning: dict[str, dict[str, Any]] = {}  # task -> run -> test accuracy over seeds
    for name in runs:
        path = folder / "runs" / name / "evaluation.json"
        if path.exists():
            evaluation[name] = {corpus: row["loss"] for corpus, row in json.loads(path.read_text()).items()}
        for task, result in read_results(folder / "runs" / name / FINETUNING, experiment).items():
            finetuning.setdefault(task, {})[name] = result
    downstream, downstream_groups = _downstream(folder, runs, experiment)
    keep_run_records(folder, target, [name for name, summary in summaries.items() if summary])
    students = _students(curves, teacher_losses, runs)
    plots = (plot_curves(target, students, teacher_losses, compute, runs)
             + plot_summary(target, curves, students, compute, {n for n, s in summaries.items() if s})
             + plot_evaluation(target, evaluation, set(students))
             + plot_finetuning(target, finetuning) + plot_downstream(target, downstream))
    report = {"experiment": manifest["name"], "headline": _headline(compute, groups), "compute_saved": compute,
              "seed_summary": groups, "teacher_val_loss": teacher_losses, "tokens_per_second": throughput,
              "final_val_loss": {n: c[-1].loss for n, c in curves.items() if c},
              "runs_finished": sorted(n for n, s in summaries.items() if s), "evaluation": evaluation,
              "finetune": finetuning, "downstream_saved": downstream, "downstream_seed_summary": downstream_groups,
              "plots": plots}
    write_json_atomic(target / "report.json", report)
    write_text_atomic(target / "report.md", render_markdown(report, summaries))
    return report


def _downstream(folder: Path, runs: dict[str, Any], experiment: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Downstream compute saved of each KI run against its baseline, per task both fine-tuned along pre-training
    (`finetune_steps:`) in this experiment, and its steps fraction summarised over the seeds of each group."""
    along = {name: read_results(folder / "runs" / name / FINETUNING_ALONG, experiment) for name in runs}
    downstream: dict[str, Any] = {}
    for name, run in runs.items():
        baseline = run.get("baseline")
        for task, results in along.get(name, {}).items():
            if baseline and task in along.get(baseline, {}):
                saved = downstream_saved(results, along[baseline][task])
                downstream.setdefault(name, {})[task] = {**saved, "baseline": baseline,
                                                         "baseline_curve": saved.pop("baseline")}
    groups: dict[str, Any] = {}
    for name, results in downstream.items():
        for task, d in results.items():
            groups.setdefault(runs[name]["group"], {}).setdefault(task, []).append((name, d["steps_fraction"]))
    summaries = {group: {task: {**summarise([f for _n, f in pairs]), "members": [n for n, _f in pairs]}
                         for task, pairs in tasks.items() if len(pairs) > 1} for group, tasks in groups.items()}
    return downstream, {group: tasks for group, tasks in summaries.items() if tasks}


def render_markdown(report: dict[str, Any], summaries: dict[str, Any]) -> str:
    """The human-readable report."""
    lines = [f"# Experiment `{report['experiment']}`", "", f"**{report['headline']}**", ""]
    lines += ["## Runs", "", "| run | model | steps | final val loss | perplexity | tokens/s | train time (s) |",
              "|---|---|---|---|---|---|---|"]
    for name, summary in summaries.items():
        if summary is None:
            lines.append(f"| {name} | (not finished) | | | | | |")
            continue
        loss = summary["final_val_loss"]
        scored = f"{loss:.4f} | {perplexity(loss):.1f}" if loss is not None else "(no validation split) |"
        lines.append(f"| {name} | {summary['model']} | {summary['steps']} | {scored} | "
                     f"{summary['tokens_per_second']:.0f} | {summary['train_seconds']:.0f} |")
    if report["evaluation"]:
        corpora = sorted({corpus for losses in report["evaluation"].values() for corpus in losses})
        lines += ["", "## Validation loss on each corpus (`evaluate:`)", "",
                  "| run | " + " | ".join(corpora) + " |", "|---|" + "---|" * len(corpora)]
        for name, losses in report["evaluation"].items():
            cells = [f"{losses[c]:.4f}" if c in losses else "" for c in corpora]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if report["finetune"]:
        names = sorted({name for results in report["finetune"].values() for name in results})
        lines += ["", "## Downstream: test accuracy after fine-tuning (`finetune:`, mean +- std over seeds)", "",
                  "| task | " + " | ".join(names) + " | majority class |", "|---|" + "---|" * (len(names) + 1)]
        for task, results in report["finetune"].items():
            cells = [f"{results[n]['accuracy']['mean']:.4f} +- {results[n]['accuracy']['std']:.4f}" if n in results
                     else "" for n in names]
            majority = next(iter(results.values()))["majority_test_accuracy"]
            lines.append(f"| {task} | " + " | ".join(cells) + f" | {majority:.4f} |")
    if report["compute_saved"]:
        lines += ["", "## Compute saved", "",
                  "Fraction of the self-learning run's steps, FLOPs (teacher forward passes charged to KI) and "
                  "training wall-clock that the KI run needs to reach the self-learning run's final validation loss.",
                  "", "| KI run | baseline | steps | FLOPs | time | KI final | baseline final | teacher | inheritance "
                  "ends at | KI loss there |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, c in report["compute_saved"].items():
            teacher = "" if c["teacher_val_loss"] is None else f"{c['teacher_val_loss']:.4f}"
            end = "after the last step" if c["inheritance_end_step"] is None else f"step {c['inheritance_end_step']}"
            there = "" if c["val_loss_at_inheritance_end"] is None else f"{c['val_loss_at_inheritance_end']:.4f}"
            lines.append(f"| {name} | {c['baseline']} | {_percent(c['steps_fraction'])} | "
                         f"{_percent(c['flops_fraction'])} | {_percent(c['time_fraction'])} | "
                         f"{c['ki_final_val_loss']:.4f} | {c['baseline_final_val_loss']:.4f} | {teacher} | {end} | "
                         f"{there} |")
    for group, g in report["seed_summary"].items():
        lines += ["", f"### `{group}` over seeds ({', '.join(g['members'])})", "",
                  "| fraction | mean | std | min | max | reached |", "|---|---|---|---|---|---|"]
        for key in FRACTIONS:
            s = g[key]
            if s["mean"] is None:
                lines.append(f"| {key} | never | | | | 0/{s['runs']} |")
            else:
                lines.append(f"| {key} | {s['mean']:.3f} | {s['std']:.3f} | {s['min']:.3f} | {s['max']:.3f} | "
                             f"{s['reached']}/{s['runs']} |")
    for name, c in report["compute_saved"].items():
        rows = c["ki_val_loss_at_equal_steps"]
        if rows:
            lines += ["", f"### Validation loss at equal steps: `{name}` vs `{c['baseline']}`", "",
                      "| step | KI | baseline |", "|---|---|---|"]
            lines += [f"| {r['step']:.0f} | {r['ki']:.4f} | {r['baseline']:.4f} |" for r in rows]
    if report.get("downstream_saved"):
        lines += ["", "## Downstream compute saved (`finetune_steps:`)", "",
                  "Each checkpoint fine-tuned as `finetune:` does (test accuracy, mean +- std over fine-tuning seeds); "
                  "the step at which the KI run's accuracy first reaches its baseline's final accuracy, interpolated "
                  "between checkpoints."]
        for name, results in report["downstream_saved"].items():
            for task, d in results.items():
                at = "by" if d.get("reached_by_first") else "at"  # the first checkpoint: at or before it
                reached = ("never" if d["reached_at_step"] is None else
                           f"{at} step {d['reached_at_step']:.0f} ({_percent(d['steps_fraction'])} of its steps)")
                target = d["baseline_final_accuracy"]
                lines += ["", f"### `{name}` vs `{d['baseline']}` on {task}: reaches {target:.4f} {reached}", "",
                          "| step | KI | baseline |", "|---|---|---|"]
                for step in sorted({*d["ki"], *d["baseline_curve"]}, key=float):
                    cells = [f"{r[step]['mean']:.4f} +- {r[step]['std']:.4f}" if step in r else ""
                             for r in (d["ki"], d["baseline_curve"])]
                    lines.append(f"| {step} | " + " | ".join(cells) + " |")
        for group, tasks in report["downstream_seed_summary"].items():
            for task, s in tasks.items():
                mean = "never" if s["mean"] is None else f"{s['mean']:.3f} +- {s['std']:.3f}"
                lines += ["", f"`{group}` on {task} over seeds ({', '.join(s['members'])}): steps fraction {mean}, "
                          f"reached in {s['reached']}/{s['runs']}"]
    for plot in report["plots"]:
        lines += ["", f"![{plot}]({plot})"]
    return "\n".join(lines) + "\n"
