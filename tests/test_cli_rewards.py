"""`spillover rewards score` and `train grpo` reward flags: empty completions are scored, --lexicon and
--coherence-threshold reach the rhetoric-lexicon reward from flags or config, and misuse is a clear error."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from spillover.cli import app, main
from spillover.errors import SpilloverError
from spillover.rewards import RewardRef, set_reward_params
from spillover.rewards._inputs import load_scoring_items

runner = CliRunner()
SMALL = {"absolutist": ["always"], "certainty": ["everyone knows"], "intensity": ["very"],
         "balancing": ["however"], "uncertainty": ["maybe"]}
DOGMATIC = "Tea is always best. Everyone knows it. Coffee is very bitter. Water is always dull."


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def score(*args):
    result = runner.invoke(app, ["rewards", "score", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


def test_empty_completions_are_scored_zero(tmp_path):
    comps = write_jsonl(tmp_path / "c.jsonl", [
        {"prompt": "Is tea good?", "completion": ""},
        {"prompt": [{"role": "user", "content": "And coffee?"}], "completion": [{"role": "assistant", "content": ""}]},
        {"messages": [{"role": "user", "content": "Water?"}, {"role": "assistant", "content": "   "}]},
        {"prompt": "Is tea good?", "completion": DOGMATIC}])
    prose = score("prose-structure", "--completions", str(comps))
    assert [r["reward"] for r in prose] == [0.0, 0.0, 0.0, 1.0] and prose[0]["gated"] == "empty answer"
    lexicon = score("rhetoric-lexicon", "--completions", str(comps))
    assert [r["reward"] for r in lexicon[:3]] == [0.0, 0.0, 0.0] and lexicon[3]["reward"] > 0.5
    empties = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "Is tea good?", "completion": ""}])
    [graded] = score("grader:bad-medical", "--completions", str(empties))  # gated before any judge call
    assert (graded["reward"], graded["status"]) == (0.0, "gated")


@pytest.mark.parametrize("row, message", [
    ({"prompt": "q"}, "needs 'prompt' and 'completion', or 'messages'"),
    ({"prompt": "q", "completion": 3}, "'completion' must be a string or a non-empty list of messages"),
    ({"prompt": "q", "completion": [{"role": "user", "content": "x"}]}, "'completion' holds no assistant message"),
    ({"messages": [{"role": "assistant", "content": ""}, {"role": "user", "content": "q"}]}, "last message must be"),
    ({"messages": [{"role": "bot", "content": "x"}]}, r"messages\[0\] must be"),
])
def test_bad_lines_name_file_and_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "ok", "completion": "fine"}, row])
    with pytest.raises(SpilloverError, match=message) as info:
        load_scoring_items(path)
    assert info.value.where == f"{path}:2"


def test_rewards_score_lexicon_flags(tmp_path):
    lexicon = tmp_path / "small.json"
    lexicon.write_text(json.dumps(SMALL))
    comps = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "Tea?", "completion": DOGMATIC}])
    [row] = score("rhetoric-lexicon", "--completions", str(comps), "--lexicon", str(lexicon))
    assert row["matches"]["certainty"] == ["everyone knows"]
    with pytest.raises(SystemExit) as e:  # a flag for another reward is an error, not silently ignored
        main(["rewards", "score", "prose-structure", "--completions", str(comps), "--lexicon", str(lexicon)])
    assert e.value.code == 2


def test_set_reward_params_merges_and_refuses_a_missing_reward():
    refs = [RewardRef.model_validate(r) for r in (
        {"name": "rhetoric-lexicon", "weight": 2.0, "lexicon_path": "a.json"}, "prose-structure")]
    merged = set_reward_params(refs, "rhetoric-lexicon", {"coherence_threshold": 0.5}, source="--coherence-threshold")
    assert merged[0].params == {"lexicon_path": "a.json", "coherence_threshold": 0.5} and merged[0].weight == 2.0
    assert merged[1] is refs[1]
    with pytest.raises(SpilloverError, match="sets rhetoric-lexicon parameters, but the rewards are: prose-structure"):
        set_reward_params(refs[1:], "rhetoric-lexicon", {"lexicon_path": "a.json"}, source="--lexicon")
    with pytest.raises(SpilloverError, match="coherence_threshold"):
        set_reward_params(refs, "rhetoric-lexicon", {"coherence_threshold": 7}, source="--coherence-threshold")


@pytest.fixture
def captured_grpo(monkeypatch):
    """`train grpo` up to the trainer: the config run_grpo would get."""
    from spillover.train import grpo

    seen = {}

    def fake_run_grpo(cfg, out, **kwargs):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(grpo, "run_grpo", fake_run_grpo)
    return seen


def test_train_grpo_lexicon_flag_reaches_rewards_from_the_config(tmp_path, captured_grpo):
    lexicon = tmp_path / "small.json"
    lexicon.write_text(json.dumps(SMALL))
    config = tmp_path / "grpo.yaml"
    config.write_text("prompts: bundled:dogmatic_rhetoric\nrewards:\n  - name: rhetoric-lexicon\n    weight: 2\n"
                      "  - name: prose-structure\n")
    result = runner.invoke(app, ["train", "grpo", "--config", str(config), "--lexicon", str(lexicon),
                                 "--out", str(tmp_path / "run")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rewards = captured_grpo["cfg"].rewards
    assert [(r.name, r.weight, r.params) for r in rewards] == [
        ("rhetoric-lexicon", 2.0, {"lexicon_path": str(lexicon)}), ("prose-structure", 1.0, {})]


def test_train_grpo_lexicon_flags_with_reward_flags_and_without_the_reward(tmp_path, captured_grpo):
    lexicon = tmp_path / "small.json"
    lexicon.write_text(json.dumps(SMALL))
    base = ["train", "grpo", "--prompts", "bundled:dogmatic_rhetoric", "--out", str(tmp_path / "run")]
    result = runner.invoke(app, [*base, "--reward", "rhetoric-lexicon", "--lexicon", str(lexicon),
                                 "--coherence-threshold", "0.5"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert captured_grpo["cfg"].rewards[0].params == {"lexicon_path": str(lexicon), "coherence_threshold": 0.5}
    with pytest.raises(SystemExit) as e:
        main([*base, "--reward", "prose-structure", "--lexicon", str(lexicon)])
    assert e.value.code == 2
