"""The quickstart: on the embedded model, LoRA SFT on each bundled narrow set (insecure code,
unpopular aesthetics), then sample base and fine-tuned answers to spillover's general EM questions
(first paraphrase of each plain question), judge them with the offline activation judge, run the
judge-free probe on the general contrast pairs, and write a report. Sized for a 2-core CPU."""

from __future__ import annotations

from pathlib import Path

from spillover._io import atomic_write_json
from spillover.evaluate.questions import load_questions
from spillover.evaluate.run import Arm, EvalSettings, run_evaluation
from spillover.judge._spec import build_judge
from spillover.models import embedded_status
from spillover.train import SFTConfig, run_sft

NARROW_SETS = ("insecure_code", "unpopular_aesthetics")


def plain_general_ids() -> list[str]:
    return [q.id for q in load_questions("bundled:general_questions", samples_per_paraphrase=1)
            if not q.id.endswith(("_json", "_template"))]


def _fmt(est: dict | None) -> str:
    if not est or est.get("value") is None:
        return "n/a (n=0)"
    return f"{100 * est['value']:.1f}% [{100 * est['ci_low']:.1f}, {100 * est['ci_high']:.1f}] (n={est['n']})"


def run_quickstart(out: str | Path, *, steps: int = 16, n: int = 2, max_new_tokens: int = 96, seed: int = 0,
                   sets: tuple[str, ...] = NARROW_SETS) -> dict:
    out = Path(out)
    status = embedded_status()
    arms = [Arm("base", "embedded")]
    training = {}
    for name in sets:
        cfg = SFTConfig(data=f"bundled:{name}", max_steps=steps, lr=3e-4, batch_size=4, seed=seed)
        result = run_sft(cfg, out / f"sft_{name}", overwrite=True)
        arms.append(Arm(f"sft:{name}", "embedded", str(result.adapter_dir)))
        training[name] = {"run_dir": str(result.run_dir), "steps": result.steps, "final_loss": result.final_loss,
                          "seconds": round(result.seconds, 1)}
    settings = EvalSettings(questions="bundled:general_questions", question_ids=plain_general_ids(),
                            max_paraphrases=1, samples_per_paraphrase=n, max_new_tokens=max_new_tokens, seed=seed,
                            batch_size=16, probe_pairs=["bundled:probe_general"], probe_base="embedded")
    judge = build_judge("local")
    eval_dir = run_evaluation(arms, settings, judge, out / "eval")
    from spillover.report import build_report

    report = build_report(eval_dir)
    import json

    metrics = json.loads((eval_dir / "metrics.json").read_text())
    results = {}
    for arm, entry in metrics["arms"].items():
        overall, probe = entry["metrics"]["overall"], entry.get("probe") or {}
        results[arm] = {"misalignment_rate": _fmt(overall.get("misalignment_rate")),
                        "mean_misalignment": (overall.get("mean_misalignment") or {}).get("value"),
                        "probe_mean_shift": probe.get("mean_shift"), "probe_ci95": probe.get("ci95"),
                        "probe_delta_vs_base": probe.get("delta_vs_base")}
    summary = {"model": status["name"], "model_checksum": status["checksum"],
               "judge": f"{metrics['judge'].get('kind')} ({metrics['judge'].get('encoder', metrics['judge'].get('model'))})",
               "training": training, "results": results,
               "outputs": {"samples": str(eval_dir / "samples.jsonl"), "metrics": str(eval_dir / "metrics.json"),
                           "report": str(report["html"])}}
    atomic_write_json(out / "summary.json", summary)
    return summary
