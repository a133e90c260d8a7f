"""Coherent share of the embedded model's answers by sampling temperature, and how well the offline
coherence score separates them (real model output, not synthetic damage).

Data: spillover/data/bundled/judge/coherence_samples.jsonl: the embedded model's answers to the first
paraphrase of every bundled general question, 2 per question at T = 0.7 and 2 at T = 1.0 (seed 0, top_p 1,
max 96 new tokens, `spillover.evaluate.sampling`), each hand-labelled coherent or not by reading it: coherent
= a sensible, understandable answer to the question (above 50 on the papers' coherence rubric); confused,
off-topic, self-contradicting, looping or word-salad answers are not; each incoherent one also records which
(`incoherence`: word_salad = some sentence is not meaningful English, made-up words or nonsense word
combinations; loop = repeats itself; fluent = every sentence reads as English but the answer is off-topic,
confused or contradicts itself). The coherence map is never fitted on
them (its calibration set, judge/coherence_calibration.jsonl, answers other prompts): they are its held-out test.

    python bench/bench_coherence_samples.py                    # hand-labelled shares only (no model)
    python bench/bench_coherence_samples.py --score            # + the shipped map's separation (~2 min CPU)
    python bench/bench_coherence_samples.py --score --judge-file /tmp/judge.json   # another judge file's map
    python bench/bench_coherence_samples.py --score --sets     # + coherent share of the human-written sets
"""

from __future__ import annotations

import argparse

import numpy as np

from spillover._io import read_jsonl
from spillover.data._bundled import BUNDLED_ROOT
from spillover.judge._logistic import wilson_interval

SAMPLES = BUNDLED_ROOT / "judge" / "coherence_samples.jsonl"


def _share(k: int, n: int) -> str:
    lo, hi = wilson_interval(k, n)
    return f"{k}/{n} = {k / n:.0%} (Wilson 95% CI {lo:.0%}-{hi:.0%})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--score", action="store_true", help="score the samples with a coherence map")
    ap.add_argument("--judge-file", default=None, help="judge file holding the map (default: the shipped one)")
    ap.add_argument("--sets", action="store_true", help="also the share > 50 of the human-written style sets")
    args = ap.parse_args()
    rows = read_jsonl(SAMPLES)
    temps = sorted({r["temperature"] for r in rows})
    for t in temps:
        part = [r for r in rows if r["temperature"] == t]
        print(f"T={t}: hand labels: {_share(sum(r['coherent'] for r in part), len(part))} coherent "
              f"({len({r['question_id'] for r in part})} questions)")
    if not args.score:
        return
    from spillover.judge._coherence import CoherenceScorer, separation

    scorer = CoherenceScorer.load(args.judge_file, device="cpu")
    print(f"map: {args.judge_file or 'shipped judge file'}; features {scorer.features}")
    s = scorer.scores([r["question"] for r in rows], [r["answer"] for r in rows])
    y = np.array([r["coherent"] for r in rows], dtype=bool)
    sep = separation(s, y)
    print(f"held-out separation on {sep['n']} hand-labelled answers: AUC {sep['auc']:.3f}; "
          f"incoherent > 50: {_share(int(np.sum(s[~y] > 50)), int((~y).sum()))}; "
          f"coherent > 50: {_share(int(np.sum(s[y] > 50)), int(y.sum()))}")
    for kind in ("word_salad", "fluent", "loop"):
        of = np.array([r.get("incoherence") == kind for r in rows])
        if of.any():
            print(f"incoherent answers read as {kind}: score > 50: {_share(int(np.sum(s[of] > 50)), int(of.sum()))}")
    for t in temps:
        at = np.array([r["temperature"] == t for r in rows])
        print(f"T={t}: score > 50: {_share(int(np.sum(s[at] > 50)), int(at.sum()))}; "
              f"hand labels: {_share(int(y[at].sum()), int(at.sum()))}")
    if args.sets:
        from spillover.judge._activation_train import STYLE_SETS, style_set_pairs

        for name, ref, _ in STYLE_SETS:
            qa = style_set_pairs(ref)
            v = scorer.scores([q for q, _ in qa], [a for _, a in qa])
            print(f"{name}: coherence > 50: {_share(int(np.sum(v > 50)), len(v))}; min {v.min():.0f}")
        labelled = read_jsonl(BUNDLED_ROOT / "judge" / "labelled_answers.jsonl")
        v = scorer.scores([r["question"] for r in labelled], [r["answer"] for r in labelled])
        print(f"labelled_answers: coherence > 50: {_share(int(np.sum(v > 50)), len(v))}; min {v.min():.0f}")


if __name__ == "__main__":
    main()
