"""The compute-saved analysis: how much of the self-learning run's budget the KI run needs.

The target is the self-learning (baseline) run's final validation loss. The KI run's validation
curve is walked in order; at the first evaluation at or below the target, the crossing is
interpolated linearly (in loss) from the previous evaluation, and the same interpolation gives the
step, the cumulative training FLOPs (teacher forward passes included) and the training seconds at
the crossing. Each is divided by the baseline's final value. A run that never reaches the target
gets None, never a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EvalPoint:
    """One evaluation of a run: step, validation loss, cumulative training FLOPs and seconds."""

    step: float
    loss: float
    flops: float
    seconds: float


def crossing(curve: list[EvalPoint], target: float) -> EvalPoint | None:
    """The interpolated point where `curve` first reaches `target` (loss <= target), or None."""
    previous = None
    for point in curve:
        if math.isfinite(point.loss) and point.loss <= target:
            if previous is None or previous.loss == point.loss:
                return point
            t = (previous.loss - target) / (previous.loss - point.loss)

            def lerp(a: float, b: float, t: float = t) -> float:
                return a + t * (b - a)

            return EvalPoint(step=lerp(previous.step, point.step), loss=target,
                             flops=lerp(previous.flops, point.flops), seconds=lerp(previous.seconds, point.seconds))
        previous = point
    return None


def loss_at(curve: list[EvalPoint], step: float) -> float | None:
    """Validation loss at `step`, interpolated between evaluations (None outside the curve)."""
    for before, after in zip(curve, curve[1:], strict=False):
        if before.step <= step <= after.step:
            if after.step == before.step:
                return after.loss
            t = (step - before.step) / (after.step - before.step)
            return before.loss + t * (after.loss - before.loss)
    if curve and curve[-1].step == step:
        return curve[-1].loss
    return None


def compute_saved(ki: list[EvalPoint], baseline: list[EvalPoint], teacher_loss: float | None) -> dict[str, Any]:
    """Fractions of the baseline's steps, FLOPs and time the KI run needs to reach its final loss."""
    if not ki or not baseline:
        raise ValueError("both runs need at least one evaluation")
    final = baseline[-1]
    hit = crossing(ki, final.loss)

    def fraction(value: float | None, whole: float) -> float | None:
        return None if value is None or whole <= 0 else value / whole

    equal_steps = [{"step": p.step, "ki": p.loss, "baseline": loss_at(baseline, p.step)}
                   for p in ki if loss_at(baseline, p.step) is not None]
    return {
        "steps_fraction": fraction(hit.step if hit else None, final.step),
        "flops_fraction": fraction(hit.flops if hit else None, final.flops),
        "time_fraction": fraction(hit.seconds if hit else None, final.seconds),
        "reached_at_step": hit.step if hit else None,
        "baseline_final_val_loss": final.loss,
        "ki_final_val_loss": ki[-1].loss,
        "teacher_val_loss": teacher_loss,
        "ki_beats_baseline": ki[-1].loss < final.loss,
        "ki_beats_teacher": None if teacher_loss is None else ki[-1].loss < teacher_loss,
        "ki_val_loss_at_equal_steps": equal_steps,
    }


def downstream_saved(ki: dict[str, dict[str, Any]], baseline: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The pre-training step at which the KI run's fine-tuned test accuracy (mean over fine-tuning seeds) first
    reaches the baseline's at its last step, interpolated as `crossing` does, and its fraction of that step.

    `ki` and `baseline` map a pre-training step (as a string, from JSON) to a `kinherit finetune` result.
    """
    if not ki or not baseline:
        raise ValueError("both runs need at least one fine-tuned step")

    def curve(results: dict[str, dict[str, Any]]) -> list[EvalPoint]:  # accuracy negated: higher is better
        return [EvalPoint(step=float(step), loss=-results[step]["accuracy"]["mean"], flops=0.0, seconds=0.0)
                for step in sorted(results, key=float)]

    ki_curve, baseline_curve = curve(ki), curve(baseline)
    final = baseline_curve[-1]
    hit = crossing(ki_curve, final.loss)

    def accuracy(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
        return {step: {key: results[step]["accuracy"][key] for key in ("mean", "std")}
                for step in sorted(results, key=float)}

    return {"ki": accuracy(ki), "baseline": accuracy(baseline), "baseline_final_step": final.step,
            "baseline_final_accuracy": -final.loss, "reached_at_step": hit.step if hit else None,
            "steps_fraction": hit.step / final.step if hit else None,
            "reached_by_first": hit is not None and hit.step == ki_curve[0].step}  # at or before it: an upper bound


def summarise(values: list[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max over seeds; counts how many reached the target."""
    reached = [v for v in values if v is not None]
    if not reached:
        return {"mean": None, "std": None, "min": None, "max": None, "reached": 0, "runs": len(values)}
    mean = sum(reached) / len(reached)
    std = math.sqrt(sum((v - mean) ** 2 for v in reached) / (len(reached) - 1)) if len(reached) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(reached), "max": max(reached), "reached": len(reached),
            "runs": len(values)}
