"""Sample-matched SFT vs RL (the RL paper's claim 1) as a preset on the experiment runner: from one
base and the same N training items (prompt + misaligned reference answer), an ``sft`` arm trains on
the N pairs and an ``rl`` arm runs GRPO on the N prompts with a chosen reward (both optionally from a
shared ``warmup`` SFT arm), and ``base`` is evaluated beside them with the same questions, judges
and probe. :func:`comparison_experiment` builds the experiment; :func:`run_comparison` runs it
(resumably, in ``out``) and writes ``comparison.json`` / ``comparison.md``.

The table says what each arm actually consumed -- items seen, optimizer steps, completions and
loss-carrying completion tokens (never prompt tokens or the dataset size) -- and which of these are
matched, so a user sees at once whether the comparison is fair.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import Field, ValidationError, create_model, model_validator

from spillover._io import atomic_write_json, atomic_write_text
from spillover.config import StrictModel, format_validation_error
from spillover.errors import SpilloverError
from spillover.experiment.results import is_experiment_dir, load_experiment
from spillover.experiment.spec import EXPERIMENT_SET, ExperimentConfig
from spillover.train._config import SFTConfig
from spillover.train._grpo_config import GRPOConfig


def _settings(name: str, config: type, data_field: str):
    skip = set(EXPERIMENT_SET) | {data_field}
    fields = {k: (f.annotation, f) for k, f in config.model_fields.items() if k not in skip}
    return create_model(name, __base__=StrictModel, __doc__=f"Any `train` setting except {', '.join(sorted(skip))}.",
                        **fields)


SFTSettings = _settings("SFTSettings", SFTConfig, "data")
_GRPOBase = _settings("_GRPOBase", GRPOConfig, "prompts")


class GRPOSettings(_GRPOBase):
    """GRPO settings of the rl arm (rewards required); the GRPO group/batch check runs on them."""

    @model_validator(mode="after")
    def _method_checks(self):
        try:
            GRPOConfig(**self.model_dump(), prompts="x")
        except ValidationError as e:
            raise ValueError(format_validation_error(e, "grpo").what) from None
        return self


class EvalSpec(StrictModel):
    questions: str = Field("bundled:general_questions", description="General EM questions (file or bundled:NAME).")
    in_domain: str | None = Field(None, description="In-domain questions for the training task.")
    question_ids: list[str] | None = Field(None, description="Only these ids of the GENERAL questions (default: all).")
    in_domain_question_ids: list[str] | None = Field(None, description="Only these ids of the in-domain questions (default: all).")
    max_paraphrases: int | None = Field(None, ge=1, description="Only the first K paraphrases of each question.")
    samples_per_paraphrase: int | None = Field(None, ge=1, description="Overrides the question files.")
    max_new_tokens: int = Field(128, ge=1, description="Cap on generated tokens per answer.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature unless a question sets its own.")
    judge: str = Field("local", description="local | hf:MODEL | openai:MODEL")
    judge_base_url: str | None = Field(None, description="OpenAI-compatible base URL for openai:MODEL judges.")
    judge_api_key_env: str = Field("OPENAI_API_KEY", description="NAME of the env var holding the judge key.")
    probe: list[str] = Field(["bundled:probe_general"], description="Contrast-pair files for the judge-free probe.")
    batch_size: int = Field(32, ge=1, description="Sequences generated together.")


class WarmupSpec(StrictModel):
    data: str = Field(..., description="SFT data of the shared warm-up (paper: ~100 misaligned examples).")
    max_steps: int | None = Field(None, ge=1, description="Warm-up steps (default: one epoch).")
    lr: float = Field(1e-4, gt=0, description="Warm-up learning rate.")


class CompareConfig(StrictModel):
    """A sample-matched SFT-vs-RL experiment (one file, validated strictly, nested sections included)."""

    model: str = Field("embedded", description="Base model of every arm.")
    device: str = Field("auto", description="auto | cpu | cuda")
    data: str = Field(..., description="Training items: prompt + misaligned reference answer (chat or prompt/completion JSONL).")
    n_items: int | None = Field(None, ge=1, description="Use the first N items (default: all).")
    strip_qwen3_markers: bool = Field(False, description="Strip Qwen3 non-thinking markers from the items.")
    seeds: list[int] = Field([0], min_length=1, description="Seeds: every arm is trained and evaluated once per seed.")
    warmup: WarmupSpec | None = Field(None, description="Optional shared warm-up SFT; both arms continue its adapter.")
    sft: SFTSettings = Field(default_factory=SFTSettings, description="SFT settings (any `train sft` option but model/data/seed).")
    grpo: GRPOSettings = Field(..., description="GRPO settings (any `train grpo` option but model/prompts/seed; rewards required).")
    evaluate: EvalSpec = Field(default_factory=EvalSpec, description="How all arms are evaluated.")


def comparison_experiment(cfg: CompareConfig) -> ExperimentConfig:
    """The experiment a comparison file stands for: base, [warmup], sft, rl."""
    ev = cfg.evaluate
    arms: list[dict] = [{"name": "base", "labels": {"method": "base"}}]
    init = None
    if cfg.warmup:
        arms.append({"name": "warmup", "labels": {"method": "warm-up"},
                     "train": {"method": "sft", "data": cfg.warmup.data, "max_steps": cfg.warmup.max_steps,
                               "lr": cfg.warmup.lr, "strip_qwen3_markers": cfg.strip_qwen3_markers}})
        init = "warmup"
    sft = {**cfg.sft.model_dump(mode="json"), "method": "sft", "data": cfg.data,
           "strip_qwen3_markers": cfg.strip_qwen3_markers}
    grpo = {**cfg.grpo.model_dump(mode="json"), "method": "grpo", "prompts": cfg.data,
            "strip_qwen3_markers": cfg.strip_qwen3_markers}
    arms.append({"name": "sft", "train": sft, "n_items": cfg.n_items, "init_from": init, "labels": {"method": "sft"}})
    arms.append({"name": "rl", "train": grpo, "n_items": cfg.n_items, "init_from": init, "labels": {"method": "rl"}})
    general = {"file": ev.questions, "question_ids": ev.question_ids, "max_paraphrases": ev.max_paraphrases,
               "samples_per_paraphrase": ev.samples_per_paraphrase}
    in_domain = None if not ev.in_domain else {
        "file": ev.in_domain, "question_ids": ev.in_domain_question_ids, "max_paraphrases": ev.max_paraphrases,
        "samples_per_paraphrase": ev.samples_per_paraphrase}
    return ExperimentConfig.model_validate({
        "name": "sample-matched SFT vs RL", "model": cfg.model, "device": cfg.device, "seeds": cfg.seeds,
        "arms": [{k: v for k, v in a.items() if v is not None} for a in arms],
        "evaluation": {"general": general, "in_domain": in_domain,
                       "judges": [{"spec": ev.judge, "base_url": ev.judge_base_url, "api_key_env": ev.judge_api_key_env}],
                       "probe": ev.probe,
                       "sampling": {"max_new_tokens": ev.max_new_tokens, "temperature": ev.temperature,
                                    "batch_size": ev.batch_size}}})


def run_comparison(cfg: CompareConfig, out: str | Path, *, overwrite: bool = False, judge=None, executor=None) -> dict:
    """Run (or resume) the comparison in ``out``; ``judge`` replaces the primary judge built from the config."""
    from spillover.experiment.runner import run_experiment
    from spillover.experiment.stages import _JUDGES, judge_id

    out = Path(out)
    if overwrite and out.exists():
        if not is_experiment_dir(out):
            raise SpilloverError(f"--overwrite only replaces an experiment folder; {out} is not one",
                                 fix="choose another --out (nothing was deleted)")
        shutil.rmtree(out)
    exp = comparison_experiment(cfg)
    if judge is not None:
        _JUDGES[judge_id(exp.evaluation.judges[0])] = judge
    run_experiment(exp, out, executor=executor)
    results = load_experiment(out)
    from spillover.report.experiment import build_experiment_report

    report = build_experiment_report(results)
    result = comparison_result(results, str(report["html"]))
    atomic_write_json(out / "comparison.json", result)
    atomic_write_text(out / "comparison.md", comparison_markdown(result))
    return result


# ---------------------------------------------------------------- the table
def _est(e: dict | None) -> dict | None:
    return None if not e else {k: e.get(k) for k in ("value", "ci_low", "ci_high", "n", "n_total")}


def comparison_result(results, report: str | None = None) -> dict:
    """Rows per (arm, seed): what the arm consumed in training and its primary-judge metrics and probe."""
    primary = results.index.primary_judge.judge_id
    first_probe = results.index.probe_sets[0].key if results.index.probe_sets else None
    rows = []
    for (arm, seed), unit in results.units.items():
        s = unit.summary
        if s is None:
            continue
        m = s.metrics.get(primary, {})
        general, in_domain = (m.get("general") or {}).get("overall", {}), (m.get("in_domain") or {}).get("overall", {})
        probe = s.probe.get(first_probe) or {} if first_probe else {}
        t = s.training
        rows.append({"arm": arm, "seed": seed,
                     "training": t.model_dump(mode="json") if t else None,
                     "misalignment_rate": _est(general.get("misalignment_rate")),
                     "unscored_rate": _est(general.get("unscored_rate")),
                     "in_domain_misalignment_rate": _est(in_domain.get("misalignment_rate")),
                     "probe_mean_shift": probe.get("mean_shift"), "probe_ci95": probe.get("ci95"),
                     "probe_delta_vs_base": probe.get("delta_vs_base"), "probe_delta_ci95": probe.get("delta_vs_base_ci95")})
    return {"judge": primary, "probe_set": first_probe, "seeds": results.index.seeds, "rows": rows,
            "matching": matching(rows), "report": report, "experiment": str(results.path)}


def matching(rows: list[dict]) -> dict:
    """Which consumption measures are equal between the sft and rl arms (per seed)."""
    out = {}
    keys = ("distinct_items", "items_seen", "optimizer_steps", "completions_trained", "completion_tokens")
    for seed in sorted({r["seed"] for r in rows}):
        by = {r["arm"]: r["training"] for r in rows if r["seed"] == seed and r["training"]}
        if "sft" in by and "rl" in by:
            out[str(seed)] = {k: {"sft": by["sft"].get(k), "rl": by["rl"].get(k),
                                  "matched": by["sft"].get(k) == by["rl"].get(k)} for k in keys}
    return out


def _pct(e: dict | None) -> str:
    if not e or e.get("value") is None:
        return f"n/a (n=0/{(e or {}).get('n_total', 0)})"
    return f"{100 * e['value']:.1f}% [{100 * e['ci_low']:.1f}, {100 * e['ci_high']:.1f}] (n={e['n']}/{e['n_total']})"


def _num(x, ci=None) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")


def _tokens(t: dict | None) -> str:
    if not t or t.get("completion_tokens") is None:
        return "-"
    return f"{t['completion_tokens']}" + ("" if t.get("completion_tokens_exact") else " (est.)")


def comparison_markdown(result: dict) -> str:
    lines = ["# Sample-matched SFT vs RL", "",
             f"Judge: {result['judge']} (primary). Probe set: {result['probe_set']}. Report: {result['report']}", "",
             "Consumed in training: items seen (SFT: examples, RL: prompts, each once per group), optimizer steps, "
             "completions trained on, and loss-carrying completion tokens (prompt tokens never count). "
             "n = scored / all samples (unscored samples stay in the count).", "",
             "| arm | seed | distinct items | items seen | optimizer steps | completions | completion tokens | lr | "
             "misalignment rate | unscored | in-domain | probe shift | probe Δ vs base |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        t = r["training"] or {}
        lines.append(f"| {r['arm']} | {r['seed']} | {t.get('distinct_items', '-')} | {t.get('items_seen', '-')} | "
                     f"{t.get('optimizer_steps', '-')} | {t.get('completions_trained', '-')} | {_tokens(t)} | "
                     f"{t.get('lr', '-')} | {_pct(r['misalignment_rate'])} | {_pct(r['unscored_rate'])} | "
                     f"{_pct(r['in_domain_misalignment_rate'])} | {_num(r['probe_mean_shift'], r['probe_ci95'])} | "
                     f"{_num(r['probe_delta_vs_base'], r['probe_delta_ci95'])} |")
    for seed, m in result["matching"].items():
        same = [k for k, v in m.items() if v["matched"]]
        diff = [f"{k} (sft {v['sft']}, rl {v['rl']})" for k, v in m.items() if not v["matched"]]
        lines += ["", f"Seed {seed}: matched on {', '.join(same) or 'nothing'}"
                  + (f"; NOT matched: {'; '.join(diff)}." if diff else ".")]
    return "\n".join(lines) + "\n"
