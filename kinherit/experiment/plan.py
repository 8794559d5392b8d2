"""`kinherit plan`: will KI pay for this student, teacher, data and budget? Short pilots of the self-learning and
the KI run (the full run's learning-rate and inheritance schedules, stopped at a fraction of the budget), their
curves fitted and extrapolated (`forecast`), and the teachers' loss on the student's data (one evaluation pass,
the cheap signal that ranks candidate teachers before any pilot). Writes `plan.json` and `plan.png`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainingArguments

from kinherit.commands.evaluate import evaluate
from kinherit.commands.pretrain import pretrain
from kinherit.core.atomic import write_json_atomic
from kinherit.core.errors import KinheritError
from kinherit.core.run_log import LOG_FILE, read_records
from kinherit.experiment.forecast import MIN_POINTS, forecast
from kinherit.training.load_teachers import parse_teacher_specs
from kinherit.training.options import DataArguments, EvaluateArguments, InheritanceArguments, ModelArguments
from kinherit.training.teacher_cache import TeacherCache

ARMS = ("scratch", "ki")


@dataclass
class PlanArguments:
    """How long the pilots run and how often they are evaluated (`--max_steps` is the full run's budget)."""

    pilot_fraction: float = field(default=0.25, metadata={
        "help": "Share of --max_steps each pilot trains, with the full run's schedules (the back-test in "
                "docs/RESULTS.md measures the error of pilots of 0.25, 0.375 and 0.5)."})
    evaluations: int = field(default=8, metadata={
        "help": "Validation evaluations per pilot after step 0: the points the curves are fitted to."})

    def __post_init__(self) -> None:
        if not 0.0 < self.pilot_fraction < 1.0:
            raise KinheritError(f"--pilot_fraction must be between 0 and 1, got {self.pilot_fraction}")
        if self.evaluations < MIN_POINTS:
            raise KinheritError(f"--evaluations must be at least {MIN_POINTS} (the fit needs them), got "
                                f"{self.evaluations}")


class _StopAt(TrainerCallback):
    """End training, with an evaluation, at the pilot's last step: the schedules stay those of the whole run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
            control.should_evaluate = True
        return control


def plan(model_args: ModelArguments, data: DataArguments, inherit: InheritanceArguments,
         training_args: TrainingArguments, options: PlanArguments) -> dict[str, Any]:
    """Run (or reuse) the two pilots under `training_args.output_dir`, forecast, and write plan.json and plan.png."""
    if not inherit.teacher and not inherit.teacher_cache:
        raise KinheritError("kinherit plan needs --teacher (or --teacher_cache): it forecasts KI against "
                            "self-learning")
    budget = training_args.max_steps
    if budget <= 0:
        raise KinheritError("kinherit plan needs --max_steps: the full run's budget, which the pilots' schedules use")
    pilot = max(options.evaluations, round(budget * options.pilot_fraction))
    every = max(1, pilot // options.evaluations)
    warmup = training_args.get_warmup_steps(budget)
    if sum(step > warmup for step in range(every, pilot + 1, every)) < MIN_POINTS:
        raise KinheritError(f"the pilots ({pilot} steps, evaluated every {every}) hold fewer than {MIN_POINTS} "
                            f"evaluations after the warm-up ({warmup} steps); raise --pilot_fraction or "
                            "--evaluations, or shorten the warm-up")
    folder = Path(training_args.output_dir)
    teacher_loss = teachers_loss(inherit, data)
    curves, costs = {}, {}
    for arm in ARMS:
        arm_inherit = inherit if arm == "ki" else InheritanceArguments()
        output = folder / arm
        if (output / "run.json").exists():
            done = json.loads((output / "run.json").read_text())
            wanted = (model_args.model, pilot, list(arm_inherit.teacher))
            if (done.get("model"), done.get("steps"), done.get("teachers", [])) != wanted:
                raise KinheritError(f"{output} holds another pilot (model, steps, teachers: {done.get('model')}, "
                                    f"{done.get('steps')}, {done.get('teachers', [])}; this plan needs "
                                    f"{', '.join(map(str, wanted))}); delete it or choose another --output_dir")
        else:
            args = replace(training_args, output_dir=str(output), eval_strategy="steps", eval_steps=every,
                           eval_on_start=True, save_strategy="no", logging_steps=every)
            pretrain(model_args, data, arm_inherit, args, callbacks=[_StopAt(pilot)])
        points = [record for record in read_records(output / LOG_FILE) if "eval_loss" in record]
        curves[arm] = {"steps": [p["step"] for p in points], "loss": [p["eval_loss"] for p in points]}
        last = points[-1]
        costs[arm] = {"flops_per_step": last.get("train_flops", 0.0) / max(last["step"], 1),
                      "seconds_per_step": last.get("train_seconds", 0.0) / max(last["step"], 1)}
    result = forecast((curves["scratch"]["steps"], curves["scratch"]["loss"]),
                      (curves["ki"]["steps"], curves["ki"]["loss"]), budget, teacher_loss,
                      fit_from=warmup)
    result.update(_costs(result, costs))
    passes = result["passes_teacher_at_step"]
    result["recommended_inherit_steps"] = round(passes) if passes is not None and passes <= budget else None
    result.update({"pilot_steps": pilot, "pilot_fraction": pilot / budget, "curves": curves, "costs": costs})
    write_json_atomic(folder / "plan.json", result)
    result["plot"] = str(plot(result, folder / "plan.png"))
    return result


def teachers_loss(inherit: InheritanceArguments, data: DataArguments) -> float | None:
    """The best teacher's validation loss on the student's data: one evaluation pass per teacher (a cache
    measured it when it was built)."""
    if inherit.teacher_cache:
        return TeacherCache(inherit.teacher_cache).teacher_val_loss
    paths, _domains = parse_teacher_specs(inherit.teacher)
    losses = []
    for path in paths:
        rows = evaluate(EvaluateArguments(
            checkpoint=path, corpus=list(data.corpus), block_size=data.block_size,
            validation_fraction=data.validation_fraction, mlm_probability=data.mlm_probability,
            eval_mask_seed=data.eval_mask_seed, text_field=data.text_field, max_documents=data.max_documents,
            train_fraction=data.train_fraction, train_offset=data.train_offset, cache_dir=data.cache_dir,
            chunk_size=inherit.chunk_size))["rows"]
        losses.append(sum(r["loss"] * r["positions"] for r in rows) / sum(r["positions"] for r in rows))
    return min(losses)


def _costs(result: dict[str, Any], costs: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The FLOPs and time fractions: the steps fraction times KI's cost per step over self-learning's."""
    out = {}
    for name, key in (("flops", "flops_per_step"), ("time", "seconds_per_step")):
        ratio = costs["ki"][key] / costs["scratch"][key] if costs["scratch"][key] else math.nan

        def scale(value: float | None, ratio: float = ratio) -> float | None:
            return None if value is None or math.isnan(ratio) else value * ratio

        out[f"{name}_fraction"] = scale(result["steps_fraction"])
        out[f"{name}_fraction_interval"] = [scale(v) for v in result["steps_fraction_interval"]]
    return out


def plot(result: dict[str, Any], path: Path) -> Path:
    """The pilots' evaluations, the fitted curves over the whole budget, the target and the teacher's loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from kinherit.experiment.forecast import power_law

    budget = result["budget_steps"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    grid = np.linspace(max(1.0, budget / 200), budget, 200)
    for arm, color, label in (("scratch", "tab:gray", "self-learning"), ("ki", "tab:blue", "KI")):
        curve, fit = result["curves"][arm], result["fits"]["baseline" if arm == "scratch" else "ki"]
        ax.plot(curve["steps"][1:], curve["loss"][1:], "o", color=color, label=f"{label} pilot")
        ax.plot(grid, power_law(grid, fit["a"], fit["b"], fit["c"]), "--", color=color, label=f"{label} fit")
    ax.axvline(result["fit_from_step"], color="black", lw=0.6, ls=":", label="end of the warm-up (fits start)")
    ax.axhline(result["baseline_final_loss"], color="tab:gray", lw=0.8, ls=":",
               label="self-learning's forecast final loss")
    if result["teacher_loss"] is not None:
        ax.axhline(result["teacher_loss"], color="tab:orange", lw=0.8, ls=":", label="teacher's loss")
    if result["steps_fraction"] is not None and result["steps_fraction"] <= 1:
        ax.axvline(result["steps_fraction"] * budget, color="tab:blue", lw=0.8, ls=":",
                   label=f"KI reaches it: {result['steps_fraction']:.0%} of the steps")
    ax.axvline(result["pilot_steps"], color="black", lw=0.6, label="end of the pilots")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.set_title(f"kinherit plan: {result['verdict']}")
    low = min(min(result["curves"][arm]["loss"]) for arm in ARMS)
    ax.set_ylim(min(low, result["baseline_final_loss"]) - 0.3, max(result["curves"]["scratch"]["loss"][1:]) + 0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The forecast in words, with its 10-90% intervals."""
    def pct(value):
        return "never" if value is None else f"{value:.0%}"

    def span(values):
        return f"{pct(values[0])}-{pct(values[1])}"

    lines = [f"pilots: {result['pilot_steps']} of {result['budget_steps']} steps each",
             f"self-learning's final loss at the budget (forecast): {result['baseline_final_loss']:.3f}"]
    if result["teacher_loss"] is not None:
        lines.append(f"teacher's validation loss on this data: {result['teacher_loss']:.3f}")
    lines.append(f"KI reaches it in {pct(result['steps_fraction'])} of the steps "
                 f"({span(result['steps_fraction_interval'])}), {pct(result['flops_fraction'])} of the FLOPs, "
                 f"{pct(result['time_fraction'])} of the time")
    if result["recommended_inherit_steps"] is not None:
        lines.append(f"the student passes its teacher at about step {result['recommended_inherit_steps']}: "
                     f"--inherit_steps {result['recommended_inherit_steps']}")
    elif result["teacher_loss"] is not None:
        lines.append("the student is not forecast to pass its teacher within the budget")
    verdict = {"pays": "KI will pay here", "does not pay": "KI will not pay here",
               "uncertain": "uncertain: the interval spans both; run longer pilots (--pilot_fraction)"}
    lines.append(verdict[result["verdict"]])
    return lines
