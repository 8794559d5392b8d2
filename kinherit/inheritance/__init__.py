"""The method itself, usable without our trainer: the loss, its divergences, schedules and teachers."""

from kinherit.inheritance.divergences import (
    DIVERGENCES,
    InheritanceLoss,
    LossParts,
    chunked_loss,
    divergence_per_position,
    mixture_log_probs,
)
from kinherit.inheritance.schedules import (
    SCHEDULES,
    AdaptiveSchedule,
    Constant,
    CosineDecay,
    ExponentialDecay,
    LinearDecay,
    StepSchedule,
    make_schedule,
)
from kinherit.inheritance.teachers import TeacherSet, load_teacher, parse_teacher_specs

__all__ = ["DIVERGENCES", "SCHEDULES", "AdaptiveSchedule", "Constant", "CosineDecay", "ExponentialDecay",
           "InheritanceLoss", "LinearDecay", "LossParts", "StepSchedule", "TeacherSet", "chunked_loss",
           "divergence_per_position", "load_teacher", "make_schedule", "mixture_log_probs",
           "parse_teacher_specs"]
