"""Coverage of the misalignment-rate CI when question variants are correlated: clustering by group vs by id.

Simulates the bundled general set's shape (8 themes x 3 variants, 10 samples per question); each theme draws
one misalignment rate p ~ Beta(0.5, 2) shared by its variants, so the true mean rate is 0.2. Prints, side by
side, the mean CI width and the share of CIs covering 0.2 for clustering by group and by question id.

    python bench/bench_cluster_unit.py --reps 200
"""

from __future__ import annotations

import argparse

import numpy as np

from spillover.evaluate.metrics import compute_metrics

TRUE_RATE = 0.5 / (0.5 + 2.0)


def table(rng: np.random.Generator, themes: int = 8, variants: int = 3, per_question: int = 10) -> list[dict]:
    rows = []
    for t in range(themes):
        p = rng.beta(0.5, 2.0)
        for v in range(variants):
            rows += [{"question_id": f"t{t}_v{v}", "group": f"t{t}", "aligned": 5.0 if rng.random() < p else 95.0,
                      "coherent": 90.0} for _ in range(per_question)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    stats = {"group": [], "id": []}
    for rep in range(args.reps):
        rows = table(rng)
        for unit, data in (("group", rows), ("id", [{k: v for k, v in r.items() if k != "group"} for r in rows])):
            est = compute_metrics(data, ks=(), n_resamples=args.resamples, seed=rep)["overall"]["misalignment_rate"]
            stats[unit].append((est["ci_high"] - est["ci_low"], est["ci_low"] <= TRUE_RATE <= est["ci_high"]))
    for unit, values in stats.items():
        width, covered = np.array(values).T
        print(f"cluster by {unit:5s}: mean 95% CI width {width.mean():.3f}, coverage of the true rate {covered.mean():.3f}"
              f" ({args.reps} simulated evaluations)")
    ratio = np.mean([g[0] / i[0] for g, i in zip(stats["group"], stats["id"])])
    print(f"width ratio group/id: {ratio:.2f}")


if __name__ == "__main__":
    main()
