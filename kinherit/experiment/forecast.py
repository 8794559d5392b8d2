"""Forecast what KI will save from the first part of a KI run and of its self-learning baseline (the pilots).

Each validation curve is fitted with a saturating power law, L(t) = a + b * t^-c (scipy's `curve_fit`, the
evaluations after the learning-rate warm-up), and extrapolated to the budget of T steps: the baseline's fitted
loss at T is the target, and the forecast is the step at which the KI curve's fit reaches it (as a fraction of
T), and the step at which it passes the teacher's validation loss (the natural end of inheritance). The
uncertainty is a residual bootstrap: each curve refitted to its fit plus resampled residuals, the forecasts' 10th
and 90th percentiles.
Pilots must be the start of the full runs: the learning-rate and inheritance schedules of T steps, stopped early.
How far to trust it is measured by `benchmarks/plan_backtest.py` on finished pairs (docs/RESULTS.md).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from kinherit.core.errors import KinheritError

MIN_POINTS = 3  # evaluations after step 0 that a curve needs to be fitted
BOOTSTRAP = 200  # refits per curve for the uncertainty
PERCENTILES = (10, 90)
NEVER = 1e300  # a step the curve never reaches, inside a percentile


def power_law(steps: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """L(t) = a + b * t^-c: the loss falls as a power of the steps towards a floor a."""
    return a + b * np.power(steps, -c)


@dataclass(frozen=True)
class Fit:
    """A fitted curve: its parameters (a, b, c), the steps it was fitted at and its residuals there."""

    a: float
    b: float
    c: float
    steps: np.ndarray
    residuals: np.ndarray

    def __call__(self, steps: float | np.ndarray) -> float | np.ndarray:
        return power_law(np.asarray(steps, dtype=float), self.a, self.b, self.c)

    def step_reaching(self, loss: float) -> float:
        """The step at which the fitted loss falls to `loss` (infinite when it never does)."""
        if loss <= self.a or self.b <= 0:
            return math.inf
        return float((self.b / (loss - self.a)) ** (1.0 / self.c))


def fit_curve(steps: Sequence[float], losses: Sequence[float], after: float = 0.0) -> Fit:
    """Fit L(t) = a + b t^-c to the evaluations at steps > `after` (the learning-rate warm-up, whose transient the
    law does not describe); a clear error when there are too few."""
    points = [(s, loss) for s, loss in zip(steps, losses, strict=True) if s > max(after, 0) and math.isfinite(loss)]
    if len(points) < MIN_POINTS:
        raise KinheritError(f"a forecast needs at least {MIN_POINTS} evaluations after step {after:g} (the warm-up) "
                            f"in each pilot, got {len(points)}; evaluate more often (--evaluations) or run longer "
                            "pilots (--pilot_fraction)")
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    return _fit(x, y)


def _fit(x: np.ndarray, y: np.ndarray) -> Fit:
    start = (max(float(y.min()) - 1.0, 0.0), float(y[0] - y.min() + 1.0) * float(x[0]) ** 0.5, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        try:
            (a, b, c), _cov = curve_fit(power_law, x, y, p0=start, bounds=([0.0, 0.0, 0.01], [np.inf, np.inf, 4.0]),
                                        maxfev=20000)
        except RuntimeError as error:
            raise KinheritError(f"the pilot curve could not be fitted ({error}); run longer pilots") from error
    return Fit(float(a), float(b), float(c), x, y - power_law(x, a, b, c))


def _resampled(fit: Fit, rng: np.random.Generator) -> Fit | None:
    y = fit(fit.steps) + rng.choice(fit.residuals, size=len(fit.steps), replace=True)
    try:
        return _fit(fit.steps, y)
    except KinheritError:
        return None


def forecast(baseline: tuple[Sequence[float], Sequence[float]], ki: tuple[Sequence[float], Sequence[float]],
             budget_steps: float, teacher_loss: float | None = None, seed: int = 0,
             fit_from: float = 0.0) -> dict[str, Any]:
    """The forecast from two pilot curves, each (steps, losses), fitted after step `fit_from` (the warm-up): the
    baseline's loss at `budget_steps`, the fraction of the budget KI needs to reach it, and the step where KI
    passes `teacher_loss`, each with its bootstrap interval; and a verdict ("pays", "does not pay" or
    "uncertain")."""
    fits = {"baseline": fit_curve(*baseline, after=fit_from), "ki": fit_curve(*ki, after=fit_from)}

    def quantities(base: Fit, student: Fit) -> tuple[float, float, float]:
        target = float(base(budget_steps))
        passes = student.step_reaching(teacher_loss) if teacher_loss is not None else math.nan
        return target, student.step_reaching(target) / budget_steps, passes

    target, fraction, passes = quantities(fits["baseline"], fits["ki"])
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(BOOTSTRAP):
        base, student = _resampled(fits["baseline"], rng), _resampled(fits["ki"], rng)
        if base is not None and student is not None:
            samples.append(quantities(base, student))
    drawn = np.array(samples, dtype=float) if samples else np.full((1, 3), math.nan)

    def interval(column: int) -> list[float | None]:
        values = drawn[:, column]
        values = np.minimum(values[~np.isnan(values)], NEVER)  # "never" sorts last without inf arithmetic
        if not len(values):
            return [None, None]
        return [_finite(float(np.percentile(values, q))) for q in PERCENTILES]

    fraction_interval = interval(1)
    if fraction_interval[1] is not None and fraction_interval[1] < 1.0:
        verdict = "pays"
    elif fraction_interval[0] is None or fraction_interval[0] >= 1.0:
        verdict = "does not pay"
    else:
        verdict = "uncertain"
    return {
        "budget_steps": budget_steps,
        "baseline_final_loss": target, "baseline_final_loss_interval": interval(0),
        "steps_fraction": _finite(fraction), "steps_fraction_interval": fraction_interval,
        "passes_teacher_at_step": _finite(passes), "passes_teacher_interval": interval(2),
        "teacher_loss": teacher_loss, "verdict": verdict, "fit_from_step": fit_from,
        "fits": {name: {"a": fit.a, "b": fit.b, "c": fit.c,
                        "rmse": float(np.sqrt(np.mean(fit.residuals ** 2)))} for name, fit in fits.items()},
        "bootstrap": len(samples),
    }


def _finite(value: float) -> float | None:
    """None for a quantity the curves never reach (an infinite or undefined step), else the value."""
    return value if math.isfinite(value) and value < NEVER else None
