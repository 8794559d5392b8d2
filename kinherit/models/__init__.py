"""Models: presets, loading checkpoints (safetensors), the body and head apart, sharded loading, LM scoring.

May import: `kinherit.core`.
"""
