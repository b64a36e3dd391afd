"""Benchmarks: run as modules from the repo root (``python -m benchmarks.train_step``)."""
