"""Report stage: turn an evaluation folder (metrics.json + samples.jsonl) into report.html,
report.md and plots/*.png. Reads recorded results only; computes no metric of its own."""

from spillover.report.build import build_report

__all__ = ["build_report"]
