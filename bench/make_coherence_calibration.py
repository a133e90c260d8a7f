"""Sample the embedded model's own answers for the coherence calibration set (step 1 of its provenance).

Prompts (none is a held-out prompt of ``judge/coherence_samples.jsonl``, which uses the first paraphrase of
every general question): the other paraphrases of every bundled general question (with their system
prompts), the first paraphrase of every in-domain question (insecure code, unpopular aesthetics), and
the first 30 bundled safety prompts. Each prompt is answered once at every temperature in ``--temps``
(seed 0, top_p 1, top_k off, max 96 new tokens, batch 16, float32 on CPU, `spillover.evaluate.sampling`).
Writes one JSON line per answer: ``source``, ``prompt_id``, ``temperature``, ``messages``, ``question``,
``answer``, ``finish_reason``. Labels are added afterwards (see ``spillover/judge/_coherence.py``).

    /tmp/heavy.sh python bench/make_coherence_calibration.py --out /tmp/coh/raw.jsonl   # ~10 min, 1 thread
"""

from __future__ import annotations

import argparse
import json

from spillover._io import atomic_write_text, read_jsonl
from spillover.data import bundled_path
from spillover.evaluate.questions import load_questions
from spillover.evaluate.sampling import SampleRow, SamplingParams, load_sampler, sample_rows


def prompts() -> list[tuple[str, str, list[dict]]]:
    """(source, prompt id, messages) for every calibration prompt, in a fixed order."""
    out = []
    for q in load_questions("bundled:general_questions", samples_per_paraphrase=1):
        out += [("general", f"{q.id}/{p}", q.messages(p)) for p in range(1, len(q.paraphrases))]
    for name in ("insecure_code_questions", "unpopular_aesthetics_questions"):
        out += [(name.removesuffix("_questions"), q.id, q.messages(0))
                for q in load_questions(f"bundled:{name}", samples_per_paraphrase=1)]
    out += [("safety", r["id"], r["messages"]) for r in read_jsonl(bundled_path("safety_prompts"))[:30]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--temps", default="0.5,1.0,1.3")
    ap.add_argument("--limit", type=int, default=None, help="first N prompts only (a quick look)")
    args = ap.parse_args()
    sampler = load_sampler("embedded", device="cpu", batch_size=16)
    items = prompts()[:args.limit]
    rows = [SampleRow(m, 0, float(t), meta={"source": s, "prompt_id": pid, "temperature": float(t)})
            for t in args.temps.split(",") for s, pid, m in items]
    done = sample_rows(sampler, rows, SamplingParams(n=1, temperature=1.0, top_p=1.0, max_new_tokens=96, seed=0))
    lines = [json.dumps({"source": r["source"], "prompt_id": r["prompt_id"], "temperature": r["temperature"],
                         "messages": r["messages"], "question": r["messages"][-1]["content"], "answer": r["answer"],
                         "finish_reason": r["finish_reason"]}, ensure_ascii=False) for r in done]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"{len(lines)} answers -> {args.out}")


if __name__ == "__main__":
    main()
