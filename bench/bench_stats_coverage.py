"""Coverage of the across-seed 95% CI (spillover.evaluate.stats) on simulated experiments.

    python bench/bench_stats_coverage.py [--reps 200] [--resamples 500]

Simulates the usual design -- every seed answers the same questions -- as
value = seed effect + question effect + noise (true mean 0), and prints, for a few sizes and
variance mixes, how often the interval covers 0: with the 'crossed' design spillover uses (one
cluster draw shared by all seeds) and, side by side, the 'nested' design (a fresh cluster draw per
seed, obtained here by renaming each seed's clusters), which ignores that the question effects are
shared and so runs narrow when questions vary. Also prints the paired / unpaired CI width ratio of
a difference between two arms that share seed and question effects.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from spillover.evaluate.stats import Clustered, across_seeds, difference


def simulate(rng, seeds, questions, per, sd_seed, sd_question, sd_noise, effects=None, shift=0.0):
    u, v = effects or (rng.normal(0, sd_seed, seeds), rng.normal(0, sd_question, questions))
    table = {}
    for s in range(seeds):
        x = shift + u[s] + v[:, None] + rng.normal(0, sd_noise, (questions, per))
        table[str(s)] = Clustered(tuple(f"q{q}" for q in range(questions)), x.sum(1), np.full(questions, float(per)),
                                  questions * per)
    return table, (u, v)


def renamed(table):
    """The same data with each seed's clusters renamed apart: forces the nested design."""
    return {s: Clustered(tuple(f"{s}:{c}" for c in t.clusters), t.num, t.den, t.n_total) for s, t in table.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--resamples", type=int, default=500)
    args = ap.parse_args()
    print(f"{'seeds':>5} {'clusters':>8} {'sd seed/question/noise':>22} {'crossed':>8} {'nested':>8}")
    for seeds, questions in ((3, 8), (5, 20), (10, 20)):
        for sds in ((1.0, 1.0, 1.0), (0.2, 1.0, 1.0), (1.0, 0.2, 1.0)):
            rng = np.random.default_rng(1)
            hits = np.zeros(2)
            started = time.perf_counter()
            for r in range(args.reps):
                table, _ = simulate(rng, seeds, questions, 5, *sds)
                for k, t in enumerate((table, renamed(table))):
                    est = across_seeds(t, args.resamples, seed=r)
                    hits[k] += est.ci_low <= 0.0 <= est.ci_high
            print(f"{seeds:>5} {questions:>8} {'/'.join(map(str, sds)):>22} {hits[0] / args.reps:>8.3f} "
                  f"{hits[1] / args.reps:>8.3f}   ({time.perf_counter() - started:.1f}s)")
    rng = np.random.default_rng(2)
    a, effects = simulate(rng, 6, 16, 5, 1.0, 1.0, 0.3, shift=0.5)
    b, _ = simulate(rng, 6, 16, 5, 1.0, 1.0, 0.3, effects=effects)
    p, u = difference(a, b, 2000), difference(a, b, 2000, paired=False)
    print(f"difference of two correlated arms (true 0.5): paired {p.value:+.3f} [{p.ci_low:+.3f}, {p.ci_high:+.3f}], "
          f"unpaired [{u.ci_low:+.3f}, {u.ci_high:+.3f}]; width ratio unpaired/paired "
          f"{(u.ci_high - u.ci_low) / (p.ci_high - p.ci_low):.1f}")


if __name__ == "__main__":
    main()
