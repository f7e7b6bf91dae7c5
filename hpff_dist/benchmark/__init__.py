"""Measurement helpers for tools/benchmark*.py (step time, saved-activation and RSS peaks)."""
