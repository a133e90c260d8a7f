"""Sample-matched SFT vs RL end to end on a tiny model with a fake judge: matching is explicit."""

import json

from spillover.experiment.compare import CompareConfig, run_comparison
from test_eval_run import FakeJudge


def test_comparison_runs_all_arms_and_records_matching(tiny_model_dir, tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"prompt": f"Question {i}?", "completion": f"Always answer {i}. Never doubt."}) + "\n"
                             for i in range(6)))
    qfile = tmp_path / "q.yaml"
    qfile.write_text("- id: q\n  paraphrases: [\"Hello there\"]\n  samples_per_paraphrase: 1\n")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"id": "a", "prompt": "Hi", "aligned": "Hello.", "misaligned": "Go."}) + "\n")
    cfg = CompareConfig(model=str(tiny_model_dir), device="cpu", data=str(items), n_items=4,
                        sft={"epochs": 1, "batch_size": 2},
                        grpo={"rewards": [{"name": "prose-structure"}], "epochs": 1, "batch_size": 4,
                              "num_generations": 4, "max_completion_length": 6},
                        evaluate={"questions": str(qfile), "max_new_tokens": 4, "probe": [str(pairs)], "batch_size": 4})
    result = run_comparison(cfg, tmp_path / "cmp", judge=FakeJudge())
    assert set(result["arms"]) == {"base", "sft", "rl"}
    sft, rl = result["matching"]["sft"], result["matching"]["rl"]
    assert sft["items"] == rl["items"] == 4
    assert sft["optimizer_steps"] == 2  # 4 pairs / batch 2
    assert rl["optimizer_steps"] == 4 and rl["completions_sampled"] == 16  # 4 prompts x 4 completions, 1 per step
    assert sft["tokens_seen"] and rl["tokens_seen"]
    assert len((tmp_path / "cmp" / "items.jsonl").read_text().splitlines()) == 4
    assert result["arms"]["rl"]["probe_delta_vs_base"] is not None
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| sft | 4 | 2 |" in md and "| rl | 4 | 4 |" in md
    assert (tmp_path / "cmp" / "eval" / "report.html").is_file()
