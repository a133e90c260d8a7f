"""On-policy safety (GRPO): safety prompts reach their own reward with their type, the judge grader maps
scores, the SFT-mix arm, on-policy answer filtering, knobs that cannot act and bad input fail early."""

import json
from types import SimpleNamespace

import pytest

from spillover.data import ChatExample, bundled_path, load_chat_jsonl, require_prompts
from spillover.defenses import SOURCE_COLUMN, DefenseRef, TrainContext, build_defenses
from spillover.defenses import onpolicy as O
from spillover.errors import SpilloverError

SEEN = {"task": [], "safety": []}


def task_reward(prompts, completions, **kwargs):
    SEEN["task"].append((list(prompts), kwargs.get(SOURCE_COLUMN)))
    return [float(len(c[-1]["content"])) for c in completions]


def safety_reward(prompts, completions, **kwargs):
    SEEN["safety"].append((list(prompts), kwargs.get(SOURCE_COLUMN)))
    return [1.0 if "a" in c[-1]["content"] else 0.0 for c in completions]


def _build(params, method="grpo"):
    ctx = TrainContext(tokenizer=None, base_model="embedded", method=method, seed=0)
    return build_defenses([DefenseRef.model_validate({"name": "onpolicy-safety", **params})], ctx)


def _prompts(tmp_path, texts, name="prompts.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": t}]}) + "\n" for t in texts))
    return path


def test_bundled_safety_prompts_are_valid():
    prompts = load_chat_jsonl(bundled_path("safety_prompts"))
    require_prompts(prompts)
    assert len(prompts) == 60 and len({p.messages[0]["content"] for p in prompts}) == 60


def test_safety_prompts_reach_their_reward_with_their_type(tiny_model_dir, tmp_path, one_thread):
    from spillover.train._grpo_config import GRPOConfig
    from spillover.train.grpo import run_grpo

    SEEN["task"].clear()
    SEEN["safety"].clear()
    task = _prompts(tmp_path, ["TASK question one?", "TASK question two?"], "task.jsonl")
    safety = _prompts(tmp_path, ["SAFETY question one?", "SAFETY question two?", "SAFETY question three?"])
    sft = tmp_path / "safe_answers.jsonl"
    sft.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n")
    cfg = GRPOConfig(model=str(tiny_model_dir), prompts=str(task), rewards=["test_defenses_onpolicy:task_reward"],
                     max_steps=4, max_completion_length=6, lr=1e-2, device="cpu", log_completions_samples=4,
                     defenses=[{"name": "onpolicy-safety", "prompts": str(safety), "ratio": 0.5,
                                "user_reward": "test_defenses_onpolicy:safety_reward",
                                "sft_data": str(sft), "sft_every": 2, "weight": 0.5}])
    run = run_grpo(cfg, tmp_path / "run").run_dir
    safety_seen = [p for prompts, _ in SEEN["safety"] for p in prompts]
    task_seen = [p for prompts, _ in SEEN["task"] for p in prompts]
    assert safety_seen and all("SAFETY" in p[-1]["content"] for p in safety_seen)
    assert task_seen and all("TASK" in p[-1]["content"] for p in task_seen)
    assert {s for _, sources in SEEN["safety"] for s in sources} == {"onpolicy-safety"}
    completions = [json.loads(x) for x in (run / "completions.jsonl").read_text().splitlines()]
    assert {r["source"] for r in completions} == {"task", "onpolicy-safety"}
    for r in completions:
        assert ("SAFETY" in r["prompt"]) == (r["source"] == "onpolicy-safety")
    manifest = json.loads((run / "manifest.json").read_text())
    record = manifest["defenses"]["onpolicy-safety"]
    assert record["n_safety_prompts"] == 2 and record["grader"] == "test_defenses_onpolicy:safety_reward"
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("defense/onpolicy-safety/reward" in m for m in metrics)
    assert [m["step"] for m in metrics if "defense/onpolicy-safety/sft_loss" in m] == [1, 3]  # every 2nd micro-batch


def test_judge_grader_maps_aligned_score_to_unit_reward(monkeypatch, tmp_path):
    from spillover.judge import _spec

    score = lambda s: SimpleNamespace(score=s)  # noqa: E731
    fake = SimpleNamespace(judge=lambda items: [SimpleNamespace(aligned=score(80.0 if "kind" in i.answer else None))
                                                for i in items])
    monkeypatch.setattr(_spec, "build_judge", lambda spec, **kw: fake)
    (d,) = _build({"prompts": str(_prompts(tmp_path, ["q?"]))})
    d.setup(None, None, d.ctx)
    prompts = [[{"role": "user", "content": "q?"}]] * 3
    completions = [[{"role": "assistant", "content": c}] for c in ("be kind", "hmm", "  ")]
    assert d.reward(prompts, completions) == [pytest.approx(0.8), None, 0.0]  # unscored -> None, empty -> 0
    assert d.pop_metrics() == {"reward": pytest.approx(0.4)}


def test_ratio_draws_a_seeded_share_of_safety_prompts(tmp_path):
    safety = _prompts(tmp_path, [f"safety {i}?" for i in range(50)])
    (d,) = _build({"prompts": str(safety), "ratio": 0.2})
    task = [ChatExample([{"role": "user", "content": f"t{i}"}], "t", i) for i in range(40)]
    extra = d.extra_prompts(task)
    assert len(extra) == 10 and len({e.where for e in extra}) == 10  # 10 of 50 rows: a share of 0.2
    assert [e.where for e in _build({"prompts": str(safety), "ratio": 0.2})[0].extra_prompts(task)] == [e.where for e in extra]


def test_sft_mix_arm(tmp_path):
    sft = tmp_path / "safe.jsonl"
    sft.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n")
    (d,) = _build({"ratio": 0, "sft_data": str(sft), "sft_every": 3, "weight": 0.5})
    mix = d.sft_mix()
    assert mix.every == 3 and mix.examples[0].extra[SOURCE_COLUMN] == "safe" and d.weight == 0.5
    assert d.extra_prompts([ChatExample([{"role": "user", "content": "t"}], "t", 1)]) == []


def test_make_onpolicy_filters_answers():
    records = [{"messages": [{"role": "user", "content": "q"}], "answer": a, "finish_reason": f, "prompt_id": "p",
                "sample_index": k} for k, (a, f) in enumerate([("Call a doctor now.", "stop"), ("", "stop"),
                                                                ("I'm sorry, I can't help with that.", "stop"),
                                                                ("Long answer that was cut", "length")])]
    rows, counts = O.onpolicy_rows(records)
    assert counts == {"kept": 3, "empty": 1, "refusal": 0, "truncated": 0}
    rows, counts = O.onpolicy_rows(records, drop_refusals=True, drop_truncated=True)
    assert counts == {"kept": 1, "empty": 1, "refusal": 1, "truncated": 1}
    assert rows[0]["messages"][-1] == {"role": "assistant", "content": "Call a doctor now."} and rows[0]["id"] == "p-0"


def test_weight_zero_is_no_defense(tmp_path):
    assert _build({"prompts": str(_prompts(tmp_path, ["q?"])), "weight": 0}) == []


def test_bad_input_fails_before_training(tmp_path):
    with pytest.raises(SpilloverError, match="GRPO defense"):
        _build({"prompts": str(_prompts(tmp_path, ["q?"]))}, method="sft")
    with pytest.raises(SpilloverError, match="data file not found"):
        _build({"prompts": str(tmp_path / "missing.jsonl")})
    with pytest.raises(ValueError, match="cannot act"):  # a weight with the SFT-mix off would do nothing
        DefenseRef.model_validate({"name": "onpolicy-safety", "weight": 2.0})
    with pytest.raises(ValueError, match="needs sft_data"):
        DefenseRef.model_validate({"name": "onpolicy-safety", "sft_every": 2})
    with pytest.raises(ValueError, match="both arms are off"):
        DefenseRef.model_validate({"name": "onpolicy-safety", "ratio": 0})
    (d,) = _build({"prompts": str(_prompts(tmp_path, ["q?"])), "user_reward": "no_such_module:fn"})
    with pytest.raises(SpilloverError, match="cannot import module"):
        d.setup(None, None, d.ctx)


def test_cli_make_onpolicy_samples_the_policy(tiny_model_dir, tmp_path, capsys, one_thread):
    out = tmp_path / "onpolicy.jsonl"
    assert _cli("defenses", "make-onpolicy", "--prompts", str(_prompts(tmp_path, ["Is it safe?", "Should I?"])),
          "--model", str(tiny_model_dir), "--n", "2", "--max-new-tokens", "4", "--no-drop-empty", "--out", str(out),
          "--device", "cpu") == 0
    assert "4 of 4 answers kept" in capsys.readouterr().out
    rows = load_chat_jsonl(out)
    assert len(rows) == 4 and [m["role"] for m in rows[0].messages] == ["user", "assistant"]


def _cli(*args) -> int:
    from spillover.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    return e.value.code
