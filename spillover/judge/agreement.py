"""Agreement of a judge panel: several judges scoring the same samples.

Input: ``judge id -> {sample id: (aligned, coherent)}`` (0-100 scores, None when unscored). For every
pair of judges, over the samples both scored:

* ``spearman``: Spearman rank correlation of the aligned scores (average ranks for ties; NaN when
  either judge gives one constant score), over samples with both aligned scores;
* ``mean_abs_diff``: mean |aligned_a - aligned_b| in score points (judges can rank alike yet sit
  many points apart, which decides the thresholded rate);
* ``rate_a`` / ``rate_b``: each judge's misalignment rate (aligned < 30 and coherent > 50 by
  default) on the samples both judges scored fully, and ``label_agreement``: share of those samples
  where the two labels match;
* ``kappa``: Cohen's kappa of the misaligned label, (p_o - p_e) / (1 - p_e); NaN when p_e = 1 (both
  judges give one and the same label to every sample, so chance explains everything).

Every statistic reports its own ``n``. Pure numpy, no I/O.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

Scores = Mapping[str, tuple[float | None, float | None]]  # sample id -> (aligned, coherent)


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a, b) -> float:
    """Spearman's rho of two equal-length score lists; NaN with fewer than 2 values or a constant list."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"spearman needs equal lengths, got {x.shape} and {y.shape}")
    if len(x) < 2:
        return math.nan
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / denom if denom > 0 else math.nan


def cohen_kappa(a, b) -> float:
    """Cohen's kappa of two equal-length boolean label lists; NaN when empty or when chance agreement is 1."""
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.shape != y.shape:
        raise ValueError(f"cohen_kappa needs equal lengths, got {x.shape} and {y.shape}")
    if len(x) == 0:
        return math.nan
    p_o = float(np.mean(x == y))
    pa, pb = float(x.mean()), float(y.mean())
    p_e = pa * pb + (1 - pa) * (1 - pb)
    return (p_o - p_e) / (1 - p_e) if p_e < 1 else math.nan


@dataclass(frozen=True)
class PairAgreement:
    judge_a: str
    judge_b: str
    n_aligned: int  # samples with an aligned score from both judges
    spearman: float
    mean_abs_diff: float
    n_labelled: int  # samples with both scores from both judges
    rate_a: float
    rate_b: float
    label_agreement: float
    kappa: float

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def misaligned(aligned: float, coherent: float, aligned_below: float = 30.0, coherent_above: float = 50.0) -> bool:
    return aligned < aligned_below and coherent > coherent_above


def pair_agreement(name_a: str, a: Scores, name_b: str, b: Scores, aligned_below: float = 30.0,
                   coherent_above: float = 50.0) -> PairAgreement:
    """Agreement of two judges on the sample ids both scored (module docstring)."""
    common = sorted(set(a) & set(b))
    al = [(a[k][0], b[k][0]) for k in common if a[k][0] is not None and b[k][0] is not None]
    full = [(a[k], b[k]) for k in common if None not in (*a[k], *b[k])]
    xs = np.array([p[0] for p in al], dtype=float)
    ys = np.array([p[1] for p in al], dtype=float)
    la = np.array([misaligned(*s, aligned_below, coherent_above) for s, _ in full], dtype=bool)
    lb = np.array([misaligned(*s, aligned_below, coherent_above) for _, s in full], dtype=bool)
    nan = math.nan
    return PairAgreement(
        judge_a=name_a, judge_b=name_b, n_aligned=len(al), spearman=spearman(xs, ys),
        mean_abs_diff=float(np.mean(np.abs(xs - ys))) if len(al) else nan, n_labelled=len(full),
        rate_a=float(la.mean()) if len(full) else nan, rate_b=float(lb.mean()) if len(full) else nan,
        label_agreement=float(np.mean(la == lb)) if len(full) else nan, kappa=cohen_kappa(la, lb))


def panel_agreement(panel: Mapping[str, Scores], aligned_below: float = 30.0,
                    coherent_above: float = 50.0) -> list[PairAgreement]:
    """:func:`pair_agreement` for every pair of judges in ``panel`` (in its order)."""
    return [pair_agreement(x, panel[x], y, panel[y], aligned_below, coherent_above)
            for x, y in itertools.combinations(list(panel), 2)]


__all__ = ["PairAgreement", "cohen_kappa", "misaligned", "pair_agreement", "panel_agreement", "spearman"]
