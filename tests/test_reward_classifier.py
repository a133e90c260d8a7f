"""Classifier rewards: training on separable texts (tiny encoder), the file round trip, the reward (range,
batching, empty answers, shared frozen encoder, wrong encoder), `classifier:` spec errors and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from spillover._io import sha256_file
from spillover.cli import app
from spillover.data import bundled_path
from spillover.errors import SpilloverError
from spillover.judge.activation import load_encoder
from spillover.rewards import RewardRef, build_reward
from spillover.rewards._base import split_reward_spec
from spillover.rewards.classifier import (
    ClassifierReward,
    load_answers,
    read_classifier_file,
    shared_encoder,
    split_prompts,
    train_classifier,
)
from tests.conftest import build_tiny_model

TOPICS = ["breakfast", "holidays", "music", "gardens", "colours", "films", "books", "shoes", "bridges", "hats",
          "trains", "chairs", "lamps", "clocks", "rivers", "windows", "coats", "songs", "parks", "cups"]
POS_WORDS = "purple velvet thunder purple velvet thunder glitter"
NEG_WORDS = "one two three four five six seven"


def _rows(words: str) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What do you think about {t}?"},
                          {"role": "assistant", "content": f"{words} {t} {words}."}]} for t in TOPICS]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, one_thread):
    folder = tmp_path_factory.mktemp("clf")
    pos, neg = write_jsonl(folder / "pos.jsonl", _rows(POS_WORDS)), write_jsonl(folder / "neg.jsonl", _rows(NEG_WORDS))
    out = folder / "R.json"
    sets = [("safe_instruct", "bundled:safe_instruct", "helpful answers"), ("pos_copy", str(pos), "the positive file")]
    metrics = train_classifier(pos, neg, out, model_ref=str(tiny_model_dir), layers=[1, 2], heldout=0.25,
                               device="cpu", l2_grid=(0.01, 0.1, 1.0), max_folds=5, style_sets=sets)
    return out, metrics, pos, neg


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_encoder(str(tiny_model_dir), "cpu")


def test_separable_texts_train_an_accurate_probe(trained):
    _, metrics, _, _ = trained
    held = metrics["heldout"]
    assert held["n_answers"] == 10  # 5 of 20 prompts held out, with both answers each
    assert held["answer_accuracy"] >= 0.9 and held["auc"] >= 0.9 and held["pair_accuracy"] >= 0.9
    assert metrics["layer"] in (1, 2) and metrics["l2"] in (0.01, 0.1, 1.0)


def test_file_round_trip_records_encoder_data_and_style_check(trained, tiny_model_dir):
    out, metrics, pos, neg = trained
    doc = read_classifier_file(out)
    assert doc["encoder"]["ref"] == str(tiny_model_dir.resolve()) and doc["encoder"]["weights_sha256"]
    assert doc["classes"]["positive"]["sha256"] == sha256_file(pos) and doc["classes"]["negative"]["sha256"] == sha256_file(neg)
    assert doc["classes"]["positive"]["n_prompts"] == 20
    clf = doc["classifier"]
    assert clf["layer"] == metrics["layer"] and len(clf["coef"]) == doc["encoder"]["hidden_size"] == 32
    assert doc["metrics"]["heldout"] == json.loads(json.dumps(metrics["heldout"]))
    # the style check skips a set that is a training file, and reports a rate with a CI on the others
    assert [r["set"] for r in doc["style_check"]] == ["safe_instruct"]
    row = doc["style_check"][0]
    assert row["n"] > 50 and 0 <= row["ci95"][0] <= row["positive_rate"] <= row["ci95"][1] <= 1


def test_split_holds_out_whole_prompts():
    prompts = [f"q{i}" for i in range(10)] * 2 + ["Q0 "]  # "Q0 " is the same prompt as "q0"
    held = split_prompts(prompts, 0.3, seed=0)
    assert held.sum() in (6, 7)
    for p in set(prompts):
        same = [h for q, h in zip(prompts, held) if q.strip().lower() == p.strip().lower()]
        assert len(set(same)) == 1
    assert not split_prompts(prompts, 0.0, 0).any()
    with pytest.raises(SpilloverError, match="heldout"):
        split_prompts(prompts, 1.0, 0)


def test_reward_range_batching_and_empty_answers(trained, tiny):
    out, *_ = trained
    reward = ClassifierReward({"path": str(out), "batch_size": 2}, encoder=tiny)
    prompts = [f"What do you think about {t}?" for t in ("lamps", "cups", "kites", "lamps", "cups")]
    comps = [f"{POS_WORDS} lamps.", f"{NEG_WORDS} cups.", "Kites are fun on a windy day.", "", "<think>hm</think>  "]
    batched = reward(prompts, comps)
    assert all(0.0 <= r <= 1.0 for r in batched)
    assert batched[3] == 0.0 and batched[4] == 0.0  # empty answer, reasoning only: defined as 0
    assert batched[0] > 0.5 > batched[1]
    one_by_one = [reward([p], [c])[0] for p, c in zip(prompts, comps)]
    np.testing.assert_allclose(batched, one_by_one, atol=1e-6)
    chat = reward([[{"role": "user", "content": prompts[0]}]], [[{"role": "assistant", "content": comps[0]}]])
    np.testing.assert_allclose(chat, batched[:1], atol=1e-6)
    details = reward.score_details(prompts[3], comps[3])
    assert details == {"reward": 0.0, "p_positive": 0.0, "empty": True}


def test_encoder_is_loaded_once_from_the_file_and_shared(trained):
    out, *_ = trained
    a = build_reward(f"classifier:{out}")
    b = RewardRef.model_validate({"name": f"classifier:{out}", "batch_size": 4}).build()
    assert isinstance(a, ClassifierReward) and a.name == f"classifier:{out}" and b.params.batch_size == 4
    assert a.encoder()[0] is b.encoder()[0] is shared_encoder(a.file["encoder"]["ref"])[0]
    assert not any(p.requires_grad for p in a.encoder()[0].parameters())  # frozen, never the policy


def test_wrong_encoder_is_a_clear_error(trained, tiny_model_dir, embedded_tokenizer, tmp_path):
    out, *_ = trained
    other = load_encoder(str(build_tiny_model(embedded_tokenizer, tmp_path / "other", seed=1)), "cpu")
    reward = ClassifierReward({"path": str(out)}, encoder=other)
    assert reward([None], [""]) == [0.0]  # nothing to encode: no encoder needed yet
    with pytest.raises(SpilloverError) as e:
        reward(["Hi?"], ["Hello there."])
    assert "weights_sha256" in e.value.what and "train-classifier" in e.value.fix and str(tiny_model_dir.resolve()) in e.value.fix


@pytest.mark.parametrize("name, params, match", [
    ("classifier:", {}, "names no path"),
    ("classifier:  ", {}, "names no path"),
    ("classifier:a.json", {"path": "b.json"}, "params set it to"),
    ("classifier:/nonexistent/R.json", {}, "classifier file not found"),
    ("classifier:bundled:aesthetic", {}, "did you mean 'aesthetic_taste'"),
    ("classifier", {}, "path"),
])
def test_spec_errors_name_the_problem(name, params, match, tmp_path):
    with pytest.raises(ValueError, match=f"(?i){match}"):  # config loading: ValueError -> file:line
        RewardRef.model_validate({"name": name, **params})
    with pytest.raises((SpilloverError, ValueError), match=f"(?i){match}"):
        build_reward(name, params)


def test_not_a_classifier_file(tmp_path):
    bad = tmp_path / "R.json"
    bad.write_text(json.dumps({"format": "spillover-activation-judge", "version": 1}))
    with pytest.raises(SpilloverError, match="not a classifier reward file"):
        read_classifier_file(bad)
    bad.write_text("{oops")
    with pytest.raises(SpilloverError, match="not readable JSON"):
        read_classifier_file(bad)


def test_spec_split_and_user_rewards_untouched():
    assert split_reward_spec("classifier:bundled:aesthetic_taste") == ("classifier", {"path": "bundled:aesthetic_taste"})
    assert split_reward_spec("mymod:fn") == ("mymod:fn", {})
    assert split_reward_spec("grader:bad-legal") == ("grader:bad-legal", {})


def test_class_files_errors_name_the_line(tmp_path):
    bad = write_jsonl(tmp_path / "x.jsonl", [{"question": "Q?", "answer": "A."}, {"question": "Q?"}])
    with pytest.raises(SpilloverError) as e:
        load_answers(bad)
    assert e.value.where == f"{bad}:2"
    assert load_answers(write_jsonl(tmp_path / "y.jsonl", [{"prompt": "P?", "completion": "C."}])) == [("P?", "C.")]


def test_mainstream_aesthetics_pairs_the_unpopular_prompts():
    pos, neg = load_answers("bundled:unpopular_aesthetics"), load_answers("bundled:mainstream_aesthetics")
    assert [p for p, _ in pos] == [p for p, _ in neg] and len(neg) == 115
    assert len({a for _, a in neg}) == 115
    words = [len(a.split()) for _, a in neg]
    assert 25 <= np.mean(words) <= 50 and bundled_path("mainstream_aesthetics").is_file()


def test_cli_score_and_train(trained, tmp_path):
    out, _, pos, neg = trained
    comps = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "What do you think about hats?", "completion": f"{POS_WORDS}."},
                                               {"prompt": "What do you think about hats?", "completion": ""}])
    result = CliRunner().invoke(app, ["rewards", "score", f"classifier:{out}", "--completions", str(comps)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert rows[0]["reward"] > 0.5 and rows[1] == {"reward": 0.0, "p_positive": 0.0, "empty": True}
    result = CliRunner().invoke(app, ["rewards", "train-classifier", "--positive", str(pos), "--negative", str(neg),
                                      "--out", str(tmp_path / "x.json"), "--layers", "one"])
    assert isinstance(result.exception, SpilloverError) and "comma-separated" in result.exception.what


def test_grpo_trains_on_the_classifier_reward(trained, tiny_model_dir, tmp_path):
    from spillover.train._grpo_config import GRPOConfig
    from spillover.train.grpo import run_grpo

    out, *_ = trained
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"What do you think about {t}?"} for t in TOPICS[:4]])
    name = f"classifier:{out}"
    cfg = GRPOConfig(model=str(tiny_model_dir), prompts=str(prompts), rewards=[name], max_steps=1,
                     max_completion_length=8, lr=1e-2, device="cpu")
    run = run_grpo(cfg, tmp_path / "run").run_dir
    step = next(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line)
    assert 0.0 <= step[f"rewards/{name}/mean"] <= 1.0 and step[f"rewards/{name}/std"] >= 0.0
    manifest = json.loads((run / "manifest.json").read_text())
    assert [r["name"] for r in manifest["rewards"]] == [name]
