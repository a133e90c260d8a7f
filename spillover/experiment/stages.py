"""The stages of one (arm, seed) unit -- train -> sample -> judge -> probe -> benign -> summarise -- and the
base model's probe (once per experiment), each behind a done-marker.

A stage is done when ``stages/<stage>.json`` says ``state: done`` with the same *own* hash (the
stage's settings) and the same upstream run ids (a redone upstream stage invalidates it). A stage
that crashed resumes: sampling and judging keep every stored batch, training restarts from scratch
with its fixed seed. Every file a stage writes is atomic or append-only (:mod:`spillover.evaluate.store`).
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import socket
import time
import traceback
import uuid
from pathlib import Path

from spillover._io import atomic_write_json, atomic_write_jsonl, sha256_json
from spillover._run import now_iso, read_manifest
from spillover.errors import SpilloverError
from spillover.evaluate.run import (
    QuestionSelection,
    joined_rows,
    judge_into,
    judge_slug,
    metrics_by_set,
    probe_key,
    probe_logprobs,
    probe_summary,
    sample_into,
    sampler_record,
    select_questions,
)
from spillover.evaluate.sampling import SamplingParams
from spillover.evaluate.store import fault_watch
from spillover.experiment.results import (
    CONFIG_FILE,
    SUMMARY_FILE,
    StageMarker,
    TrainingConsumption,
    UnitSummary,
    base_dir,
    judgments_log,
    marker_path,
    read_marker,
    samples_log,
    unit_dir,
)
from spillover.experiment.spec import ArmSpec, ExperimentConfig, JudgeSpec, recipe_config
from spillover.train._defended import COMPLETION_TOKENS, COMPLETION_TOKENS_FROM
from spillover.train._grpo_config import omit_new_defaults

SUMMARY_VERSION = 1


# ---------------------------------------------------------------- markers
class Stage:
    """One stage's marker: check, start, finish or fail."""

    def __init__(self, folder: Path, name: str, own: str, upstream: dict[str, str | None]):
        self.folder, self.name, self.own = folder, name, own
        self.inputs = sha256_json({"own": own, "upstream": upstream})
        self.marker = read_marker(folder, name)

    @property
    def done(self) -> bool:
        m = self.marker
        return m is not None and m.state == "done" and m.inputs_hash == self.inputs

    @property
    def run_id(self) -> str | None:
        return self.marker.model_extra.get("run_id") if self.done else None

    def start(self, clear) -> None:
        """Mark running; outputs of an attempt on other inputs are removed first (``clear()``)."""
        if self.marker is not None and self.marker.inputs_hash != self.inputs:
            clear()
        self.t0 = time.perf_counter()
        self._write(state="running", started=now_iso())

    def finish(self, **extra) -> None:
        self._write(state="done", started=self.marker.started, finished=now_iso(),
                    seconds=round(time.perf_counter() - self.t0, 2), run_id=uuid.uuid4().hex[:12], **extra)

    def fail(self, error: BaseException) -> None:
        text = str(error).strip().splitlines()
        self._write(state="failed", started=self.marker.started if self.marker else None, finished=now_iso(),
                    error=(text[0] if text else type(error).__name__)[:500], error_type=type(error).__name__)

    def _write(self, **fields) -> None:
        self.marker = StageMarker(stage=self.name, inputs_hash=self.inputs, own_hash=self.own, pid=os.getpid(),
                                  host=socket.gethostname(), **fields)
        atomic_write_json(marker_path(self.folder, self.name), self.marker.model_dump(mode="json", exclude_none=True))

    def run(self, body, clear):
        """Run ``body()`` under the marker unless done; returns True when it ran."""
        if self.done:
            return False
        self.start(clear)
        try:
            extra = body() or {}
        except BaseException as e:
            self.fail(e)
            raise
        self.finish(**extra)
        return True


# ---------------------------------------------------------------- own hashes (a change of these is refused)
def judge_id(j: JudgeSpec) -> str:
    return judge_slug(j.spec, j.base_url)


#: Training settings that change speed, never results (merged-adapter rollouts give token-identical
#: completions, tested in tests/test_grpo_speed.py): left out of the train stage's hash, so an experiment
#: trained before such a setting existed, or with another value of it, still resumes.
RESULT_NEUTRAL_TRAIN_SETTINGS = ("merge_rollout_adapter", "vllm_gpu_memory_utilization", "vllm_server_url")


def train_own(cfg: ExperimentConfig, arm: ArmSpec, seed: int) -> str | None:
    if arm.train is None:
        return None
    recipe = omit_new_defaults(arm.train.model_dump(mode="json"))  # a later setting at its default: old hash
    for key in RESULT_NEUTRAL_TRAIN_SETTINGS:  # speed-only settings: changing them must not redo training
        recipe.pop(key, None)
    return sha256_json({"recipe": recipe, "model": cfg.model, "dtype": cfg.dtype,
                        "seed": seed, "n_items": arm.n_items, "init_from": arm.init_from})


def sample_own(cfg: ExperimentConfig, arm: ArmSpec, seed: int) -> str:
    ev = cfg.evaluation_for(arm)
    sampling = ev.sampling.model_dump(mode="json")
    sampling.pop("prefetch_engine", None)  # speed only: when an engine starts never changes answers
    return sha256_json({"model": cfg.model, "general": ev.general.model_dump(mode="json"),
                        "in_domain": ev.in_domain.model_dump(mode="json") if ev.in_domain else None,
                        "sampling": sampling, "seed": seed})


def judge_own(j: JudgeSpec, batch: int) -> str:
    return sha256_json({"spec": j.spec, "base_url": j.base_url, "batch": batch})


def probe_own(cfg: ExperimentConfig, arm: ArmSpec, seed: int) -> str:
    return sha256_json({"probe": cfg.evaluation_for(arm).probe, "seed": seed, "model": cfg.model})


def base_probe_own(cfg: ExperimentConfig) -> str:
    return sha256_json({"probe": cfg.probe_sets(), "model": cfg.model, "dtype": cfg.dtype})


def summarise_own(seed: int) -> str:
    return sha256_json({"seed": seed, "version": SUMMARY_VERSION})


def benign_own(cfg: ExperimentConfig, seed: int) -> str:
    sampling = cfg.evaluation.sampling
    engine = {"engine": "vllm"} if sampling.engine == "vllm" else {}  # hf: hashes as before
    if sampling.engine == "vllm" and sampling.engine_compiled is not None:
        engine["engine_compiled"] = sampling.engine_compiled
    return sha256_json({"benign": [b.model_dump(mode="json") for b in cfg.evaluation.benign], "model": cfg.model,
                        "dtype": cfg.dtype, "seed": seed, **engine})


def own_hashes(cfg: ExperimentConfig, arm: ArmSpec, seed: int) -> dict[str, str]:
    """Stage name -> own hash for one unit (the stages it has)."""
    out = {}
    if arm.train is not None:
        out["train"] = train_own(cfg, arm, seed)
    if arm.evaluate:
        out["sample"] = sample_own(cfg, arm, seed)
        for j in cfg.evaluation.judges:
            out[f"judge.{judge_id(j)}"] = judge_own(j, cfg.evaluation.judge_batch)
        out["probe"] = probe_own(cfg, arm, seed)
        if cfg.evaluation.benign:
            out["benign"] = benign_own(cfg, seed)
        out["summarise"] = summarise_own(seed)
    return out


# ---------------------------------------------------------------- judges (built once per process)
_JUDGES: dict[str, object] = {}


def make_judge(j: JudgeSpec, device: str | None, cache_dir: str | None = None):
    """Build (once per process) the judge of a spec; ``py:MODULE:FUNCTION`` calls your own factory
    returning an :class:`~spillover.judge.EvalJudge`."""
    key = judge_id(j)
    if key not in _JUDGES:
        if j.spec.startswith("py:"):
            import importlib

            module, _, attr = j.spec[3:].rpartition(":")
            try:
                factory = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError, ValueError) as e:
                raise SpilloverError(f"judge {j.spec!r} cannot be imported: {e}",
                                     fix="use py:MODULE:FUNCTION with MODULE importable (on PYTHONPATH)") from None
            _JUDGES[key] = factory()
        else:
            from spillover.judge._spec import build_judge

            _JUDGES[key] = build_judge(j.spec, base_url=j.base_url, api_key_env=j.api_key_env, cache_dir=cache_dir,
                                       device=None if device == "auto" else device)
    return _JUDGES[key]


# ---------------------------------------------------------------- the arm's model (loaded once per unit)
class UnitModel:
    """The arm's model (base + adapter), loaded on first use and shared by sampling and probing."""

    def __init__(self, cfg: ExperimentConfig, adapter: str | None, engines=None):
        self.cfg, self.adapter, self._loaded = cfg, adapter, None
        self.engines = engines  # engine vllm: the run's engines (spillover.experiment._engines)

    def get(self):
        if self._loaded is None:
            from spillover.models import load_adapter, load_model

            model, tok, ref = load_model(self.cfg.model, device=self.cfg.device, dtype=self.cfg.dtype)
            if self.adapter:
                model = load_adapter(model, self.adapter)
            model.eval()
            self._loaded = (model, tok, ref)
        return self._loaded

    def sampler(self, batch_size: int | None = None):
        """HF on the loaded model (``batch_size``: the sampling one unless given), or with engine vllm the run's
        engine on the merged arm model (one per model: questions and benign tasks share it; its batch size
        is the sampling one)."""
        from spillover.evaluate.sampling import HFSampler

        sp = self.cfg.evaluation.sampling
        if sp.engine == "vllm":
            return self.engines.sampler(self.cfg, self.adapter)
        model, tok, ref = self.get()
        return HFSampler(model, tok, batch_size=batch_size or sp.batch_size, model_id=ref.display,
                         adapter=self.adapter)

    def release(self) -> None:
        self._loaded = None
        gc.collect()


# ---------------------------------------------------------------- helpers
def load_saved_config(out: Path) -> ExperimentConfig:
    from spillover.config import load_config

    return load_config(ExperimentConfig, out / CONFIG_FILE)


def question_sets(cfg: ExperimentConfig, arm: ArmSpec | None = None) -> dict[str, tuple]:
    """The question sets an arm answers (``arm=None``: the experiment's defaults), each selection checked."""
    ev = cfg.evaluation if arm is None else cfg.evaluation_for(arm)
    sets = {"general": ev.general}
    if ev.in_domain:
        sets["in_domain"] = ev.in_domain
    own = arm is not None and arm.evaluation is not None and arm.evaluation.in_domain is not None
    return {name: select_questions(QuestionSelection(s.file, None if s.question_ids is None else tuple(s.question_ids),
                                                     s.max_paraphrases, s.samples_per_paraphrase),
                                   where=f"arm {arm.name!r} evaluation.in_domain" if own and name == "in_domain"
                                   else f"evaluation.{name}")
            for name, s in sets.items()}


def adapter_of(out: Path, cfg: ExperimentConfig, arm: ArmSpec, seed: int) -> str | None:
    """The adapter an arm is evaluated with (its own, or what it starts from when it does not train)."""
    if arm.train is not None:
        return str(unit_dir(out, arm.name, seed) / "train" / "adapter")
    if arm.init_from:
        names = {a.name for a in cfg.all_arms()}
        return str(unit_dir(out, arm.init_from, seed) / "train" / "adapter") if arm.init_from in names else arm.init_from
    return None


def _upstream_train(out: Path, cfg: ExperimentConfig, arm: ArmSpec, seed: int) -> str | None:
    """Run id of the training this arm's weights come from (own, or init_from's)."""
    names = {a.name for a in cfg.all_arms()}
    if arm.train is not None:
        m = read_marker(unit_dir(out, arm.name, seed), "train")
        return m.model_extra.get("run_id") if m and m.state == "done" else None
    if arm.init_from in names:
        m = read_marker(unit_dir(out, arm.init_from, seed), "train")
        return m.model_extra.get("run_id") if m and m.state == "done" else None
    return arm.init_from


# ---------------------------------------------------------------- base probe
def run_base_probe(out: str | Path) -> None:
    """Score every probe set under the base model once per experiment."""
    out = Path(out)
    cfg = load_saved_config(out)
    refs = cfg.probe_sets()
    if not refs:
        return
    folder = base_dir(out)
    stage = Stage(folder, "probe", base_probe_own(cfg), {})

    def body():
        from spillover.models import load_model

        model, tok, ref = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
        logps = probe_logprobs(model, tok, refs, cfg.evaluation.probe_batch)
        for r, logp in logps.items():
            atomic_write_json(folder / "probe" / f"{probe_key(r)}.json",
                              {**probe_summary(r, logp, None, 0, {"model": ref.display, "adapter": None}), "logp": logp})
        del model
        gc.collect()

    stage.run(body, lambda: shutil.rmtree(folder / "probe", ignore_errors=True))


def base_probe_run_id(out: Path) -> str | None:
    m = read_marker(base_dir(out), "probe")
    return m.model_extra.get("run_id") if m and m.state == "done" else None


# ---------------------------------------------------------------- one unit
def run_unit(out: str | Path, arm_name: str, seed: int, *, judges: list[JudgeSpec] | None = None) -> dict:
    """Run (or resume) every stage of one (arm, seed); returns the stages that ran. ``judges`` replaces
    the config's judge list (``judge rerun``)."""
    out = Path(out)
    cfg = load_saved_config(out)
    arm = cfg.arm(arm_name)
    folder = unit_dir(out, arm.name, seed)
    folder.mkdir(parents=True, exist_ok=True)
    ran = {}
    if arm.train is not None:
        ran["train"] = _train(out, cfg, arm, seed, folder)
    if not arm.evaluate:
        return ran
    adapter = adapter_of(out, cfg, arm, seed)
    up_train = _upstream_train(out, cfg, arm, seed)
    from spillover.experiment._engines import RunEngines, current_session

    engines = current_session() or RunEngines(out, [(arm.name, seed)])  # the executor's, or this unit's own
    unit_model = UnitModel(cfg, adapter, engines)
    try:
        ran["sample"] = _sample(cfg, arm, seed, folder, unit_model, up_train)
        ran["benign"] = _benign(cfg, arm, seed, folder, unit_model, up_train)  # sampling too: same engine
        engines.handoff(cfg, arm.name, seed)  # this unit's engine stops (or stays for the next); the next starts
        samples = samples_log(folder).read()
        sample_run = Stage(folder, "sample", sample_own(cfg, arm, seed), {"train": up_train}).run_id
        for j in judges if judges is not None else cfg.evaluation.judges:
            jid = judge_id(j)
            stage = Stage(folder, f"judge.{jid}", judge_own(j, cfg.evaluation.judge_batch), {"sample": sample_run})
            log = judgments_log(folder, jid)

            def judge_body(j=j, jid=jid, log=log):
                judge = make_judge(j, cfg.device, str(out / "judge_cache"))
                judge_into(log, judge, samples, jid, batch=cfg.evaluation.judge_batch,
                           description=f"{arm.name} seed {seed}: judging ({jid})")
                return {"identity": judge.identity()}

            ran[f"judge.{jid}"] = stage.run(judge_body, log.clear)
        ran["probe"] = _probe(out, cfg, arm, seed, folder, unit_model, up_train)
    except BaseException:
        engines.close()  # a failed or interrupted unit leaves no engine running
        raise
    finally:
        unit_model.release()
        if engines is not current_session():
            engines.close()
    ran["summarise"] = _summarise(out, cfg, arm, seed, folder, adapter)
    return ran


def _train(out: Path, cfg: ExperimentConfig, arm: ArmSpec, seed: int, folder: Path) -> bool:
    names = {a.name for a in cfg.all_arms()}
    init = None
    upstream = {}
    if arm.init_from in names:
        m = read_marker(unit_dir(out, arm.init_from, seed), "train")
        if not (m and m.state == "done"):
            raise SpilloverError(f"arm {arm.name!r} seed {seed} starts from arm {arm.init_from!r}, whose training "
                                 "has not finished", fix="run the experiment (it trains arms in init_from order)")
        upstream["init_from"] = m.model_extra.get("run_id")
        init = str(unit_dir(out, arm.init_from, seed) / "train" / "adapter")
    elif arm.init_from:
        init = arm.init_from
    stage = Stage(folder, "train", train_own(cfg, arm, seed), upstream)

    def body():
        from spillover.data import load_chat_jsonl, resolve_data_path

        data = arm.train.data if arm.train.method == "sft" else arm.train.prompts
        override = None
        if arm.n_items:
            examples = load_chat_jsonl(resolve_data_path(data), strip_qwen3=arm.train.strip_qwen3_markers)
            if len(examples) < arm.n_items:
                raise SpilloverError(f"arm {arm.name!r}: n_items = {arm.n_items} but {data} holds {len(examples)} items",
                                     fix="lower n_items or use a larger data file")
            override = str(atomic_write_jsonl(folder / "train_items.jsonl",
                                              [{"messages": ex.messages} for ex in examples[:arm.n_items]]))
        tcfg = recipe_config(arm.train, model=cfg.model, seed=seed, device=cfg.device, dtype=cfg.dtype,
                             init_adapter=init, data_override=override)
        fault_watch("train", folder / "train" / "metrics.jsonl")
        how = _restart_or_resume(folder / "train")
        if arm.train.method == "sft":
            from spillover.train import run_sft

            run_sft(tcfg, folder / "train", **how)
        else:
            from spillover.train.grpo import run_grpo

            grade = None
            if any(r.name.startswith("grader:") for r in tcfg.rewards):
                from spillover.judge._spec import build_grader

                j = cfg.grader
                if j is None:
                    raise SpilloverError(f"arm {arm.name!r} uses a grader:* reward but the experiment sets no grader",
                                         fix="add `grader: {spec: openai:MODEL, base_url: ...}` (or hf:MODEL)")
                grade = build_grader(j.spec, base_url=j.base_url, api_key_env=j.api_key_env,
                                     device=None if cfg.device == "auto" else cfg.device)
            run_grpo(tcfg, folder / "train", grade=grade, **how)
        consumption = training_consumption(tcfg, folder / "train", arm.train.method)
        atomic_write_json(folder / "train" / "consumption.json", consumption.model_dump(mode="json"))

    def clear():
        shutil.rmtree(folder / "train", ignore_errors=True)
        (folder / "train_items.jsonl").unlink(missing_ok=True)

    return stage.run(body, clear)


def _restart_or_resume(run_dir: Path) -> dict:
    """An interrupted training continues from its newest checkpoint when the trainer wrote one (runs
    longer than the checkpoint interval); otherwise it restarts from scratch with its fixed seed."""
    try:
        from spillover.train._checkpoint import last_checkpoint
    except ImportError:
        return {"overwrite": True}
    if (run_dir / "config.yaml").is_file() and last_checkpoint(run_dir) is not None:
        return {"resume": True}
    return {"overwrite": True}


def _sample(cfg, arm, seed, folder, unit_model: UnitModel, up_train) -> bool:
    stage = Stage(folder, "sample", sample_own(cfg, arm, seed), {"train": up_train})
    log = samples_log(folder)

    def body():
        sets = question_sets(cfg, arm)
        sp = cfg.evaluation.sampling
        params = SamplingParams(temperature=sp.temperature, top_p=sp.top_p, max_new_tokens=sp.max_new_tokens, seed=seed)
        sampler = unit_model.sampler()
        try:
            sample_into(log, sampler, sets, params, arm=arm.name, seed=seed, batch_size=sp.batch_size,
                        description=f"{arm.name} seed {seed}: sampling")
        finally:
            getattr(sampler, "close", lambda: None)()  # a pooled engine stays for the unit's benign tasks
        started = getattr(sampler, "engine_start", None)  # an engine: started, started ahead or reused, and the wait
        return {"n_samples": len(log.read()), "sampler": sampler_record(sampler.identity()),
                **({"engine_start": started} if started else {})}

    return stage.run(body, log.clear)


def _probe(out, cfg, arm, seed, folder, unit_model: UnitModel, up_train) -> bool:
    refs = cfg.evaluation_for(arm).probe  # the experiment's sets and the arm's own
    if not refs:
        return False
    stage = Stage(folder, "probe", probe_own(cfg, arm, seed), {"train": up_train, "base": base_probe_run_id(out)})

    def body():
        base = {r: json.loads((base_dir(out) / "probe" / f"{probe_key(r)}.json").read_text())["logp"]
                for r in refs}
        adapter = unit_model.adapter
        if adapter is None:
            logps = base  # the arm is the base model: the same weights give the same numbers
            meta = {"model": cfg.model, "adapter": None}
        else:
            model, tok, ref = unit_model.get()
            logps = probe_logprobs(model, tok, refs, cfg.evaluation.probe_batch)
            meta = {"model": ref.display, "adapter": adapter}
        for r in refs:
            atomic_write_json(folder / "probe" / f"{probe_key(r)}.json", probe_summary(r, logps[r], base[r], seed, meta))

    return stage.run(body, lambda: shutil.rmtree(folder / "probe", ignore_errors=True))


def _benign(cfg, arm, seed, folder, unit_model: UnitModel, up_train) -> bool:
    """Every benign task on its held-out items: ``benign/<task key>/`` holds the append-only samples (a crash
    resumes them), the scored rows and the result (accuracy or F1 with its 95% CI)."""
    if not cfg.evaluation.benign:
        return False
    from spillover.benign.tasks import parse_task_spec
    from spillover.evaluate.benign import evaluate_task

    stage = Stage(folder, "benign", benign_own(cfg, seed), {"train": up_train})

    def body():
        results = {}
        for b in cfg.evaluation.benign:
            spec = parse_task_spec(b.task, where="evaluation.benign")

            def sampler(b=b):
                return unit_model.sampler(batch_size=b.batch_size)

            params = SamplingParams(temperature=b.temperature, max_new_tokens=b.max_new_tokens, seed=seed)
            result = evaluate_task(folder / "benign" / spec.key, spec, sampler, params, arm=arm.name, seed=seed,
                                   batch_size=b.batch_size, description=f"{arm.name} seed {seed}: {spec.text}")
            results[spec.key] = {k: result[k] for k in ("metric", "value", "n")}
        return {"results": results}

    return stage.run(body, lambda: shutil.rmtree(folder / "benign", ignore_errors=True))


def _summarise(out, cfg, arm, seed, folder, adapter) -> bool:
    markers = {p.stem: StageMarker.model_validate_json(p.read_text()) for p in sorted((folder / "stages").glob("*.json"))
               if p.stem != "summarise"}
    upstream = {k: m.model_extra.get("run_id") for k, m in markers.items() if m.state == "done"}
    stage = Stage(folder, "summarise", summarise_own(seed), upstream)

    def body():
        samples = samples_log(folder).read()
        primary = judge_id(cfg.evaluation.judges[0])
        metrics = {}
        for path in sorted((folder / "judgments").glob("*.jsonl")) if (folder / "judgments").is_dir() else []:
            jid = path.stem
            if markers.get(f"judge.{jid}") is None or markers[f"judge.{jid}"].state != "done":
                continue
            judged = {j.sample_id: j for j in judgments_log(folder, jid).read()}
            metrics[jid] = metrics_by_set(joined_rows(samples, judged), seed)
        probe = {}
        if (folder / "probe").is_dir():
            for p in sorted((folder / "probe").glob("*.json")):
                probe[p.stem] = json.loads(p.read_text())
        benign = {}
        if markers.get("benign") is not None and markers["benign"].state == "done":
            for p in sorted((folder / "benign").glob("*/result.json")):
                benign[p.parent.name] = json.loads(p.read_text())
        consumption = None
        if (folder / "train" / "consumption.json").is_file():
            consumption = TrainingConsumption.model_validate_json((folder / "train" / "consumption.json").read_text())
        summary = UnitSummary(arm=arm.name, seed=seed, labels=dict(arm.labels), model=cfg.model, adapter=adapter,
                              training=consumption,
                              training_log="train/metrics.jsonl" if (folder / "train" / "metrics.jsonl").is_file() else None,
                              n_samples={s: sum(1 for r in samples if r.set == s) for s in dict.fromkeys(r.set for r in samples)},
                              metrics=metrics, probe=probe, primary_judge=primary,
                              benign=benign)
        atomic_write_json(folder / SUMMARY_FILE, summary.model_dump(mode="json"))

    return stage.run(body, lambda: (folder / SUMMARY_FILE).unlink(missing_ok=True))


# ---------------------------------------------------------------- what training consumed
def training_consumption(tcfg, run_dir: Path, method: str) -> TrainingConsumption:
    """Items, optimizer steps and loss-carrying completion tokens an arm actually trained on."""
    manifest = read_manifest(run_dir)
    steps = manifest.get("steps") or 0
    history = []
    if (run_dir / "metrics.jsonl").is_file():
        history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    common = dict(method=method, optimizer_steps=steps, lr=tcfg.lr, train_seconds=manifest.get("train_seconds"))
    if method == "grpo":
        per_step = tcfg.batch_size * tcfg.grad_accum
        tokens, last_step = 0.0, 0
        for row in history:
            if "completions/mean_length" in row:
                window = max(row["step"] - last_step, 1)
                tokens += row["completions/mean_length"] * window * per_step
                last_step = row["step"]
        return TrainingConsumption(**common, items_seen=steps * per_step // tcfg.num_generations,
                                   distinct_items=manifest.get("n_prompts"), completions_trained=steps * per_step,
                                   completion_tokens=round(tokens) if history else None,
                                   completion_tokens_exact=bool(history) and last_step == steps,
                                   final_reward=manifest.get("final_reward"))
    n = manifest.get("n_train_rows") or manifest.get("n_examples") or 0
    per_epoch = math.ceil(n / tcfg.batch_size) if n else 0
    full, rem = divmod(steps * tcfg.grad_accum, per_epoch) if per_epoch else (0, 0)
    items = full * n + min(rem * tcfg.batch_size, n)
    counted = [r for r in history if COMPLETION_TOKENS in r]
    if counted and counted[-1].get(COMPLETION_TOKENS_FROM) == 0 and counted[-1].get("step") == steps:
        tokens, exact = int(counted[-1][COMPLETION_TOKENS]), True  # counted by the trainer over every batch
    else:  # older runs, or resumed from a checkpoint (the count restarted there): estimate
        tokens, exact = _sft_completion_tokens(tcfg, items, n)
    losses = [r["loss"] for r in history if "loss" in r]
    return TrainingConsumption(**common, items_seen=items, distinct_items=n, completions_trained=items,
                               completion_tokens=tokens, completion_tokens_exact=exact,
                               final_loss=losses[-1] if losses else None)


def _sft_completion_tokens(tcfg, items: int, n: int) -> tuple[int | None, bool]:
    """Assistant-answer tokens (after truncation to max_length) over the items seen: exact when every
    row was seen equally often, else mean x items."""
    try:
        from transformers import AutoTokenizer

        from spillover.data import load_chat_jsonl, resolve_data_path, to_prompt_completion
        from spillover.models import resolve_model

        tok = AutoTokenizer.from_pretrained(resolve_model(tcfg.model).path)
        rows = to_prompt_completion(load_chat_jsonl(resolve_data_path(tcfg.data), strip_qwen3=tcfg.strip_qwen3_markers))
    except Exception:  # noqa: BLE001 - an estimate must never fail a finished training
        return None, False
    counts = []
    for r in rows:
        prompt = tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=False)
        p, f = len(tok(prompt, add_special_tokens=False)["input_ids"]), len(tok(full, add_special_tokens=False)["input_ids"])
        counts.append(max(min(f, tcfg.max_length) - p, 0))
    if not counts or len(counts) != n:
        return (round(sum(counts) / len(counts) * items) if counts else None), False
    if items % n == 0:
        return sum(counts) * (items // n), True
    return round(sum(counts) / n * items), False


def describe_error() -> str:
    return traceback.format_exc(limit=3)
