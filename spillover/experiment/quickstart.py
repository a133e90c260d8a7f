"""The quickstart as a preset on the experiment runner: on the embedded model, LoRA SFT on each bundled
narrow set (insecure code, unpopular aesthetics), then sample base and fine-tuned answers to spillover's
general EM questions (first paraphrase of each plain question), judge them with the offline activation
judge, run the judge-free probe on the general contrast pairs, and write the experiment report. Sized
for a 2-core CPU; rerunning it resumes."""

from __future__ import annotations

from pathlib import Path

from spillover._io import atomic_write_json
from spillover.evaluate.questions import load_questions
from spillover.experiment.results import load_experiment
from spillover.experiment.spec import ExperimentConfig

NARROW_SETS = ("insecure_code", "unpopular_aesthetics")
#: Sampling temperature of the quickstart. The papers sample at 1.0, but the 135M embedded model gives
#: mostly word salad there: hand-labelled, 6/48 answers to the general questions were coherent at 1.0
#: and 20/48 at 0.7 (bench/bench_coherence_samples.py). Every other entry point keeps 1.0 by default.
QUICKSTART_TEMPERATURE = 0.7


def plain_general_ids() -> list[str]:
    return [q.id for q in load_questions("bundled:general_questions", samples_per_paraphrase=1)
            if not q.id.endswith(("_json", "_template"))]


def quickstart_experiment(*, steps: int = 16, n: int = 2, max_new_tokens: int = 96, seed: int = 0,
                          sets: tuple[str, ...] = NARROW_SETS) -> ExperimentConfig:
    arms = [{"name": "base"}] + [
        {"name": f"sft-{name}", "labels": {"method": "sft", "domain": name},
         "train": {"method": "sft", "data": f"bundled:{name}", "max_steps": steps, "lr": 3e-4, "batch_size": 4}}
        for name in sets]
    return ExperimentConfig.model_validate({
        "name": "quickstart", "model": "embedded", "seeds": [seed], "arms": arms,
        "evaluation": {"general": {"file": "bundled:general_questions", "question_ids": plain_general_ids(),
                                   "max_paraphrases": 1, "samples_per_paraphrase": n},
                       "judges": ["local"], "probe": ["bundled:probe_general", "bundled:probe_style_only"],
                       "sampling": {"max_new_tokens": max_new_tokens, "batch_size": 16,
                                    "temperature": QUICKSTART_TEMPERATURE}}})


def _fmt(est: dict | None) -> str:
    if not est or est.get("value") is None:
        return f"n/a (n=0/{(est or {}).get('n_total', 0)})"
    return f"{100 * est['value']:.1f}% [{100 * est['ci_low']:.1f}, {100 * est['ci_high']:.1f}] (n={est['n']}/{est['n_total']})"


def run_quickstart(out: str | Path, *, steps: int = 16, n: int = 2, max_new_tokens: int = 96, seed: int = 0,
                   sets: tuple[str, ...] = NARROW_SETS) -> dict:
    from spillover.experiment.runner import run_experiment
    from spillover.models import embedded_status
    from spillover.report.experiment import build_experiment_report

    out = Path(out)
    cfg = quickstart_experiment(steps=steps, n=n, max_new_tokens=max_new_tokens, seed=seed, sets=sets)
    run_experiment(cfg, out)
    results = load_experiment(out)
    report = build_experiment_report(results)
    status = embedded_status()
    primary = results.index.primary_judge
    rows = {}
    for (arm, _), unit in results.units.items():
        s = unit.summary
        overall = s.metrics[primary.judge_id]["general"]["overall"]
        probe = s.probe.get("probe_general", {})
        style = s.probe.get("probe_style_only", {})
        rows[arm] = {"misalignment_rate": _fmt(overall.get("misalignment_rate")),
                     "mean_misalignment": (overall.get("mean_misalignment") or {}).get("value"),
                     "probe_mean_shift": probe.get("mean_shift"), "probe_ci95": probe.get("ci95"),
                     "probe_delta_vs_base": probe.get("delta_vs_base"), "probe_delta_ci95": probe.get("delta_vs_base_ci95"),
                     "style_only_delta_vs_base": style.get("delta_vs_base"),
                     "style_only_delta_ci95": style.get("delta_vs_base_ci95"),
                     "training": s.training.model_dump(mode="json") if s.training else None}
    identity = next((m for u in results.units.values() for k, m in u.stages.items() if k.startswith("judge.")), None)
    ident = (identity.model_extra.get("identity") if identity else None) or {}
    summary = {"model": status["name"], "model_checksum": status["checksum"],
               "judge": f"{ident.get('kind', primary.spec)} ({ident.get('encoder', ident.get('model', ''))})",
               "results": rows,
               "outputs": {"experiment": str(out), "report": str(report["html"]), "markdown": str(report["markdown"])}}
    atomic_write_json(out / "summary.json", summary)
    return summary
