"""Evaluation: task metrics as pure functions (metrics.py) and the confusion-matrix picture (plot.py)."""
