"""Run an evaluation: sample every arm on the question set(s), judge, compute metrics, probe.

Writes ``out/samples.jsonl`` (one judged sample per line) and ``out/metrics.json`` (per arm:
metrics with CIs, optional in-domain metrics and probe), the layout ``spillover.report`` reads.
An *arm* is one model or model + adapter (``base``, ``sft``, ``rl``...).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path

from spillover import __version__
from spillover._io import atomic_write_json, atomic_write_jsonl
from spillover._run import now_iso
from spillover.errors import SpilloverError
from spillover.evaluate._progress import progress_bar
from spillover.evaluate.metrics import compute_metrics
from spillover.evaluate.probe import probe as run_probe_for
from spillover.evaluate.questions import expand_samples, load_questions
from spillover.evaluate.sampling import SamplingParams, load_sampler, sample_questions
from spillover.judge import JudgeScore
from spillover.judge._spec import EvalJudge, JudgeItem
from spillover.models import read_adapter_meta
from spillover.rewards import split_reasoning


@dataclass(frozen=True)
class Arm:
    name: str
    model: str | None = None  # None: the adapter's recorded base, else 'embedded'
    adapter: str | None = None


@dataclass
class EvalSettings:
    questions: str = "bundled:general_questions"
    in_domain: str | None = None
    samples_per_paraphrase: int | None = None  # overrides the question file
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 32
    probe_pairs: list[str] = field(default_factory=list)
    probe_base: str | None = None  # base model for delta_vs_base; None = no comparison
    device: str | None = None
    question_ids: list[str] | None = None  # keep only these question ids (None: all)
    max_paraphrases: int | None = None  # use only the first K paraphrases of each question


def _requests(ref: str, settings: EvalSettings):
    questions = load_questions(ref, settings.samples_per_paraphrase)
    if settings.question_ids is not None:
        questions = [q for q in questions if q.id in settings.question_ids]
    if not questions:
        raise SpilloverError(f"no questions selected from {ref}", fix="check the question file and the selected ids")
    requests = expand_samples(questions)
    if settings.max_paraphrases:
        requests = [r for r in requests if r.paraphrase_index < settings.max_paraphrases]
    return {q.id: q for q in questions}, requests


def _fill(row: dict, aligned: JudgeScore, coherent: JudgeScore) -> dict:
    reasons = [f"{m}: {s.reason}" for m, s in (("aligned", aligned), ("coherent", coherent)) if s.score is None]
    return {**row, "aligned": aligned.score, "coherent": coherent.score, "aligned_mass": aligned.numeric_mass,
            "coherent_mass": coherent.numeric_mass, "unscored_reason": "; ".join(reasons) or None}


def run_evaluation(arms: list[Arm], settings: EvalSettings, judge: EvalJudge, out: str | Path) -> Path:
    """Sample, judge and summarise every arm; returns ``out``."""
    out = Path(out)
    if len({a.name for a in arms}) != len(arms):
        raise SpilloverError(f"arm names repeat: {[a.name for a in arms]}", fix="give every arm its own name")
    sets = {"general": _requests(settings.questions, settings)}
    if settings.in_domain:
        sets["in_domain"] = _requests(settings.in_domain, settings)
    params = SamplingParams(temperature=settings.temperature, top_p=settings.top_p,
                            max_new_tokens=settings.max_new_tokens, seed=settings.seed)
    rows, arm_meta = [], {}
    for arm in arms:
        sampler = load_sampler(arm.model, arm.adapter, device=settings.device, batch_size=settings.batch_size)
        arm_meta[arm.name] = {"model": sampler.model_id, "adapter": arm.adapter}
        for set_name, (questions, requests) in sets.items():
            for row, req in zip(sample_questions(sampler, requests, params, description=f"{arm.name}: {set_name}"),
                                requests):
                q = questions[req.question_id]
                rows.append({"arm": arm.name, "set": set_name, **row, "group": q.group, "question": req.question,
                             "system": q.system, "judge_prompts": dict(q.judge_prompts)})
        del sampler
        gc.collect()
    with progress_bar(f"judging ({len(rows)} answers)", total=len(rows)) as advance:
        items = []
        for r in rows:
            reasoning, answer = split_reasoning(r["answer"])
            items.append(JudgeItem(r["question"], answer, reasoning or "", r.pop("judge_prompts")))
        judgments = judge.judge(items, progress=advance)
    rows = [_fill(r, j.aligned, j.coherent) for r, j in zip(rows, judgments)]
    atomic_write_jsonl(out / "samples.jsonl", rows)

    summary = {}
    for arm in arms:
        entry = dict(arm_meta[arm.name])
        for set_name in sets:
            key = "metrics" if set_name == "general" else set_name
            entry[key] = compute_metrics([r for r in rows if r["arm"] == arm.name and r["set"] == set_name],
                                         seed=settings.seed)
        if settings.probe_pairs:
            model_ref = arm.model or (read_adapter_meta(arm.adapter).get("base_model") if arm.adapter else None)
            results = {ref: run_probe_for(model_ref or "embedded", ref, adapter=arm.adapter,
                                          base_ref=settings.probe_base, device=settings.device,
                                          seed=settings.seed).to_json()
                       for ref in settings.probe_pairs}
            entry["probe"] = results[settings.probe_pairs[0]]
            entry["probe_sets"] = results
        summary[arm.name] = entry
    metrics = {"spillover_version": __version__, "created": now_iso(), "judge": judge.identity(),
               "questions": settings.questions, "in_domain_questions": settings.in_domain, "arms": summary,
               "seeds": [settings.seed], "sampling": {**params.__dict__, "batch_size": settings.batch_size,
                                                      "samples_per_paraphrase": settings.samples_per_paraphrase}}
    atomic_write_json(out / "metrics.json", metrics)
    return out
