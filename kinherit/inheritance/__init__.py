"""The method itself, usable without our trainer: the loss, its divergences, teacher targets, schedules, live
teachers, and the kernels that compute the forward KL (`kinherit.inheritance.kernels`).

May import: `kinherit.core`, `kinherit.models`; never data, training or anything above.
"""

from kinherit.inheritance.divergences import DIVERGENCES, divergence_per_position, mixture_log_probs
from kinherit.inheritance.loss import InheritanceLoss, LossParts, LossSums
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
from kinherit.inheritance.targets import Target, TeacherSource
from kinherit.inheritance.teachers import TeacherSet
from kinherit.inheritance.topk import TopKTarget

__all__ = ["DIVERGENCES", "SCHEDULES", "AdaptiveSchedule", "Constant", "CosineDecay", "ExponentialDecay",
           "InheritanceLoss", "LinearDecay", "LossParts", "LossSums", "StepSchedule", "Target", "TeacherSet",
           "TeacherSource", "TopKTarget", "divergence_per_position", "make_schedule", "mixture_log_probs"]
