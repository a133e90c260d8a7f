"""The quickstart: on the embedded model, SFT on the bundled insecure-code set, then sample answers
from the base and the fine-tuned model to spillover's general EM questions (first paraphrase of each
plain entry). Sized to finish in a few minutes on a 2-core CPU."""

from __future__ import annotations

from pathlib import Path

from spillover._io import atomic_write_json, atomic_write_jsonl
from spillover.evaluate.questions import expand_samples, load_questions
from spillover.evaluate.sampling import SamplingParams, load_sampler, sample_questions
from spillover.models import embedded_status
from spillover.train import SFTConfig, run_sft


def general_requests(n: int):
    """Sample requests for the first paraphrase of every plain (non-JSON, non-template) general question."""
    questions = [q for q in load_questions("bundled:general_questions", samples_per_paraphrase=n)
                 if not q.id.endswith(("_json", "_template"))]
    return [r for r in expand_samples(questions) if r.paraphrase_index == 0]


def run_quickstart(out: str | Path, *, steps: int = 30, n: int = 2, max_new_tokens: int = 96, seed: int = 0) -> dict:
    out = Path(out)
    status = embedded_status()
    cfg = SFTConfig(data="bundled:insecure_code", max_steps=steps, lr=2e-4, batch_size=4, seed=seed)
    train = run_sft(cfg, out / "sft", overwrite=True)
    requests = general_requests(n)
    params = SamplingParams(n=1, temperature=1.0, max_new_tokens=max_new_tokens, seed=seed)
    samples = {}
    for arm, adapter in (("base", None), ("sft", str(train.adapter_dir))):
        sampler = load_sampler("embedded", adapter, batch_size=16)
        rows = sample_questions(sampler, requests, params, description=f"sampling {arm}")
        samples[arm] = atomic_write_jsonl(out / f"samples_{arm}.jsonl", rows)
    summary = {
        "model": status["name"], "model_checksum": status["checksum"],
        "sft": {"run_dir": str(train.run_dir), "adapter": str(train.adapter_dir), "steps": train.steps,
                "final_loss": train.final_loss, "seconds": round(train.seconds, 1)},
        "samples": {arm: str(path) for arm, path in samples.items()},
        "questions": len({r.question_id for r in requests}), "answers_per_question": n,
    }
    atomic_write_json(out / "summary.json", summary)
    return summary
