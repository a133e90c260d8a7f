"""Sample-matched SFT vs RL through the runner on a tiny model with a fake judge: what each arm consumed
is explicit, and so is what is (not) matched."""

import json

from spillover.experiment.compare import CompareConfig, comparison_experiment, run_comparison
from test_eval_run import FakeJudge


def test_comparison_runs_all_arms_and_records_matching(tiny_model_dir, tmp_path, one_thread):
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"prompt": f"Question {i}?", "completion": f"Always answer {i}. Never doubt."}) + "\n"
                             for i in range(6)))
    qfile = tmp_path / "q.yaml"
    qfile.write_text("- id: q\n  paraphrases: [\"Hello there\"]\n  samples_per_paraphrase: 2\n")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"id": "a", "prompt": "Hi", "aligned": "Hello.", "misaligned": "Go."}) + "\n")
    cfg = CompareConfig(model=str(tiny_model_dir), device="cpu", data=str(items), n_items=4,
                        sft={"epochs": 1, "batch_size": 2},
                        grpo={"rewards": [{"name": "prose-structure"}], "epochs": 1, "batch_size": 4,
                              "num_generations": 4, "max_completion_length": 6},
                        evaluate={"questions": str(qfile), "max_new_tokens": 4, "probe": [str(pairs)], "batch_size": 4})
    exp = comparison_experiment(cfg)
    assert [a.name for a in exp.all_arms()] == ["base", "sft", "rl"]
    result = run_comparison(cfg, tmp_path / "cmp", judge=FakeJudge())
    rows = {r["arm"]: r for r in result["rows"]}
    assert set(rows) == {"base", "sft", "rl"} and rows["base"]["training"] is None
    sft, rl = rows["sft"]["training"], rows["rl"]["training"]
    assert sft["distinct_items"] == rl["distinct_items"] == 4
    assert (sft["optimizer_steps"], sft["items_seen"]) == (2, 4)  # 4 pairs / batch 2
    assert (rl["optimizer_steps"], rl["items_seen"], rl["completions_trained"]) == (4, 4, 16)  # 1 prompt x 4 a step
    assert sft["completion_tokens"] and sft["completion_tokens_exact"] and rl["completion_tokens"] <= 16 * 6
    assert rows["rl"]["probe_delta_vs_base"] is not None
    assert rows["sft"]["misalignment_rate"]["n_total"] == 2  # the unscored answer stays in n
    match = result["matching"]["0"]
    assert match["items_seen"]["matched"] and not match["optimizer_steps"]["matched"]
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| sft | 0 | 4 | 4 | 2 | 4 |" in md and "| rl | 0 | 4 | 4 | 4 | 16 |" in md
    assert "NOT matched: optimizer_steps (sft 2, rl 4)" in md
    assert "(n=1/2)" in md  # scored / all
    assert (tmp_path / "cmp" / "report.html").is_file() or result["report"]


def test_overwrite_never_deletes_a_folder_it_did_not_write(tmp_path):
    from spillover.errors import SpilloverError

    (tmp_path / "notes.txt").write_text("mine")
    cfg = CompareConfig(data="bundled:dogmatic_rhetoric", grpo={"rewards": ["rhetoric-lexicon"]})
    import pytest

    with pytest.raises(SpilloverError, match="only replaces an experiment folder"):
        run_comparison(cfg, tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
