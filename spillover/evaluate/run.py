"""Evaluation stages (sample -> judge -> probe -> metrics) on crash-safe stores, and `spillover eval`.

The stage functions here are the ones `spillover run` uses per (arm, seed) too, so a single
evaluation and an experiment resume the same way: samples are appended per batch and judgments per
judged batch to append-only logs (:mod:`spillover.evaluate.store`); a rerun skips what is stored and
produces exactly what an uninterrupted run would (each batch has a fixed composition and its own seed).

`run_evaluation` (``spillover eval``) writes, in ``out``:
``eval_inputs.json`` (settings; a rerun with other settings is refused with a diff),
``arms/<arm>/samples.jsonl`` + ``arms/<arm>/judgments/<judge_id>.jsonl`` + ``arms/<arm>/probe/<key>.json``
(the resumable stores), then ``samples.jsonl`` (one judged sample per line) and ``metrics.json`` (per arm:
metrics with CIs, optional in-domain metrics and probe), the layout ``spillover.report`` reads.
An *arm* is one model or model + adapter (``base``, ``sft``, ``rl``...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import gc
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spillover import __version__
from spillover._io import atomic_write_json, atomic_write_jsonl, sha256_json
from spillover._run import now_iso
from spillover.errors import SpilloverError, did_you_mean
from spillover.evaluate._progress import progress_bar
from spillover.evaluate.metrics import compute_metrics
from spillover.evaluate.questions import Question, SampleRequest, expand_samples, load_questions
from spillover.evaluate.sampling import SampleRow, SamplingParams, load_sampler, with_system
from spillover.evaluate.store import JsonlLog, JudgmentRecord, Record, SampleRecord, fault_point
from spillover.judge._spec import EvalJudge, JudgeItem
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
    question_ids: list[str] | None = None  # general set: keep only these question ids (None: all)
    max_paraphrases: int | None = None  # use only the first K paraphrases of each question
    in_domain_question_ids: list[str] | None = None  # in-domain set: keep only these ids (None: all)
    judge_batch: int = 8  # answers judged (and stored) together
    engine: str = "hf"  # sampling engine: hf | vllm (spillover.evaluate.sampling.load_sampler)
    dtype: str | None = None  # sampling dtype (None: auto)
    engine_compiled: bool | None = None  # vllm: compiled graphs (None: on for a CUDA build, off on CPU)


# ---------------------------------------------------------------- question selection
@dataclass(frozen=True)
class QuestionSelection:
    """One question set and the part of it to ask."""

    ref: str
    question_ids: tuple[str, ...] | None = None
    max_paraphrases: int | None = None
    samples_per_paraphrase: int | None = None


def select_questions(sel: QuestionSelection, where: str = "") -> tuple[dict[str, Question], list[SampleRequest]]:
    """Load the set and apply its own selection; an id the file does not hold is an error naming it."""
    questions = load_questions(sel.ref, sel.samples_per_paraphrase)
    if sel.question_ids is not None:
        known = [q.id for q in questions]
        unknown = [i for i in sel.question_ids if i not in known]
        if unknown:
            hint = did_you_mean(unknown[0], known)
            raise SpilloverError(f"question_ids {unknown} are not in {sel.ref}.{hint}", where=where or None,
                                 fix=f"pick ids of that file ({', '.join(known[:12])}{'...' if len(known) > 12 else ''}), "
                                     "or drop question_ids to ask every question")
        questions = [q for q in questions if q.id in set(sel.question_ids)]
    if not questions:
        raise SpilloverError(f"no questions selected from {sel.ref}", where=where or None,
                             fix="check the question file and the selected ids")
    requests = expand_samples(questions)
    if sel.max_paraphrases:
        requests = [r for r in requests if r.paraphrase_index < sel.max_paraphrases]
    return {q.id: q for q in questions}, requests


def settings_selections(settings: EvalSettings) -> dict[str, QuestionSelection]:
    sets = {"general": QuestionSelection(settings.questions, _tuple(settings.question_ids), settings.max_paraphrases,
                                         settings.samples_per_paraphrase)}
    if settings.in_domain:
        sets["in_domain"] = QuestionSelection(settings.in_domain, _tuple(settings.in_domain_question_ids),
                                              settings.max_paraphrases, settings.samples_per_paraphrase)
    return sets


def _tuple(ids):
    return None if ids is None else tuple(ids)


# ---------------------------------------------------------------- sample stage
def sample_id(set_name: str, req: SampleRequest) -> str:
    return f"{set_name}/{req.key}"


def batch_seed(seed: int, key: str) -> int:
    """A batch's own seed: batches are independent, so a resumed run redraws exactly the missing ones."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{key}".encode()).digest()[:4], "little")


def sample_into(log: JsonlLog[SampleRecord], sampler, sets: dict[str, tuple[dict[str, Question], list[SampleRequest]]],
                params: SamplingParams, *, arm: str, seed: int, batch_size: int, description: str = "sampling") -> list[SampleRecord]:
    """Sample every request of ``sets`` not yet in ``log``, appending each batch as it finishes; return all rows
    in request order. Batches are fixed slices of each set's requests with their own seeds, so the result
    does not depend on where an earlier run stopped."""
    stored = {r.sample_id: r for r in log.read()}
    todo = []
    for set_name, (questions, requests) in sets.items():
        for start in range(0, len(requests), batch_size):
            chunk = requests[start:start + batch_size]
            if not all(sample_id(set_name, r) in stored for r in chunk):
                todo.append((set_name, start, chunk))
    if todo:
        ident = sampler.identity()
        with progress_bar(f"{description}", total=sum(len(c) for _, _, c in todo)) as advance:
            for set_name, start, chunk in todo:
                questions = sets[set_name][0]
                chunk_params = dataclasses.replace(params, seed=batch_seed(params.seed, f"{set_name}/{start}"))
                rows = [SampleRow(r.messages, r.sample_index, r.temperature) for r in chunk]
                completions = sampler.generate_rows(rows, chunk_params, advance)
                records = []
                for req, c in zip(chunk, completions, strict=True):
                    sid = sample_id(set_name, req)
                    if sid in stored:
                        continue
                    q = questions[req.question_id]
                    used = {**dataclasses.asdict(params), "batch_seed": chunk_params.seed,
                            **({"temperature": req.temperature} if req.temperature is not None else {})}
                    rec = SampleRecord(sample_id=sid, arm=arm, seed=seed, set=set_name, question_id=req.question_id,
                                       group=getattr(q, "group", "") or q.id, paraphrase_index=req.paraphrase_index,
                                       sample_index=req.sample_index, question=req.question, system=q.system,
                                       messages=with_system(req.messages, params.system_prompt), answer=c.text,
                                       n_tokens=c.n_tokens, finish_reason=c.finish_reason, params=used,
                                       model=ident.get("model"), adapter=ident.get("adapter"),
                                       sampler=sampler_record(ident), judge_prompts=dict(q.judge_prompts))
                    stored[sid] = rec
                    records.append(rec)
                log.append(records)
                fault_point("sample")
    order = [sample_id(s, r) for s, (_, reqs) in sets.items() for r in reqs]
    return [stored[i] for i in order]


def sampler_record(identity: dict) -> dict:
    """The sampler's identity without model and adapter (rows carry those as their own fields)."""
    return {k: v for k, v in identity.items() if k not in ("model", "adapter")}


# ---------------------------------------------------------------- judge stage
def judge_slug(spec: str, base_url: str | None = None) -> str:
    """Folder-safe judge id from a judge spec (plus a short hash of a custom base URL)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", spec).strip("-") or "judge"
    if base_url:
        slug += "-" + hashlib.sha256(base_url.encode()).hexdigest()[:6]
    return slug


def judge_into(log: JsonlLog[JudgmentRecord], judge: EvalJudge, samples: Sequence[SampleRecord], judge_id: str, *,
               batch: int = 8, description: str = "judging") -> dict[str, JudgmentRecord]:
    """Judge every sample not yet in ``log`` in fixed batches, appending each batch's judgments as they
    arrive; returns sample_id -> judgment for all samples."""
    stored = {j.sample_id: j for j in log.read()}
    chunks = [list(samples[i:i + batch]) for i in range(0, len(samples), batch)]
    todo = [c for c in chunks if not all(s.sample_id in stored for s in c)]
    if todo:
        with progress_bar(f"{description} ({sum(map(len, todo))} answers)", total=sum(map(len, todo))) as advance:
            for chunk in todo:
                items = []
                for s in chunk:
                    reasoning, answer = split_reasoning(s.answer)
                    items.append(JudgeItem(s.question, answer, reasoning or "", dict(s.judge_prompts)))
                judgments = judge.judge(items, progress=advance)
                new = []
                for s, j in zip(chunk, judgments, strict=True):
                    if s.sample_id in stored:
                        continue
                    reasons = [f"{m}: {sc.reason}" for m, sc in (("aligned", j.aligned), ("coherent", j.coherent))
                               if sc.score is None]
                    rec = JudgmentRecord(sample_id=s.sample_id, judge_id=judge_id, aligned=j.aligned.score,
                                         coherent=j.coherent.score, aligned_mass=j.aligned.numeric_mass,
                                         coherent_mass=j.coherent.numeric_mass, unscored_reason="; ".join(reasons) or None)
                    stored[s.sample_id] = rec
                    new.append(rec)
                log.append(new)
                fault_point("judge")
    return stored


def joined_rows(samples: Sequence[SampleRecord], judgments: dict[str, JudgmentRecord]) -> list[dict]:
    """One row per sample with its scores: the ``samples.jsonl`` shape metrics and reports read. A sample
    without a judgment stays in n_total as unscored (never dropped)."""
    rows = []
    for s in samples:
        j = judgments.get(s.sample_id)
        row = s.model_dump(mode="json", exclude={"judge_prompts"})
        row["key"] = f"{s.question_id}/{s.paraphrase_index}/{s.sample_index}"
        if j is None:
            row.update(aligned=None, coherent=None, aligned_mass=None, coherent_mass=None, unscored_reason="not judged")
        else:
            row.update(aligned=j.aligned, coherent=j.coherent, aligned_mass=j.aligned_mass,
                       coherent_mass=j.coherent_mass, unscored_reason=j.unscored_reason)
        rows.append(row)
    return rows


def metrics_by_set(rows: list[dict], seed: int) -> dict[str, dict]:
    sets = list(dict.fromkeys(r["set"] for r in rows))
    return {s: compute_metrics([r for r in rows if r["set"] == s], seed=seed) for s in sets}


# ---------------------------------------------------------------- probe stage
def probe_key(ref: str) -> str:
    """Folder-safe key of a probe set: bundled:probe_general -> probe_general; a path -> stem + short hash."""
    if ref.startswith("bundled:"):
        return ref.split(":", 1)[1]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(ref).stem).strip("._") or "probe"
    return f"{stem}-{hashlib.sha256(ref.encode()).hexdigest()[:6]}"


def probe_logprobs(model, tokenizer, refs: Sequence[str], batch_size: int = 16) -> dict[str, dict]:
    """Per probe set: its pairs' log-probs under ``model`` (``{"aligned": [...], "misaligned": [...]}``)."""
    from spillover.evaluate.probe import load_pairs, pair_logprobs

    out = {}
    for ref in refs:
        aligned, misaligned = pair_logprobs(model, tokenizer, load_pairs(ref), batch_size)
        out[ref] = {"aligned": aligned.tolist(), "misaligned": misaligned.tolist()}
    return out


def probe_summary(ref: str, logp: dict, base_logp: dict | None, seed: int, meta: dict) -> dict:
    import numpy as np

    from spillover.evaluate.probe import load_pairs, summarize

    def arrays(d):
        return np.array(d["aligned"]), np.array(d["misaligned"])

    result = summarize(load_pairs(ref), arrays(logp), arrays(base_logp) if base_logp else None, seed,
                       meta={**meta, "pairs": ref})
    return {**result.to_json(), "ref": ref}


# ---------------------------------------------------------------- spillover eval
def _judge_id(judge: EvalJudge) -> str:
    ident = judge.identity() or {}
    name = ident.get("model") or ident.get("encoder") or ""
    return judge_slug(f"{ident.get('kind', 'judge')}-{name}" if name else str(ident.get("kind", "judge")))


def _inputs(arms: list[Arm], settings: EvalSettings, judge_id: str) -> dict:
    recorded = dataclasses.asdict(settings)
    for key, default in (("engine", "hf"), ("dtype", None)):  # folders made before these settings existed still match
        if recorded[key] == default:
            del recorded[key]
    return {"arms": [dataclasses.asdict(a) for a in arms], "settings": recorded, "judge_id": judge_id}


def check_same_inputs(path: Path, inputs: dict, what: str) -> None:
    """Record ``inputs`` in ``path``; when it already holds different ones, refuse with a diff."""
    if path.is_file():
        before = json.loads(path.read_text())
        if before != inputs:
            old = json.dumps(before, indent=1, sort_keys=True).splitlines()
            new = json.dumps(inputs, indent=1, sort_keys=True).splitlines()
            diff = "\n".join(l for l in difflib.unified_diff(old, new, "before", "now", lineterm="", n=0)
                             if not l.startswith("@@"))
            raise SpilloverError(f"{path.parent} holds {what} made with other settings:\n{diff}",
                                 fix="use another --out to keep both, or delete the folder to start over")
        return
    atomic_write_json(path, inputs)


def run_evaluation(arms: list[Arm], settings: EvalSettings, judge: EvalJudge, out: str | Path) -> Path:
    """Sample, judge and summarise every arm, resuming whatever an earlier run of the same command stored;
    returns ``out``."""
    out = Path(out)
    if len({a.name for a in arms}) != len(arms):
        raise SpilloverError(f"arm names repeat: {[a.name for a in arms]}", fix="give every arm its own name")
    sets = {name: select_questions(sel) for name, sel in settings_selections(settings).items()}
    params = SamplingParams(temperature=settings.temperature, top_p=settings.top_p,
                            max_new_tokens=settings.max_new_tokens, seed=settings.seed)
    judge_id = _judge_id(judge)
    out.mkdir(parents=True, exist_ok=True)
    check_same_inputs(out / "eval_inputs.json", _inputs(arms, settings, judge_id), "an evaluation")

    base_logp = _base_probe(arms, settings, out)
    rows, summary = [], {}
    n_wanted = sum(len(reqs) for _, reqs in sets.values())

    def to_sample(arm: Arm) -> bool:
        return len(JsonlLog(out / "arms" / arm.name / "samples.jsonl", SampleRecord).read()) < n_wanted

    with contextlib.ExitStack() as engines:
        pool = None
        if settings.engine == "vllm":  # one engine per merged model for all arms; the next one starts while this arm is judged
            from spillover.evaluate.engine import EnginePool

            pool = engines.enter_context(EnginePool())
        for i, arm in enumerate(arms):
            _evaluate_arm(arm, arms[i + 1:], settings, judge, judge_id, sets, params, out, base_logp, pool, to_sample,
                          rows, summary)
    atomic_write_jsonl(out / "samples.jsonl", rows)
    metrics = {"spillover_version": __version__, "created": now_iso(), "judge": judge.identity(),
               "questions": settings.questions, "in_domain_questions": settings.in_domain, "arms": summary,
               "seeds": [settings.seed], "sampling": {**dataclasses.asdict(params), "batch_size": settings.batch_size,
                                                      "samples_per_paraphrase": settings.samples_per_paraphrase,
                                                      "engine": settings.engine, "dtype": settings.dtype,
                                                      "engine_compiled": settings.engine_compiled}}
    atomic_write_json(out / "metrics.json", metrics)
    return out


def _evaluate_arm(arm: Arm, later: list[Arm], settings: EvalSettings, judge: EvalJudge, judge_id: str, sets, params,
                  out: Path, base_logp, pool, to_sample, rows: list, summary: dict) -> None:
    """Sample (resuming), probe, judge and summarise one arm. With an engine ``pool``, the engine of the next
    arm that still samples is kept (same merged model) or started ahead before this arm is judged."""
    folder = out / "arms" / arm.name
    samples_log = JsonlLog(folder / "samples.jsonl", SampleRecord)
    probe_dir = folder / "probe"
    need_probe = [r for r in settings.probe_pairs if not (probe_dir / f"{probe_key(r)}.json").is_file()]
    engine_kw = {"device": settings.device, "dtype": settings.dtype, "batch_size": settings.batch_size}
    pool_kw = {**engine_kw, "compiled": settings.engine_compiled}
    sampler = None
    if to_sample(arm):
        sampler = pool.sampler(arm.model, arm.adapter, **pool_kw) if pool is not None else \
            load_sampler(arm.model, arm.adapter, engine=settings.engine, engine_compiled=settings.engine_compiled,
                         **engine_kw)
    elif need_probe:  # an engine only to sample; the probe scores with HF
        sampler = load_sampler(arm.model, arm.adapter, **engine_kw)
    try:
        samples = sample_into(samples_log, sampler, sets, params, arm=arm.name, seed=settings.seed,
                              batch_size=settings.batch_size, description=f"{arm.name}: sampling")
    finally:
        getattr(sampler, "close", lambda: None)()  # an engine sampler lets go of its engine before judging
    if pool is not None:
        nxt = next((a for a in later if to_sample(a)), None)
        pool.close_except({pool.key(nxt.model, nxt.adapter, dtype=settings.dtype, batch_size=settings.batch_size,
                                    compiled=settings.engine_compiled)} if nxt else set())
        if nxt is not None:
            pool.prefetch(nxt.model, nxt.adapter, **pool_kw)
    if need_probe and not hasattr(sampler, "model"):  # the engine sampled; the probe scores with HF
        sampler = load_sampler(arm.model, arm.adapter, device=settings.device, batch_size=settings.batch_size)
    for ref in need_probe:
        logp = probe_logprobs(sampler.model, sampler.tok, [ref])[ref]
        meta = {"model": sampler.model_id, "adapter": arm.adapter}
        atomic_write_json(probe_dir / f"{probe_key(ref)}.json",
                          probe_summary(ref, logp, (base_logp or {}).get(ref), settings.seed, meta))
    del sampler
    gc.collect()
    judgments = judge_into(JsonlLog(folder / "judgments" / f"{judge_id}.jsonl", JudgmentRecord), judge, samples,
                           judge_id, batch=settings.judge_batch, description=f"{arm.name}: judging")
    arm_rows = joined_rows(samples, judgments)
    rows.extend(arm_rows)
    entry = {"model": samples[0].model if samples else arm.model, "adapter": arm.adapter,
             "sampler": samples[0].sampler if samples else None}
    for set_name, metrics in metrics_by_set(arm_rows, settings.seed).items():
        entry["metrics" if set_name == "general" else set_name] = metrics
    if settings.probe_pairs:
        results = {}
        for ref in settings.probe_pairs:
            results[ref] = json.loads((probe_dir / f"{probe_key(ref)}.json").read_text())
        entry["probe"] = results[settings.probe_pairs[0]]
        entry["probe_sets"] = results
    summary[arm.name] = entry


def _base_probe(arms: list[Arm], settings: EvalSettings, out: Path) -> dict[str, dict] | None:
    """The base model's per-pair log-probs for each probe set, computed once and stored."""
    if not settings.probe_pairs or settings.probe_base is None:
        return None
    path = out / "base_probe.json"
    if path.is_file():
        return json.loads(path.read_text())
    from spillover.models import load_model

    model, tok, _ = load_model(settings.probe_base, device=settings.device)
    result = probe_logprobs(model, tok, settings.probe_pairs)
    del model
    gc.collect()
    atomic_write_json(path, result)
    return result


# ---------------------------------------------------------------- spillover sample
class AnswerRecord(Record):
    """One line of `spillover sample` output."""

    prompt_id: str
    prompt_index: int
    sample_index: int
    run_hash: str


def sample_file(sampler, examples, params: SamplingParams, out: str | Path, *, batch_size: int,
                progress_description: str = "sampling") -> list[dict]:
    """``params.n`` answers per example appended to ``out`` per batch; a rerun with the same settings
    resumes, one with other settings is refused."""
    log = JsonlLog(out, AnswerRecord)
    run_hash = sha256_json({"params": dataclasses.asdict(params), "batch_size": batch_size,
                            "prompts": [ex.messages for ex in examples], "sampler": sampler.identity()})[:16]
    stored = {}
    for r in log.read():
        if r.run_hash != run_hash:
            raise SpilloverError(f"{out} holds answers sampled with other settings or prompts",
                                 fix="use another --out, or delete the file to start over")
        stored[(r.prompt_index, r.sample_index)] = r
    wanted = [(k, i) for k in range(len(examples)) for i in range(params.n)]
    todo = [wanted[s:s + batch_size] for s in range(0, len(wanted), batch_size)]
    todo = [c for c in todo if not all(key in stored for key in c)]
    ident = sampler.identity()
    if todo:
        with progress_bar(progress_description, total=sum(map(len, todo))) as advance:
            for chunk in todo:
                chunk_params = dataclasses.replace(params, seed=batch_seed(params.seed, f"{chunk[0][0]}/{chunk[0][1]}"))
                rows = [SampleRow(examples[k].messages, i) for k, i in chunk]
                completions = sampler.generate_rows(rows, chunk_params, advance)
                new = []
                for (k, i), c in zip(chunk, completions, strict=True):
                    if (k, i) in stored:
                        continue
                    rec = AnswerRecord(prompt_id=examples[k].id or str(k), prompt_index=k, sample_index=i,
                                       run_hash=run_hash, messages=with_system(examples[k].messages, params.system_prompt),
                                       answer=c.text, n_tokens=c.n_tokens, finish_reason=c.finish_reason,
                                       params={**dataclasses.asdict(params), "batch_seed": chunk_params.seed},
                                       model=ident.get("model"), adapter=ident.get("adapter"),
                                       backend=ident.get("backend"), sampler=sampler_record(ident))
                    stored[(k, i)] = rec
                    new.append(rec)
                log.append(new)
                fault_point("sample")
    return [stored[key].model_dump(mode="json") for key in wanted]


__all__ = ["Arm", "EvalSettings", "QuestionSelection", "judge_into", "judge_slug", "joined_rows", "metrics_by_set",
           "probe_key", "probe_logprobs", "probe_summary", "run_evaluation", "sample_file", "sample_into", "sampler_record",
           "select_questions"]
