"""Read and check an evaluation folder: ``metrics.json`` (per-arm metrics, judge identity, settings)
and ``samples.jsonl`` (one judged sample a line).

Only the shape the report relies on is checked; a missing optional part (probe, in-domain metrics,
judge prompts) is shown as missing in the report, never invented. Errors name the file and line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from spillover._io import iter_jsonl_objects
from spillover.errors import SpilloverError

METRICS_FILE = "metrics.json"
SAMPLES_FILE = "samples.jsonl"


@dataclass
class Evaluation:
    """One evaluation folder, read: ``metrics`` is metrics.json as a dict; ``samples`` maps each arm
    (in metrics.json's order) to its rows of samples.jsonl."""

    path: Path
    metrics: dict
    samples: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def arms(self) -> dict[str, dict]:
        return self.metrics["arms"]


def _read_metrics(path: Path) -> dict:
    if not path.is_file():
        raise SpilloverError(f"no {METRICS_FILE} in {path.parent}", where=str(path.parent),
                             fix="point at an evaluation folder (the one holding metrics.json and samples.jsonl)")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SpilloverError(f"not valid JSON ({e.msg}, line {e.lineno} column {e.colno})", where=str(path),
                             fix="re-run the evaluation to rewrite it") from None
    if not isinstance(metrics, dict):
        raise SpilloverError("metrics.json must hold a JSON object", where=str(path), fix="re-run the evaluation")
    arms = metrics.get("arms")
    if not isinstance(arms, dict) or not arms:
        raise SpilloverError("metrics.json has no arms (expected 'arms': {name: {...}})", where=str(path),
                             fix="re-run the evaluation; every evaluated model is an arm")
    for name, arm in arms.items():
        where = f"{path}: arms.{name}"
        if not isinstance(arm, dict) or not isinstance(arm.get("metrics"), dict) \
                or not isinstance(arm["metrics"].get("overall"), dict):
            raise SpilloverError("arm has no metrics.overall", where=where,
                                 fix="write compute_metrics(...) output under arms.<name>.metrics")
        for optional in ("in_domain", "probe"):
            value = arm.get(optional)
            if value is not None and not isinstance(value, dict):
                raise SpilloverError(f"{optional} must be an object or null, got {type(value).__name__}",
                                     where=where, fix="write compute_metrics / ProbeResult.to_json() output")
        sets = arm.get("probe_sets")
        if sets is not None and (not isinstance(sets, dict) or not all(isinstance(v, dict) for v in sets.values())):
            raise SpilloverError("probe_sets must map each pairs file to a ProbeResult object", where=where,
                                 fix="write {pairs_ref: ProbeResult.to_json()} under arms.<name>.probe_sets")
        if isinstance(arm.get("in_domain"), dict) and not isinstance(arm["in_domain"].get("overall"), dict):
            raise SpilloverError("in_domain has no overall metrics", where=where,
                                 fix="write compute_metrics(...) output on the in-domain questions")
    return metrics


def _check_score(row: dict, name: str, where: str) -> None:
    value = row.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpilloverError(f"{name} must be a number or null, got {value!r}", where=where,
                             fix="re-run the judge; a missing score is null with an unscored_reason")
    if math.isnan(value):
        row[name] = None


def _read_samples(path: Path, arms: dict) -> dict[str, list[dict]]:
    if not path.is_file():
        raise SpilloverError(f"no {SAMPLES_FILE} in {path.parent}", where=str(path.parent),
                             fix="re-run the evaluation; the report shows judged samples from samples.jsonl")
    by_arm: dict[str, list[dict]] = {name: [] for name in arms}
    for where, _, row in iter_jsonl_objects(path, fix="re-run the evaluation to rewrite samples.jsonl"):
        arm = row.get("arm")
        if arm not in by_arm:
            raise SpilloverError(f"sample names arm {arm!r}, which metrics.json does not have", where=where,
                                 fix=f"arms in metrics.json: {', '.join(arms)}; re-run the evaluation so "
                                     "both files come from one run")
        for name in ("aligned", "coherent"):
            _check_score(row, name, where)
        by_arm[arm].append(row)
    return by_arm


def load_evaluation(eval_dir: str | Path) -> Evaluation:
    """Read ``eval_dir``; raises :class:`SpilloverError` naming the file (and line) on a bad folder."""
    path = Path(eval_dir)
    if not path.is_dir():
        raise SpilloverError(f"{path} is not a folder", fix="give the evaluation folder (holding metrics.json)")
    metrics = _read_metrics(path / METRICS_FILE)
    return Evaluation(path, metrics, _read_samples(path / SAMPLES_FILE, metrics["arms"]))
