"""Optimizers: AdamW, SGD, learning-rate schedules, gradient clipping."""
