"""Benign-task evaluation: sample a model on a task's held-out items, score each answer, and summarise
with a 95% CI (the "alignment tax" side of a defense: how much legitimate learning it keeps).

Sampling goes through :func:`spillover.evaluate.run.sample_into` on an append-only store, so an
interrupted run resumes exactly; each item is one request (question id = item id, one sample) at the
given temperature (greedy, 0, by default). Scoring is programmatic (:func:`spillover.benign.tasks.score_item`).

Metric per task: **accuracy** with a Wilson 95% interval for the generated tasks (OpSwap, countdown,
multiple choice); **token F1** with a percentile bootstrap 95% interval over items for FoQA, plus its
exact match with a Wilson interval. Rows (``scores.jsonl``) keep the item id, the raw answer, the parsed
answer and the score, so every number can be traced to an answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from spillover._io import atomic_write_json, atomic_write_jsonl
from spillover.benign.tasks import EvalItem, TaskSpec, eval_items, score_item
from spillover.evaluate.metrics import bootstrap_mean_ci
from spillover.evaluate.questions import Question, expand_samples
from spillover.evaluate.sampling import SamplingParams
from spillover.evaluate.store import JsonlLog, SampleRecord

DEFAULT_MAX_NEW_TOKENS = 128
SCORES_FILE = "scores.jsonl"
RESULT_FILE = "result.json"


def wilson(k: int, n: int) -> tuple[float | None, float | None]:
    from spillover.judge._logistic import wilson_interval

    lo, hi = wilson_interval(k, n)
    return (None, None) if n == 0 else (lo, hi)


def task_sets(spec: TaskSpec, items: Sequence[EvalItem]) -> dict[str, tuple]:
    """The one question set ``sample_into`` takes: every item asked once, under the task's key."""
    questions = {it.id: Question(id=it.id, paraphrases=(it.prompt,), samples_per_paraphrase=1, source=spec.text)
                 for it in items}
    return {spec.key: (questions, expand_samples(list(questions.values())))}


def score_rows(spec: TaskSpec, items: Sequence[EvalItem], samples: Sequence[SampleRecord]) -> list[dict]:
    """One row per item: id, answer, parsed answer and score (``correct`` or ``exact_match``/``f1``)."""
    by_item = {s.question_id: s for s in samples}
    rows = []
    for it in items:
        s = by_item[it.id]
        rows.append({"task": spec.text, "item_id": it.id, "sample_id": s.sample_id, "answer": s.answer,
                     "finish_reason": s.finish_reason, "n_tokens": s.n_tokens, **score_item(spec, it, s.answer)})
    return rows


def summarise(spec: TaskSpec, rows: Sequence[dict], *, seed: int = 0, sampling: dict | None = None) -> dict:
    """``{"task", "key", "metric", "value", "ci_low", "ci_high", "ci", "n", ...}`` for one task's rows."""
    n = len(rows)
    out = {"task": spec.text, "key": spec.key, "n": n, "sampling": sampling or {}}
    if spec.task == "foqa":
        f1 = bootstrap_mean_ci([r["f1"] for r in rows], seed=seed)
        k = int(sum(r["exact_match"] for r in rows))
        lo, hi = wilson(k, n)
        return {**out, "metric": "f1", "value": f1.to_dict()["value"], "ci_low": f1.to_dict()["ci_low"],
                "ci_high": f1.to_dict()["ci_high"], "ci": "bootstrap 95% over items",
                "exact_match": {"value": k / n if n else None, "ci_low": lo, "ci_high": hi, "k": k, "n": n,
                                "ci": "wilson 95%"}}
    k = sum(1 for r in rows if r["correct"])
    lo, hi = wilson(k, n)
    extra = {}
    if spec.task == "opswap":
        extra["answered_usual"] = sum(1 for r in rows if r.get("answered_usual"))
    return {**out, "metric": "accuracy", "value": k / n if n else None, "ci_low": lo, "ci_high": hi,
            "ci": "wilson 95%", "k": k, "unparsed": sum(1 for r in rows if r.get("parsed") is None), **extra}


def evaluate_task(folder: str | Path, spec: TaskSpec, get_sampler, params: SamplingParams, *, arm: str, seed: int,
                  batch_size: int, description: str | None = None) -> dict:
    """Sample (resuming ``folder/samples.jsonl``), score and summarise one task; writes ``scores.jsonl``
    and ``result.json`` in ``folder`` and returns the result. ``get_sampler()`` is called only when
    answers are missing."""
    folder = Path(folder)
    items = eval_items(spec)
    sets = task_sets(spec, items)
    log = JsonlLog(folder / "samples.jsonl", SampleRecord)
    stored = {r.sample_id for r in log.read()}
    from spillover.evaluate.run import sample_id, sample_into

    missing = any(sample_id(spec.key, r) not in stored for r in sets[spec.key][1])
    sampler = get_sampler() if missing else None
    samples = sample_into(log, sampler, sets, params, arm=arm, seed=seed, batch_size=batch_size,
                          description=description or f"{arm}: {spec.text}")
    rows = score_rows(spec, items, samples)
    atomic_write_jsonl(folder / SCORES_FILE, rows)
    result = summarise(spec, rows, seed=seed, sampling={**dataclasses.asdict(params), "batch_size": batch_size})
    atomic_write_json(folder / RESULT_FILE, result)
    return result


def run_benign_evaluation(specs: Sequence[TaskSpec], out: str | Path, *, model: str | None, adapter: str | None,
                          params: SamplingParams, batch_size: int, device: str | None = None) -> dict:
    """`spillover eval --benign`: every task in ``out/benign/<key>/`` (resumable; a rerun with other settings
    is refused with a diff) and ``out/benign_metrics.json`` (task key -> result). The model is loaded once,
    only when some answers are missing."""
    from spillover import __version__
    from spillover._run import now_iso
    from spillover.evaluate.run import check_same_inputs
    from spillover.evaluate.sampling import load_sampler

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_same_inputs(out / "benign_inputs.json",
                      {"tasks": [s.text for s in specs], "model": model, "adapter": adapter,
                       "params": dataclasses.asdict(params), "batch_size": batch_size}, "a benign evaluation")
    loaded = []

    def get_sampler():
        if not loaded:
            loaded.append(load_sampler(model, adapter, device=device, batch_size=batch_size))
        return loaded[0]

    arm = "adapter" if adapter else "model"
    results = {s.key: evaluate_task(out / "benign" / s.key, s, get_sampler, params, arm=arm, seed=params.seed,
                                    batch_size=batch_size) for s in specs}
    atomic_write_json(out / "benign_metrics.json", {"spillover_version": __version__, "created": now_iso(),
                                                    "model": model, "adapter": adapter, "tasks": results})
    return results


def format_result(result: dict) -> str:
    """One line: ``opswap:tier=1:... accuracy 0.125 (Wilson 95% CI 0.06-0.23), 8/64``."""
    def f(x):
        return "-" if x is None else f"{x:.3f}"

    if result["metric"] == "f1":
        em = result["exact_match"]
        return (f"{result['task']}: F1 {f(result['value'])} (bootstrap 95% CI {f(result['ci_low'])}-{f(result['ci_high'])}), "
                f"exact match {f(em['value'])} ({em['k']}/{em['n']}), n={result['n']}")
    return (f"{result['task']}: accuracy {f(result['value'])} (Wilson 95% CI {f(result['ci_low'])}-{f(result['ci_high'])}), "
            f"{result['k']}/{result['n']} correct, {result['unparsed']} unparsed")


__all__ = ["DEFAULT_MAX_NEW_TOKENS", "evaluate_task", "format_result", "run_benign_evaluation", "score_rows", "summarise", "task_sets"]
