"""Experiment stage: end-to-end recipes (quickstart now; experiment files later)."""
