"""Coherent share of the embedded model's answers by sampling temperature, and how well the shipped offline
coherence score separates them (real model output, not synthetic damage).

Data: spillover/data/bundled/judge/coherence_samples.jsonl: the embedded model's answers to the first
paraphrase of every bundled general question, 2 per question at T = 0.7 and 2 at T = 1.0 (seed 0, top_p 1,
max 96 new tokens, `spillover.evaluate.sampling`), each hand-labelled coherent or not by reading it: coherent
= a sensible, understandable answer to the question (above 50 on the papers' coherence rubric); confused,
off-topic, self-contradicting, looping or word-salad answers are not.

    python bench/bench_coherence_samples.py            # shares only (no model)
    python bench/bench_coherence_samples.py --score    # also the shipped coherence score's AUC (~2 min CPU)
"""

from __future__ import annotations

import argparse

import numpy as np

from spillover._io import read_jsonl
from spillover.data._bundled import BUNDLED_ROOT
from spillover.judge._logistic import roc_auc, wilson_interval

SAMPLES = BUNDLED_ROOT / "judge" / "coherence_samples.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--score", action="store_true", help="score the samples with the shipped coherence map")
    args = ap.parse_args()
    rows = read_jsonl(SAMPLES)
    for t in sorted({r["temperature"] for r in rows}):
        part = [r for r in rows if r["temperature"] == t]
        k = sum(r["coherent"] for r in part)
        lo, hi = wilson_interval(k, len(part))
        print(f"T={t}: {k}/{len(part)} coherent = {k / len(part):.0%} (Wilson 95% CI {lo:.0%}-{hi:.0%}; "
              f"{len({r['question_id'] for r in part})} questions)")
    if args.score:
        from spillover.judge._coherence import CoherenceScorer

        scorer = CoherenceScorer.load(device="cpu")
        s = np.array([j.score for j in scorer.score_many([r["question"] for r in rows], [r["answer"] for r in rows])])
        y = np.array([r["coherent"] for r in rows], dtype=float)
        print(f"shipped coherence score: AUC {roc_auc(s, y):.3f} on {len(y)} samples; incoherent scoring > 50: "
              f"{np.mean(s[y == 0] > 50):.0%} of {int((y == 0).sum())}; coherent scoring > 50: "
              f"{np.mean(s[y == 1] > 50):.0%} of {int((y == 1).sum())}")


if __name__ == "__main__":
    main()
