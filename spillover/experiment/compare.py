"""Sample-matched SFT vs RL (the RL paper's claim 1): from one base and the same N training items
(prompt + misaligned reference answer), train SFT on the N pairs and GRPO on the N prompts with a
chosen reward (both optionally from one shared warm-up SFT adapter), then evaluate base, SFT and RL
with the same questions, judge and probe, and write one comparison table with CIs.

The matching is explicit in ``comparison.json``: items, optimizer steps, completions and tokens per arm.
Layout: ``out/items.jsonl`` (the N items), ``out/warmup/``, ``out/sft/``, ``out/rl/``, ``out/eval/``
(samples, metrics, report; arms base, warmup when set, sft, rl), ``out/comparison.json`` and
``comparison.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from spillover._io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from spillover._run import prepare_run_dir
from spillover.config import Section, StrictModel, dump_yaml
from spillover.data import load_chat_jsonl, require_sft_examples, resolve_data_path
from spillover.evaluate.run import Arm, EvalSettings, run_evaluation
from spillover.judge._spec import build_grader, build_judge
from spillover.train import SFTConfig, run_sft
from spillover.train._grpo_config import GRPOConfig
from spillover.train.grpo import run_grpo


class EvalSpec(StrictModel):
    questions: str = Field("bundled:general_questions", description="General EM questions (file or bundled:NAME).")
    in_domain: str | None = Field(None, description="In-domain questions for the training task.")
    question_ids: list[str] | None = Field(None, description="Only these question ids (default: all).")
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


_SET_BY_COMPARISON = ("model", "data", "prompts", "init_adapter", "device", "seed")


class CompareConfig(StrictModel):
    """A sample-matched SFT-vs-RL experiment (one file, validated strictly)."""

    model: str = Field("embedded", description="Base model of every arm.")
    device: str = Field("auto", description="auto | cpu | cuda")
    data: str = Field(..., description="Training items: prompt + misaligned reference answer (chat or prompt/completion JSONL).")
    n_items: int | None = Field(None, ge=1, description="Use the first N items (default: all).")
    strip_qwen3_markers: bool = Field(False, description="Strip Qwen3 non-thinking markers from the items.")
    seed: int = Field(0, description="Seed of training, sampling and bootstrap.")
    warmup: WarmupSpec | None = Field(None, description="Optional shared warm-up SFT; both arms continue its adapter.")
    sft: Annotated[dict[str, Any], Section(SFTConfig, fixed={"data": "x"}, reserved=_SET_BY_COMPARISON,
                                           owner="the comparison itself")] = Field(
        default_factory=dict, description="SFT settings (any `train sft` option but model/data).")
    grpo: Annotated[dict[str, Any], Section(GRPOConfig, fixed={"prompts": "x"}, reserved=_SET_BY_COMPARISON,
                                            owner="the comparison itself")] = Field(
        ..., description="GRPO settings (any `train grpo` option but model/prompts; rewards required).")
    evaluate: EvalSpec = Field(default_factory=EvalSpec, description="How all arms are evaluated.")


def _arm_stats(run_dir: Path, items: int | None) -> dict:
    m = json.loads((run_dir / "manifest.json").read_text())
    return {"items": items if items is not None else m.get("n_examples"), "optimizer_steps": m.get("steps"), "tokens_seen": m.get("tokens_seen"),
            "completions_sampled": m.get("completions_sampled"), "train_seconds": m.get("train_seconds")}


def run_comparison(cfg: CompareConfig, out: str | Path, *, overwrite: bool = False, grade=None, judge=None) -> dict:
    """Run both arms and the evaluation; ``grade``/``judge`` override the ones built from the config."""
    out = prepare_run_dir(out, overwrite=overwrite)
    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    examples = load_chat_jsonl(resolve_data_path(cfg.data), strip_qwen3=cfg.strip_qwen3_markers)
    require_sft_examples(examples)
    examples = examples[: cfg.n_items] if cfg.n_items else examples
    items = atomic_write_jsonl(out / "items.jsonl", [{"messages": ex.messages} for ex in examples])

    common = {"model": cfg.model, "device": cfg.device, "seed": cfg.seed}
    init = None
    if cfg.warmup:
        warm = run_sft(SFTConfig(**common, data=cfg.warmup.data, max_steps=cfg.warmup.max_steps, lr=cfg.warmup.lr),
                       out / "warmup")
        init = str(warm.adapter_dir)
    sft = run_sft(SFTConfig(**{**cfg.sft, **common, "data": str(items), "init_adapter": init}), out / "sft")
    if grade is None and any(str(r.get("name", "")).startswith("grader:") for r in cfg.grpo.get("rewards", [])):
        grade = build_grader(cfg.evaluate.judge, base_url=cfg.evaluate.judge_base_url,
                             api_key_env=cfg.evaluate.judge_api_key_env)
    rl = run_grpo(GRPOConfig(**{**cfg.grpo, **common, "prompts": str(items), "init_adapter": init}), out / "rl",
                  grade=grade)

    ev = cfg.evaluate
    settings = EvalSettings(questions=ev.questions, in_domain=ev.in_domain, samples_per_paraphrase=ev.samples_per_paraphrase,
                            question_ids=ev.question_ids, max_paraphrases=ev.max_paraphrases,
                            max_new_tokens=ev.max_new_tokens, temperature=ev.temperature, seed=cfg.seed,
                            batch_size=ev.batch_size, probe_pairs=list(ev.probe), probe_base=cfg.model,
                            device=cfg.device)
    judge = judge or build_judge(ev.judge, base_url=ev.judge_base_url, api_key_env=ev.judge_api_key_env,
                                 cache_dir=str(out / "judge_cache"), device=cfg.device)
    arms = [Arm("base", cfg.model)] + ([Arm("warmup", cfg.model, init)] if init else []) + \
        [Arm("sft", cfg.model, str(sft.adapter_dir)), Arm("rl", cfg.model, str(rl.adapter_dir))]
    eval_dir = run_evaluation(arms, settings, judge, out / "eval")
    from spillover.report import build_report

    report = build_report(eval_dir)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    training = {"sft": _arm_stats(sft.run_dir, len(examples)), "rl": _arm_stats(rl.run_dir, len(examples))}
    if cfg.warmup:
        training["warmup"] = _arm_stats(out / "warmup", None)
    table = comparison_table(metrics, training)
    result = {"matching": training, "arms": table, "judge": metrics["judge"].get("kind"),
              "report": str(report["html"]), "eval_dir": str(eval_dir)}
    atomic_write_json(out / "comparison.json", result)
    atomic_write_text(out / "comparison.md", comparison_markdown(result))
    return result


def _est(e: dict | None) -> dict | None:
    return None if not e else {k: e.get(k) for k in ("value", "ci_low", "ci_high", "n")}


def comparison_table(metrics: dict, training: dict) -> dict:
    rows = {}
    for arm, entry in metrics["arms"].items():
        overall = entry["metrics"]["overall"]
        probe = entry.get("probe") or {}
        rows[arm] = {"misalignment_rate": _est(overall.get("misalignment_rate")),
                     "mean_misalignment": _est(overall.get("mean_misalignment")),
                     "in_domain_misalignment_rate": _est((entry.get("in_domain") or {}).get("overall", {}).get("misalignment_rate")),
                     "probe_mean_shift": probe.get("mean_shift"), "probe_ci95": probe.get("ci95"),
                     "probe_delta_vs_base": probe.get("delta_vs_base"), "probe_delta_ci95": probe.get("delta_vs_base_ci95"),
                     **training.get(arm, {})}
    return rows


def _pct(e: dict | None) -> str:
    if not e or e.get("value") is None:
        return "n/a (n=0)"
    return f"{100 * e['value']:.1f}% [{100 * e['ci_low']:.1f}, {100 * e['ci_high']:.1f}] (n={e['n']})"


def _num(x, ci=None) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")


def comparison_markdown(result: dict) -> str:
    lines = ["# Sample-matched SFT vs RL", "", f"Judge: {result['judge']}. Report: {result['report']}", "",
             "| arm | items | optimizer steps | tokens seen | misalignment rate | in-domain | probe shift | probe Δ vs base |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, r in result["arms"].items():
        lines.append(f"| {arm} | {r.get('items', '-')} | {r.get('optimizer_steps', '-')} | {r.get('tokens_seen') or '-'} | "
                     f"{_pct(r['misalignment_rate'])} | {_pct(r['in_domain_misalignment_rate'])} | "
                     f"{_num(r['probe_mean_shift'], r['probe_ci95'])} | {_num(r['probe_delta_vs_base'], r['probe_delta_ci95'])} |")
    return "\n".join(lines) + "\n"
