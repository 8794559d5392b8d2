"""Evaluation: FLOP counts, the compute-saved analysis, plots and reports."""
