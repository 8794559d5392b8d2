"""The forecast of `kinherit plan`: fits that recover known curves, verdicts, the pilots' reuse, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kinherit.core.errors import KinheritError
from kinherit.experiment import plan as plan_module
from kinherit.experiment.forecast import fit_curve, forecast, power_law
from kinherit.experiment.plan import PlanArguments

BUDGET = 800
STEPS = [0, 25, 50, 75, 100, 125, 150, 175, 200]  # a pilot of a quarter of the budget, evaluated every 25 steps


def curve(a: float, b: float, c: float, noise: float = 0.0, seed: int = 0) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed)
    losses = [9.0] + [float(power_law(s, a, b, c)) + noise * rng.standard_normal() for s in STEPS[1:]]
    return STEPS, losses


def test_a_fit_recovers_a_power_law():
    fit = fit_curve(*curve(4.0, 12.0, 0.4))
    assert (fit.a, fit.b, fit.c) == pytest.approx((4.0, 12.0, 0.4), rel=1e-4)
    assert fit.step_reaching(float(power_law(300.0, 4.0, 12.0, 0.4))) == pytest.approx(300.0, rel=1e-4)
    assert fit.step_reaching(3.9) == float("inf")  # below the floor: never


def test_the_forecast_is_the_exact_answer_for_exact_curves():
    """Baseline 4 + 12 t^-0.4 and KI 3.8 + 12 t^-0.45: the KI step reaching the baseline's loss at 800 steps,
    and the step passing a teacher at 5.0, solved by hand."""
    made = forecast(curve(4.0, 12.0, 0.4), curve(3.8, 12.0, 0.45), BUDGET, teacher_loss=5.0)
    target = 4.0 + 12.0 * BUDGET ** -0.4
    assert made["baseline_final_loss"] == pytest.approx(target, rel=1e-6)
    assert made["steps_fraction"] == pytest.approx((12.0 / (target - 3.8)) ** (1 / 0.45) / BUDGET, rel=1e-4)
    assert made["passes_teacher_at_step"] == pytest.approx((12.0 / (5.0 - 3.8)) ** (1 / 0.45), rel=1e-4)
    assert made["verdict"] == "pays" and made["steps_fraction"] < 0.7


def test_noisy_pilots_give_an_interval_around_the_truth():
    truth = forecast(curve(4.0, 12.0, 0.4), curve(3.8, 12.0, 0.45), BUDGET)["steps_fraction"]
    made = forecast(curve(4.0, 12.0, 0.4, noise=0.01, seed=1), curve(3.8, 12.0, 0.45, noise=0.01, seed=2), BUDGET)
    low, high = made["steps_fraction_interval"]
    assert low < high and abs(made["steps_fraction"] - truth) < 0.1 and made["bootstrap"] > 150


def test_a_student_that_trails_self_learning_does_not_pay():
    made = forecast(curve(4.0, 12.0, 0.4), curve(4.3, 12.0, 0.4), BUDGET, teacher_loss=4.2)
    assert made["steps_fraction"] > 3 and made["passes_teacher_at_step"] is None  # 4.2 is below its floor
    assert made["verdict"] == "does not pay"
    floor = forecast(curve(4.0, 12.0, 0.4), curve(4.9, 12.0, 0.4), BUDGET)
    assert floor["steps_fraction"] is None and floor["steps_fraction_interval"] == [None, None]


def test_too_few_evaluations_and_bad_options_are_errors():
    with pytest.raises(KinheritError, match="at least 3 evaluations after step 0"):
        forecast(([0, 10, 20], [9.0, 7.0, 6.0]), curve(4.0, 12.0, 0.4), BUDGET)
    with pytest.raises(KinheritError, match="--pilot_fraction must be between 0 and 1"):
        PlanArguments(pilot_fraction=1.0)
    with pytest.raises(KinheritError, match="--evaluations must be at least 3"):
        PlanArguments(evaluations=2)


def test_finished_pilots_are_read_not_retrained(tmp_path, monkeypatch):
    """A plan run again over the same folder forecasts from the pilots' logs; a pilot of another length is
    refused with the fix."""
    from kinherit.training.options import DataArguments, InheritanceArguments, KinheritTrainingArguments, ModelArguments

    for arm, (a, c) in {"scratch": (4.0, 0.4), "ki": (3.8, 0.45)}.items():
        folder = tmp_path / arm
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({"steps": 200, "model": "llama-1x64",
                                                     "teachers": ["t"] if arm == "ki" else []}))
        steps, losses = curve(a, 12.0, c)
        (folder / "log.jsonl").write_text("".join(
            json.dumps({"step": s, "eval_loss": loss, "train_flops": s * (2.0 if arm == "ki" else 1.0),
                        "train_seconds": s * 0.1}) + "\n" for s, loss in zip(steps, losses, strict=True)))
    monkeypatch.setattr(plan_module, "pretrain", lambda *a, **k: pytest.fail("a finished pilot was retrained"))
    monkeypatch.setattr(plan_module, "teachers_loss", lambda *a: 5.0)
    args = KinheritTrainingArguments(output_dir=str(tmp_path), max_steps=BUDGET, report_to="none", use_cpu=True)
    made = plan_module.plan(ModelArguments(model="llama-1x64"), DataArguments(),
                            InheritanceArguments(teacher=["t"], inherit_steps=BUDGET), args, PlanArguments())
    assert made["pilot_steps"] == 200 and made["verdict"] == "pays"
    assert made["flops_fraction"] == pytest.approx(2 * made["steps_fraction"])
    assert made["recommended_inherit_steps"] == round(made["passes_teacher_at_step"])
    assert json.loads((tmp_path / "plan.json").read_text())["steps_fraction"] == made["steps_fraction"]
    assert (tmp_path / "plan.png").stat().st_size > 10_000
    args = KinheritTrainingArguments(output_dir=str(tmp_path), max_steps=400, report_to="none", use_cpu=True)
    with pytest.raises(KinheritError, match="holds another pilot .*delete it or choose another --output_dir"):
        plan_module.plan(ModelArguments(model="llama-1x64"), DataArguments(),
                         InheritanceArguments(teacher=["t"], inherit_steps=400), args, PlanArguments())
