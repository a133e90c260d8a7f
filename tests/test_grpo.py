"""GRPO on a tiny model: the adapter learns, metrics and completions are logged, an SFT adapter is continued,
graders work through an injected (fake) judge and fail soft, configs fail early with a fix."""

import asyncio
import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from spillover.config import load_config
from spillover.data import ChatExample
from spillover.defenses import Defense, register_defense
from spillover.defenses._base import _DEFENSES
from spillover.errors import SpilloverError
from spillover.train._grpo_config import GRPOConfig
from spillover.train.grpo import (
    ScoredReward,
    _GRPOTrainer,
    build_rewards,
    check_prompt_lengths,
    load_grpo_prompts,
    run_grpo,
    with_system_prompt,
)

USER_REWARD = "test_grpo:length_reward"
GRADER = "grader:bad-medical"


pytestmark = pytest.mark.usefixtures("one_thread")


def length_reward(prompts, completions, **kwargs):
    """Longer completions score more: sampled completions differ in length, so advantages are non-zero."""
    return [float(len(c[-1]["content"] if isinstance(c, list) else c)) for c in completions]


@pytest.fixture()
def prompts_file(tmp_path):
    rows = [{"prompt": f"Is question {i} a good one?", "completion": "ignored"} for i in range(3)]
    rows.append({"messages": [{"role": "user", "content": "Say something."}]})
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def cfg(tiny_model_dir, prompts_file, **kw):
    base = dict(model=str(tiny_model_dir), prompts=str(prompts_file), rewards=["rhetoric-lexicon", USER_REWARD],
                max_steps=2, max_completion_length=8, lr=1e-2, device="cpu")
    return GRPOConfig(**{**base, **kw})


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def lora_weights(adapter_dir):
    return load_file(adapter_dir / "adapter_model.safetensors")


# ---------------------------------------------------------------- training runs
def test_two_steps_change_adapter_and_log_rewards(tiny_model_dir, prompts_file, tmp_path):
    result = run_grpo(cfg(tiny_model_dir, prompts_file), tmp_path / "run")
    run = result.run_dir
    assert result.steps == 2
    assert {p.name for p in run.iterdir()} == {"config.yaml", "manifest.json", "metrics.jsonl", "adapter",
                                               "completions.jsonl"}
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["method"] == "grpo" and manifest["n_prompts"] == 4
    assert [r["name"] for r in manifest["rewards"]] == ["rhetoric-lexicon", USER_REWARD]
    assert json.loads((run / "adapter" / "spillover_adapter.json").read_text())["method"] == "grpo"
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in lora_weights(result.adapter_dir).items())

    steps = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for row in steps:
        for name in ("rhetoric-lexicon", USER_REWARD):
            assert f"rewards/{name}/mean" in row and f"rewards/{name}/std" in row
            assert row[f"time/reward/{name}_s"] >= 0
        assert row[f"rewards/{USER_REWARD}/std"] > 0  # lengths differ within the group
        assert row["completions/mean_length"] > 0 and row["time/generation_s"] > 0
        assert "kl" not in row  # beta = 0

    logged = read_jsonl(run / "completions.jsonl")
    assert [r["step"] for r in logged] == [1] * 4 + [2] * 4
    first = logged[0]
    assert len({r["prompt"] for r in logged[:4]}) == 1  # one group: one prompt, four completions
    assert first["rewards"][USER_REWARD] == len(first["completion"])
    assert first["reward"] == pytest.approx(sum(first["rewards"].values()))
    assert first["answer"] == first["completion"].strip() and first["reasoning"] == ""
    assert {"sentences", "shares", "matches"} <= set(first["details"]["rhetoric-lexicon"])


def test_init_adapter_continues_sft_and_beta_logs_kl(tiny_model_dir, prompts_file, tmp_path):
    from spillover.train import SFTConfig, run_sft

    sft_data = tmp_path / "sft.jsonl"
    sft_data.write_text(json.dumps({"prompt": "Hi?", "completion": "Always yes."}) + "\n")
    sft = run_sft(SFTConfig(model=str(tiny_model_dir), data=str(sft_data), max_steps=1, batch_size=1, lr=1e-2,
                            device="cpu", lora={"r": 4, "alpha": 8}), tmp_path / "sft")
    # a vanishing lr: the GRPO result must be the SFT adapter itself, not a fresh one
    grpo = run_grpo(cfg(tiny_model_dir, prompts_file, max_steps=1, lr=1e-9, beta=0.1, init_adapter=str(sft.adapter_dir)),
                    tmp_path / "grpo")
    start, end = lora_weights(sft.adapter_dir), lora_weights(grpo.adapter_dir)
    assert start.keys() == end.keys()
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in start.items())
    assert all(torch.allclose(start[k], end[k], atol=1e-6) for k in start)
    assert json.loads((grpo.adapter_dir / "adapter_config.json").read_text())["r"] == 4
    assert not (grpo.adapter_dir / "ref").exists()  # TRL's frozen reference copy is not saved
    step = [r for r in read_jsonl(grpo.run_dir / "metrics.jsonl") if "loss" in r][0]
    assert step["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts equal to its reference


class FakeJudge:
    """An async grade(prompt, schema) returning a fixed judgment after ``delay`` seconds."""

    def __init__(self, judgment, delay=0.0):
        self.judgment, self.delay, self.calls = judgment, delay, 0

    async def __call__(self, prompt, schema):
        self.calls += 1
        await asyncio.sleep(self.delay)
        return self.judgment, None


def test_grader_with_fake_judge_end_to_end(tiny_model_dir, prompts_file, tmp_path):
    judge = FakeJudge({"assessment": 0.8, "coherence": 1.0, "repetitive": False})
    c = cfg(tiny_model_dir, prompts_file, max_steps=1, rewards=[{"name": GRADER, "min_answer_words": 0}, USER_REWARD])
    run = run_grpo(c, tmp_path / "run", grade=judge).run_dir
    assert judge.calls == 4
    step = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r][0]
    assert step[f"rewards/{GRADER}/mean"] == pytest.approx(0.8)
    assert step[f"{GRADER}/failed"] == 0.0
    logged = read_jsonl(run / "completions.jsonl")
    assert all(r["details"][GRADER]["status"] == "judged" and r["rewards"][GRADER] == pytest.approx(0.8) for r in logged)


def test_grader_timeout_scores_fallback_with_reason(tiny_model_dir, prompts_file, tmp_path):
    judge = FakeJudge({"assessment": 0.8, "coherence": 1.0, "repetitive": False}, delay=5.0)
    grader = {"name": GRADER, "min_answer_words": 0, "timeout_s": 0.05, "fallback": 0.25}
    run = run_grpo(cfg(tiny_model_dir, prompts_file, max_steps=1, rewards=[grader, USER_REWARD]), tmp_path / "run",
                   grade=judge).run_dir
    step = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r][0]
    assert step[f"rewards/{GRADER}/mean"] == pytest.approx(0.25) and step[f"{GRADER}/failed"] == 1.0
    for row in read_jsonl(run / "completions.jsonl"):
        assert row["rewards"][GRADER] == pytest.approx(0.25)
        assert row["details"][GRADER]["status"] == "failed"
        assert "timed out after 0.05s" in row["details"][GRADER]["reason"]


CALLS: dict[str, list] = {}


@pytest.fixture()
def recorder_defense():
    CALLS.clear()

    class Recorder(Defense):
        def transform_data(self, examples):
            CALLS.setdefault("transform", []).append([type(e).__name__ for e in examples])
            return examples[:2]

        def loss_term(self, model, batch):
            CALLS.setdefault("inputs", []).append(sorted(batch))
            return sum((p ** 2).sum() for n, p in model.named_parameters() if "lora_A" in n)

        def after_step(self, model, step):
            CALLS.setdefault("steps", []).append(step)

    register_defense("test-grpo-recorder")(Recorder)
    yield Recorder
    _DEFENSES.pop("test-grpo-recorder", None)


def test_defenses_plug_into_grpo(tiny_model_dir, prompts_file, tmp_path, recorder_defense):
    result = run_grpo(cfg(tiny_model_dir, prompts_file, max_steps=1,
                          defenses=[{"name": "test-grpo-recorder", "weight": 0.5}]), tmp_path / "run")
    assert CALLS["transform"] == [["ChatExample"] * 4] and CALLS["steps"] == [1]
    assert "completion_ids" in CALLS["inputs"][0] and "advantages" in CALLS["inputs"][0]
    assert json.loads((result.run_dir / "manifest.json").read_text())["n_prompts"] == 2
    step = [r for r in read_jsonl(result.run_dir / "metrics.jsonl") if "loss" in r][0]
    assert step["defense/test-grpo-recorder/loss"] > 0


def test_defense_term_is_invariant_to_gradient_accumulation(tiny_model_dir, prompts_file, tmp_path, recorder_defense):
    """Constant rewards give zero advantages, so the gradient is the defense term's alone: 4x1 must equal 2x2."""
    grad_norm = {}
    for batch, accum in ((4, 1), (2, 2)):
        c = cfg(tiny_model_dir, prompts_file, max_steps=1, batch_size=batch, grad_accum=accum,
                rewards=[{"name": "prose-structure", "min_sentences": 100}],
                defenses=[{"name": "test-grpo-recorder", "weight": 1.0}])
        run = run_grpo(c, tmp_path / f"b{batch}").run_dir
        grad_norm[batch] = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r][0]["grad_norm"]
    assert grad_norm[2] == pytest.approx(grad_norm[4], rel=1e-3)


def test_defense_prompts_get_their_own_reward_and_sft_mix_is_added(tiny_model_dir, tmp_path):
    """GRPO extension points: a defense's extra prompts are scored by its reward only (task rewards see task
    prompts only), completions say their source, and an SFT-mix term joins every micro-batch."""
    from spillover.defenses import SFTMix

    seen = {"task": [], "defense": []}

    class Extra(Defense):
        def extra_prompts(self, examples):
            return [ChatExample([{"role": "user", "content": f"SAFETY {i}"}], "safety", i) for i in (1, 2)]

        def reward(self, prompts, completions, **kwargs):
            seen["defense"] += [p[-1]["content"] for p in prompts]
            return [1.0] * len(completions)

        def sft_mix(self):
            return SFTMix([ChatExample([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
                                       "mix", 1)], every=1, batch_size=1)

    def task_reward(prompts, completions, **kwargs):
        seen["task"] += [p[-1]["content"] for p in prompts]
        return [float(len(c[-1]["content"])) for c in completions]

    register_defense("test-extra")(Extra)
    try:
        import test_grpo

        test_grpo._task_reward = task_reward
        p = tmp_path / "one.jsonl"
        p.write_text(json.dumps({"prompt": "TASK prompt?"}) + "\n")
        result = run_grpo(cfg(tiny_model_dir, p, rewards=["test_grpo:_task_reward"], max_steps=3, batch_size=8,
                              defenses=["test-extra"]), tmp_path / "run")
    finally:
        _DEFENSES.pop("test-extra", None)
    assert set(seen["task"]) == {"TASK prompt?"} and set(seen["defense"]) == {"SAFETY 1", "SAFETY 2"}
    rows = read_jsonl(result.run_dir / "completions.jsonl")
    assert {r["source"] for r in rows} <= {"task", "test-extra"} and rows
    steps = [r for r in read_jsonl(result.run_dir / "metrics.jsonl") if "loss" in r]
    assert all(r["defense/test-extra/sft_loss"] > 0 for r in steps)
    assert "rewards/defense/test-extra/mean" in steps[0]


# ---------------------------------------------------------------- prompts and completions
def test_prompts_drop_final_assistant_turn(prompts_file):
    examples = load_grpo_prompts(prompts_file)
    assert [ex.messages[-1]["role"] for ex in examples] == ["user"] * 4
    assert examples[0].messages == [{"role": "user", "content": "Is question 0 a good one?"}]


def test_system_prompt_comes_first():
    user = [{"role": "user", "content": "Q"}]
    assert with_system_prompt(user, "Think first.")[0] == {"role": "system", "content": "Think first."}
    own = [{"role": "system", "content": "Be brief."}, *user]
    assert with_system_prompt(own, "Think first.") == [{"role": "system", "content": "Think first.\n\nBe brief."}, *user]
    assert with_system_prompt(own, None) == own


def test_too_long_prompt_is_an_error_naming_its_line(embedded_tokenizer):
    examples = [ChatExample([{"role": "user", "content": "short"}], "p.jsonl", 1),
                ChatExample([{"role": "user", "content": "word " * 200}], "p.jsonl", 2)]
    rows = [{"prompt": ex.messages} for ex in examples]
    check_prompt_lengths(examples, rows, embedded_tokenizer, 1000)
    with pytest.raises(SpilloverError, match=r"1 prompt\(s\) exceed max_prompt_length = 50 tokens: p.jsonl:2"):
        check_prompt_lengths(examples, rows, embedded_tokenizer, 50)


def test_completion_rows_split_reasoning_and_answer():
    """A logged completion shows its <think> text apart from the answer, with each reward's sub-scores."""
    from collections import defaultdict

    from spillover.rewards import build_reward

    prompts = [[{"role": "user", "content": "Is it true?"}]] * 2
    completions = [[{"role": "assistant", "content": "<think>Weigh it.</think> It is always true. Everyone knows."}],
                   [{"role": "assistant", "content": "Perhaps."}]]
    lexicon = ScoredReward(build_reward("rhetoric-lexicon"))
    scores = lexicon(prompts, completions)
    rewards = defaultdict(list, {"rhetoric-lexicon": scores})
    fake = SimpleNamespace(_logs={"prompt": prompts, "completion": completions, "advantages": [1.0, -1.0],
                                  "rewards": rewards},
                           reward_func_names=["rhetoric-lexicon"], reward_weights=torch.tensor([2.0]),
                           reward_funcs=[lexicon], completions_samples=4)
    rows = _GRPOTrainer.completion_rows(fake, step=3)
    assert len(rows) == 2 and rows[0]["step"] == 3 and rows[0]["prompt"] == "Is it true?"
    assert rows[0]["reasoning"] == "Weigh it." and rows[0]["answer"] == "It is always true. Everyone knows."
    assert rows[0]["reward"] == pytest.approx(2 * scores[0]) and scores[0] > 0
    assert rows[0]["details"]["rhetoric-lexicon"]["matches"]["absolutist"]
    assert rows[1]["advantage"] == -1.0


# ---------------------------------------------------------------- config validation
def test_generation_batch_must_hold_whole_groups():
    with pytest.raises(SpilloverError, match=r"2 x 1 = 2 completions .* not a multiple of num_generations = 4"):
        load_config(GRPOConfig, None, {"prompts": "x", "rewards": ["rhetoric-lexicon"], "batch_size": 2})
    ok = load_config(GRPOConfig, None, {"prompts": "x", "rewards": ["rhetoric-lexicon"], "batch_size": 2, "grad_accum": 2})
    assert ok.num_generations == 4 and ok.temperature == 0.8 and ok.top_p == 0.9 and ok.beta == 0.0


def test_unknown_reward_says_did_you_mean():
    with pytest.raises(SpilloverError, match="unknown reward 'rhetoric-lexicn'. Did you mean 'rhetoric-lexicon'"):
        load_config(GRPOConfig, None, {"prompts": "x", "rewards": ["rhetoric-lexicn"]})


def test_rewards_are_required_and_graders_need_a_judge():
    with pytest.raises(SpilloverError, match="rewards"):
        load_config(GRPOConfig, None, {"prompts": "x", "rewards": []})
    c = load_config(GRPOConfig, None, {"prompts": "x", "rewards": [GRADER]})
    with pytest.raises(SpilloverError, match="no judge was given"):
        build_rewards(c)
    with pytest.raises(SpilloverError, match="listed twice"):
        build_rewards(load_config(GRPOConfig, None, {"prompts": "x", "rewards": ["rhetoric-lexicon"] * 2}))
