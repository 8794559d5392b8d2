"""Inheritance-rate schedules: values at chosen steps, range checks, and resuming from the step alone."""

from __future__ import annotations

import math

import pytest

from kinherit.core.errors import KinheritError
from kinherit.inheritance import (
    AdaptiveSchedule,
    Constant,
    CosineDecay,
    ExponentialDecay,
    LinearDecay,
    StepSchedule,
    make_schedule,
)


def test_linear_matches_the_paper():
    schedule = LinearDecay(55_000)  # BASE -> BASE_PLUS in the reference script
    assert schedule(0) == 1.0
    assert schedule(27_500) == pytest.approx(0.5)
    assert schedule(55_000) == 0.0 and schedule(125_000) == 0.0
    assert LinearDecay(100, start=0.6)(25) == pytest.approx(0.45)


def test_other_schedules():
    assert [StepSchedule(10)(s) for s in (0, 9, 10, 11)] == [1.0, 1.0, 0.0, 0.0]
    assert Constant(0.5)(0) == Constant(0.5)(10**6) == 0.5
    cosine = CosineDecay(100)
    assert cosine(0) == 1.0 and cosine(50) == pytest.approx(0.5) and cosine(100) == 0.0 and cosine(150) == 0.0
    exponential = ExponentialDecay(time_constant=20, start=0.8, steps=100)
    assert exponential(20) == pytest.approx(0.8 / math.e) and exponential(100) == 0.0


def test_resume_gives_the_same_rates():
    for build in (lambda: LinearDecay(300, 0.9), lambda: CosineDecay(250), lambda: StepSchedule(100),
                  lambda: ExponentialDecay(50.0)):
        uninterrupted = [build()(s) for s in range(0, 400, 7)]
        first, resumed = build(), build()  # a new object after a restart, same global steps
        assert [first(s) for s in range(0, 203, 7)] + [resumed(s) for s in range(203, 400, 7)] == uninterrupted


def test_adaptive_ends_when_the_student_matches_the_teacher():
    schedule = AdaptiveSchedule(base=Constant(1.0), teacher_loss=5.0)
    schedule.observe(100, 5.5)
    assert schedule(150) == 1.0
    schedule.observe(200, 4.99)
    assert schedule(199) == 1.0 and schedule(200) == 0.0 and schedule(10_000) == 0.0
    schedule.observe(300, 6.0)  # once ended, it stays ended
    assert schedule(300) == 0.0
    replayed = AdaptiveSchedule(base=Constant(1.0), teacher_loss=5.0)
    for step, loss in [(100, 5.5), (200, 4.99)]:
        replayed.observe(step, loss)
    assert replayed.ended_at == schedule.ended_at == 200


@pytest.mark.parametrize("build, message", [
    (lambda: LinearDecay(0), "positive integer"),
    (lambda: LinearDecay(10, start=1.5), "start must be in"),
    (lambda: Constant(-0.1), "value must be in"),
    (lambda: ExponentialDecay(0.0), "time_constant"),
    (lambda: make_schedule("linear"), "needs --inherit_steps"),
    (lambda: make_schedule("sigmoid", 10), "unknown inheritance schedule"),
])
def test_out_of_range_parameters(build, message):
    with pytest.raises(KinheritError, match=message):
        build()
