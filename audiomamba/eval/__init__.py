"""Evaluation: a speech classifier and the SC09 sample-quality metrics."""
