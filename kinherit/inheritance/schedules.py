"""Inheritance-rate schedules: `rate(step) -> alpha in [0, 1]`, where step counts optimizer updates.

Every schedule is a pure function of the global step (the adaptive one also of the evaluations the
trainer feeds it, which the trainer replays from its log on resume), so a resumed run gets exactly
the rates of an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from kinherit.core.errors import KinheritError


def _check_unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0 or not math.isfinite(value):
        raise KinheritError(f"{name} must be in [0, 1], got {value}")


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise KinheritError(f"inheritance steps must be a positive integer, got {steps!r}")


@dataclass(frozen=True)
class _Decay:
    """A decay from `start` to 0 at step `steps`."""

    steps: int
    start: float = 1.0

    def __post_init__(self) -> None:
        _check_steps(self.steps)
        _check_unit("start", self.start)


@dataclass(frozen=True)
class LinearDecay(_Decay):
    """The paper's schedule: alpha_t = max(0, start * (1 - t / steps)) (Qin et al., Eq. 2)."""

    def __call__(self, step: int) -> float:
        return max(0.0, self.start * (1.0 - step / self.steps))


@dataclass(frozen=True)
class Constant:
    """A fixed teacher weight for the whole run (the paper's 1:1 'Constant' arm is value 0.5)."""

    value: float = 0.5

    def __post_init__(self) -> None:
        _check_unit("value", self.value)

    def __call__(self, step: int) -> float:
        return self.value


@dataclass(frozen=True)
class StepSchedule:
    """The reference hard switch ('Heviside'): `value` (pure KI at 1.0) before `steps`, 0 from then on."""

    steps: int
    value: float = 1.0

    def __post_init__(self) -> None:
        _check_steps(self.steps)
        _check_unit("value", self.value)

    def __call__(self, step: int) -> float:
        return self.value if step < self.steps else 0.0


@dataclass(frozen=True)
class CosineDecay(_Decay):
    """alpha_t = start * (1 + cos(pi * t / steps)) / 2 until `steps`, then 0."""

    def __call__(self, step: int) -> float:
        if step >= self.steps:
            return 0.0
        return self.start * 0.5 * (1.0 + math.cos(math.pi * step / self.steps))


@dataclass(frozen=True)
class ExponentialDecay:
    """alpha_t = start * exp(-t / time_constant), cut to 0 from `steps` on (if given)."""

    time_constant: float
    start: float = 1.0
    steps: int | None = None

    def __post_init__(self) -> None:
        if not self.time_constant > 0:
            raise KinheritError(f"time_constant must be positive, got {self.time_constant}")
        _check_unit("start", self.start)
        if self.steps is not None:
            _check_steps(self.steps)

    def __call__(self, step: int) -> float:
        if self.steps is not None and step >= self.steps:
            return 0.0
        return self.start * math.exp(-step / self.time_constant)


@dataclass
class AdaptiveSchedule:
    """Follow `base` until the student's validation loss is no worse than the teachers', then 0 for good.

    The trainer calls `observe(step, student_val_loss)` after each evaluation and sets `teacher_loss`
    (the best teacher's validation loss) before training. `margin` asks the student to beat the
    teacher by that much first.
    """

    base: object = field(default_factory=lambda: Constant(1.0))
    teacher_loss: float | None = None
    margin: float = 0.0
    ended_at: int | None = None

    def observe(self, step: int, student_val_loss: float) -> None:
        """Record an evaluation; inheritance ends at the first step where the student matches the teacher."""
        if self.teacher_loss is None or self.ended_at is not None:
            return
        if student_val_loss <= self.teacher_loss - self.margin:
            self.ended_at = step

    def __call__(self, step: int) -> float:
        if self.ended_at is not None and step >= self.ended_at:
            return 0.0
        return float(self.base(step))


SCHEDULES = ("linear", "constant", "step", "cosine", "exponential", "adaptive")


def make_schedule(name: str, steps: int | None = None, start: float = 1.0, value: float = 0.5,
                  time_constant: float | None = None, margin: float = 0.0):
    """Build a schedule from command-line style options."""
    if name in ("linear", "step", "cosine") and steps is None:
        raise KinheritError(f"the {name} schedule needs --inherit_steps (the step where alpha reaches 0)")
    if name == "linear":
        return LinearDecay(steps, start)
    if name == "constant":
        return Constant(value)
    if name == "step":
        return StepSchedule(steps, start)
    if name == "cosine":
        return CosineDecay(steps, start)
    if name == "exponential":
        if time_constant is None:
            if steps is None:
                raise KinheritError("the exponential schedule needs --inherit_time_constant or --inherit_steps")
            time_constant = steps / 5.0
        return ExponentialDecay(time_constant, start, steps)
    if name == "adaptive":
        base = LinearDecay(steps, start) if steps is not None else Constant(start)
        return AdaptiveSchedule(base=base, margin=margin)
    raise KinheritError(f"unknown inheritance schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
