"""Statistics across seeds: per-seed estimates, the across-seed mean with a CI that covers seeds AND
questions, and differences between arms, paired where the arms share seeds and question clusters.

The unit of data is a :class:`Clustered` table: one metric of one arm in one seed, as per-cluster
numerator and denominator sums (a rate: misaligned count / scored count per question cluster; a
probe shift: the per-pair shift / 1, one cluster per contrast pair). A *cluster* is a sample row's
``group`` field, or its ``question_id`` when there is no group: samples to one question (or its
paraphrases) are correlated, so they are resampled together.

* Within one seed: cluster bootstrap (resample clusters with replacement, pool their sums), as
  :func:`spillover.evaluate.metrics.compute_metrics` does for one evaluation.
* Across seeds: the estimate is the mean of the per-seed values (every seed weighs the same). Its
  interval is a two-level bootstrap: each replicate resamples the seeds with replacement, then the
  question clusters. Two designs, chosen from the data:

  - ``crossed`` (every seed has the same clusters, the usual case: each trained seed answers the
    same questions): ONE cluster draw per replicate, applied to every drawn seed. Question effects
    are shared by all seeds, so they must not average out over seeds.
  - ``nested`` (the seeds' cluster sets differ): every drawn seed gets its own cluster draw.

  With one seed the interval covers questions only; with few seeds (2-3) the seed level of any
  bootstrap is coarse and the interval is indicative, which the report says.
* Between arms A - B: ``paired`` when both arms have the same seeds and, in each seed, the same
  clusters: every replicate applies the SAME seed and cluster draws to both arms, so shared
  question and seed effects cancel. Otherwise ``unpaired``: independent replicates per arm. The
  result says which, and why.

Percentile intervals, seeded (same inputs and seed, same numbers). Empty: NaN (None in JSON), never 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from spillover.errors import SpilloverError
from spillover.evaluate.metrics import (
    Estimate,
    Thresholds,
    _check_bootstrap_args,
    _coerce,
    _json_float,
    _per_sample_terms,
    _percentile_ci,
)

RATE_METRICS = ("misalignment_rate", "incoherence_rate", "mean_misalignment", "unscored_rate")
N_RESAMPLES = 2000


@dataclass(frozen=True)
class Clustered:
    """One metric in one seed: ``num[i] / den[i]`` summed over cluster ``clusters[i]``'s samples.
    ``n_total`` counts every row it came from (scored or not)."""

    clusters: tuple[str, ...]
    num: np.ndarray
    den: np.ndarray
    n_total: int = 0

    def __post_init__(self):
        if len(set(self.clusters)) != len(self.clusters):
            raise SpilloverError(f"cluster ids repeat: {sorted(self.clusters)}", fix="sum each cluster once")
        if not len(self.clusters) == len(self.num) == len(self.den):
            raise SpilloverError("clusters, num and den differ in length", fix="give one sum per cluster")

    @property
    def n(self) -> int:
        return int(round(float(np.sum(self.den))))

    @property
    def value(self) -> float:
        total = float(np.sum(self.den))
        return float(np.sum(self.num)) / total if total > 0 else math.nan


SeedTable = Mapping[str, Clustered]  # seed (as text) -> that seed's table, for one arm and one metric


def cluster_of(row: Mapping) -> str:
    """The resampling unit of a sample row: its ``group``, else its ``question_id``."""
    group = row.get("group")
    return str(group) if group not in (None, "") else str(row.get("question_id"))


def rate_tables(rows: Iterable[Mapping], thresholds: Thresholds = Thresholds(),
                seed_key: str = "seed") -> dict[str, dict[str, Clustered]]:
    """``metric -> seed -> Clustered`` for the four judge metrics of one arm's judged sample rows
    (each with ``seed``, ``question_id``, optional ``group``, ``aligned``, ``coherent``)."""
    rows = list(rows)
    judged = _coerce(rows)  # validates scores, names the bad row
    sums: dict[str, dict[str, dict[str, list[float]]]] = {m: {} for m in RATE_METRICS}
    totals: dict[str, int] = {}
    for i, (row, sample) in enumerate(zip(rows, judged)):
        if row.get(seed_key) is None:
            raise SpilloverError(f"judged sample #{i} (question {sample.question_id!r}) has no {seed_key!r}",
                                 fix="every sample row names the seed it came from")
        seed, cluster = str(row[seed_key]), cluster_of(row)
        totals[seed] = totals.get(seed, 0) + 1
        for metric, (num, den) in _per_sample_terms(sample, thresholds).items():
            acc = sums[metric].setdefault(seed, {}).setdefault(cluster, [0.0, 0.0])
            acc[0] += num
            acc[1] += den
    return {m: {seed: _table(per_cluster, totals[seed]) for seed, per_cluster in by_seed.items()}
            for m, by_seed in sums.items()}


def value_tables(values: Mapping[object, Mapping[str, float]]) -> dict[str, Clustered]:
    """``seed -> Clustered`` from ``seed -> {cluster id: value}`` (e.g. per-pair probe shifts: each
    contrast pair is its own cluster, weighing 1). NaN or infinite values are errors."""
    out = {}
    for seed, per_cluster in values.items():
        for cid, v in per_cluster.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise SpilloverError(f"seed {seed}: value of {cid!r} is {v!r}, not a finite number",
                                     fix="drop undefined values before computing statistics")
        out[str(seed)] = _table({str(c): [float(v), 1.0] for c, v in per_cluster.items()}, len(per_cluster))
    return out


def _table(per_cluster: Mapping[str, Sequence[float]], n_total: int) -> Clustered:
    ids = tuple(sorted(per_cluster))
    return Clustered(ids, np.array([per_cluster[c][0] for c in ids], dtype=float),
                     np.array([per_cluster[c][1] for c in ids], dtype=float), n_total)


@dataclass(frozen=True)
class AcrossSeeds:
    """Mean over seeds of the per-seed values with its two-level bootstrap CI, and every seed's own
    estimate (cluster bootstrap within the seed). ``n`` sums the seeds' denominators."""

    value: float
    ci_low: float
    ci_high: float
    n: int
    n_total: int
    n_seeds: int
    n_clusters: int
    design: str
    per_seed: dict[str, Estimate] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"value": _json_float(self.value), "ci_low": _json_float(self.ci_low),
                "ci_high": _json_float(self.ci_high), "n": self.n, "n_total": self.n_total,
                "n_seeds": self.n_seeds, "n_clusters": self.n_clusters, "design": self.design,
                "per_seed": {s: e.to_dict() for s, e in self.per_seed.items()}}


@dataclass(frozen=True)
class Difference:
    """Across-seed mean of arm A minus that of arm B, with its CI; ``paired`` says whether the same
    seed and cluster draws were applied to both arms, ``why`` says why (not)."""

    value: float
    ci_low: float
    ci_high: float
    paired: bool
    why: str
    n_seeds: int
    n_clusters: int
    design: str

    def to_dict(self) -> dict:
        return {"value": _json_float(self.value), "ci_low": _json_float(self.ci_low),
                "ci_high": _json_float(self.ci_high), "paired": self.paired, "why": self.why,
                "n_seeds": self.n_seeds, "n_clusters": self.n_clusters, "design": self.design}


def _design(tables: Sequence[SeedTable]) -> str:
    sets = {t.clusters for table in tables for t in table.values()}
    return "crossed" if len(sets) <= 1 else "nested"


def _replicates(tables: Sequence[SeedTable], seeds: Sequence[str], rng: np.random.Generator,
                n_resamples: int, design: str) -> list[np.ndarray]:
    """Bootstrap replicates of the across-seed mean, one array per table; all tables share the seed
    and cluster draws (so passing two tables is the paired bootstrap)."""
    n_seeds = len(seeds)
    picks = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))  # which seed fills each slot
    ratios = [np.full((n_resamples, n_seeds), np.nan) for _ in tables]
    if design == "crossed":
        clusters = tables[0][seeds[0]].clusters
        weights = rng.multinomial(len(clusters), np.full(len(clusters), 1 / len(clusters)), size=n_resamples)
        for table, out in zip(tables, ratios):
            num = np.stack([table[s].num for s in seeds])  # (seeds, clusters)
            den = np.stack([table[s].den for s in seeds])
            with np.errstate(invalid="ignore", divide="ignore"):
                per_seed = (weights @ num.T) / (weights @ den.T)  # (replicates, seeds)
            out[:] = np.take_along_axis(per_seed, picks, axis=1)
    else:
        for k, s in enumerate(seeds):
            mask = picks == k
            m = int(mask.sum())
            if m == 0:
                continue
            c = len(tables[0][s].clusters)
            weights = rng.multinomial(c, np.full(c, 1 / c), size=m)
            for table, out in zip(tables, ratios):
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[mask] = (weights @ table[s].num) / (weights @ table[s].den)
    means = []
    for r in ratios:
        with np.errstate(invalid="ignore"), _quiet_nanmean():
            means.append(np.nanmean(r, axis=1))
    return means


class _quiet_nanmean:
    """Silence numpy's 'mean of empty slice' warning: an all-NaN replicate is NaN, dropped later."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _seed_order(table: SeedTable) -> list[str]:
    return sorted(table, key=lambda s: (0, int(s)) if s.lstrip("-").isdigit() else (1, s))


def _mean_of_seeds(table: SeedTable, seeds: Sequence[str]) -> float:
    values = [table[s].value for s in seeds if math.isfinite(table[s].value)]
    return float(np.mean(values)) if values else math.nan


def within_seed(table: Clustered, n_resamples: int = N_RESAMPLES, seed: int = 0, alpha: float = 0.05) -> Estimate:
    """One seed's pooled value with a cluster-bootstrap CI."""
    _check_bootstrap_args(n_resamples, alpha)
    c = len(table.clusters)
    if c == 0 or table.n == 0:
        return Estimate(math.nan, math.nan, math.nan, table.n, table.n_total)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(c, np.full(c, 1 / c), size=n_resamples)
    with np.errstate(invalid="ignore", divide="ignore"):
        lo, hi = _percentile_ci((weights @ table.num) / (weights @ table.den), alpha)
    return Estimate(table.value, lo, hi, table.n, table.n_total)


def across_seeds(table: SeedTable, n_resamples: int = N_RESAMPLES, seed: int = 0,
                 alpha: float = 0.05) -> AcrossSeeds:
    """Per-seed estimates and the across-seed mean with its two-level bootstrap CI (module docstring)."""
    _check_bootstrap_args(n_resamples, alpha)
    seeds = _seed_order(table)
    per_seed = {s: within_seed(table[s], n_resamples, seed, alpha) for s in seeds}
    n = sum(t.n for t in table.values())
    n_total = sum(t.n_total for t in table.values())
    n_clusters = len({c for t in table.values() for c in t.clusters})
    design = _design([table])
    value = _mean_of_seeds(table, seeds)
    if not seeds or not math.isfinite(value):
        return AcrossSeeds(math.nan, math.nan, math.nan, n, n_total, len(seeds), n_clusters, design, per_seed)
    (reps,) = _replicates([table], seeds, np.random.default_rng(seed), n_resamples, design)
    lo, hi = _percentile_ci(reps, alpha)
    return AcrossSeeds(value, lo, hi, n, n_total, len(seeds), n_clusters, design, per_seed)


def pairing(a: SeedTable, b: SeedTable) -> tuple[bool, str]:
    """Whether arms ``a`` and ``b`` can be compared paired, and the reason in words."""
    if set(a) != set(b):
        return False, (f"unpaired: the arms ran different seeds ({', '.join(_seed_order(a)) or 'none'} vs "
                       f"{', '.join(_seed_order(b)) or 'none'}); independent bootstraps per arm")
    for s in _seed_order(a):
        if a[s].clusters != b[s].clusters:
            return False, (f"unpaired: in seed {s} the arms answered different question clusters; "
                           "independent bootstraps per arm")
    return True, (f"paired: same {len(a)} seed(s) and the same question clusters; each replicate draws the "
                  "same seeds and clusters for both arms")


def difference(a: SeedTable, b: SeedTable, n_resamples: int = N_RESAMPLES, seed: int = 0,
               alpha: float = 0.05, paired: bool | None = None) -> Difference:
    """Across-seed mean of ``a`` minus that of ``b`` with a percentile CI. ``paired``: None pairs
    when :func:`pairing` allows; False forces independent bootstraps; True requires pairing."""
    _check_bootstrap_args(n_resamples, alpha)
    can_pair, why = pairing(a, b)
    if paired and not can_pair:
        raise SpilloverError(f"cannot pair these arms ({why})", fix="compare unpaired (paired=None or False)")
    if paired is False and can_pair:
        why = "unpaired on request (the arms could be paired); independent bootstraps per arm"
    paired = can_pair if paired is None else paired
    seeds_a, seeds_b = _seed_order(a), _seed_order(b)
    value = _mean_of_seeds(a, seeds_a) - _mean_of_seeds(b, seeds_b)
    n_clusters = len({c for t in (*a.values(), *b.values()) for c in t.clusters})
    if paired:
        design = _design([a, b])
        n_seeds = len(seeds_a)
    else:
        design = f"{_design([a])}/{_design([b])}"
        n_seeds = len(set(seeds_a) | set(seeds_b))
    if not math.isfinite(value):
        return Difference(math.nan, math.nan, math.nan, paired, why, n_seeds, n_clusters, design)
    if paired:
        rep_a, rep_b = _replicates([a, b], seeds_a, np.random.default_rng(seed), n_resamples, design)
    else:
        rng_a, rng_b = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        (rep_a,) = _replicates([a], seeds_a, rng_a, n_resamples, _design([a]))
        (rep_b,) = _replicates([b], seeds_b, rng_b, n_resamples, _design([b]))
    lo, hi = _percentile_ci(rep_a - rep_b, alpha)
    return Difference(value, lo, hi, paired, why, n_seeds, n_clusters, design)


__all__ = ["AcrossSeeds", "Clustered", "Difference", "RATE_METRICS", "SeedTable", "across_seeds", "cluster_of",
           "difference", "pairing", "rate_tables", "value_tables", "within_seed"]
