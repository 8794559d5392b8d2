"""Training: every command's options, the KI trainer, loading teachers, the teacher cache, FLOP counting.

May import: `kinherit.core`, `kinherit.data`, `kinherit.models`, `kinherit.inheritance`.
"""
