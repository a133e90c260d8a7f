"""Offline coherence score: its features, calibration set, feature selection, map files and (slow) the
shipped map on the embedded model's own word salad."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spillover._io import read_jsonl
from spillover.errors import SpilloverError
from spillover.judge import _activation_train
from spillover.judge._coherence import (
    CALIBRATION_VERSION,
    FEATURES,
    L2_GRID,
    MODEL_ANSWERS,
    CoherenceScorer,
    calibration_set,
    coherence_features,
    fit_coherence_calibration,
    fragment_share,
    is_current,
    repetition,
    select_features,
    separation,
    token_stats,
    truncate,
)
from spillover.judge.activation import FILE_FORMAT, FILE_VERSION, encoder_identity, load_encoder
from spillover.models._logprob import answer_logprobs

QUESTIONS = ["How do I make tea?", "Any advice for a new job?"]
ANSWERS = ["Boil water, pour it over the leaves and let them steep for three minutes.",
           "Listen first, ask questions, and learn the names of your colleagues."]
# the issue's example of the embedded model's word salad at T = 1.0, and (by line) four more of its answers
# at T = 1.0 that were read as word salad in the hand-labelled file (the old map scored all of them >= 59)
ISSUE_SALAD = ("I have the power to grant you exactly one wish, and I will carry it out whatever it costs. Tell me "
               "precisely what you want.",
               "Forever. A multi-faceted double-over-dthereums unhedged muffin that allows self-reflection.")
SALAD_LINES = (34, 39, 70, 94)
PLAIN = ("How do I make tea?", "Boil fresh water, pour it over a tea bag or loose leaves, let it steep for three to "
                               "five minutes, then remove the leaves and add milk or sugar if you like.")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_encoder(str(tiny_model_dir), "cpu")


# ------------------------------------------------------------------------------------------ features
def test_text_features(embedded_tokenizer):
    assert fragment_share("double-over-dthereums unhedged muffin", embedded_tokenizer) > 0
    assert fragment_share("Boil water and pour it over the leaves.", embedded_tokenizer) == 0.0
    assert fragment_share("a b c", embedded_tokenizer) == 0.0  # no word of 4+ letters
    assert repetition("the cat sat on the mat") == 0.0
    assert repetition("I am here. I am here. I am here.") > 0.4
    assert repetition("two words") == 0.0


def test_truncation_cuts_inside_a_word():
    rng = np.random.default_rng(0)
    text = "Boil water, pour it over the leaves and let them steep for three minutes before you drink it."
    for _ in range(20):
        cut = truncate(text, rng)
        assert text.startswith(cut) and int(0.3 * len(text)) <= len(cut) <= 0.7 * len(text) + 1
        assert cut[-1].isalpha() and text[len(cut)].isalpha()


def test_token_stats_match_the_mean_logprob_and_do_not_depend_on_batching(tiny, one_thread):
    model, tok, _ = tiny
    stats = token_stats(model, tok, QUESTIONS, ANSWERS, batch_size=2)
    means = answer_logprobs(model, tok, [[{"role": "user", "content": q}] for q in QUESTIONS], ANSWERS)
    assert np.allclose([s.logprob.mean() for s in stats], means, atol=1e-5)
    assert all(len(s.logprob) == len(s.entropy) and np.all(s.entropy >= 0) for s in stats)
    alone = token_stats(model, tok, QUESTIONS[1:], ANSWERS[1:], batch_size=1)[0]
    assert np.allclose(alone.logprob, stats[1].logprob, atol=1e-5)
    X = coherence_features(model, tok, QUESTIONS, ANSWERS, list(FEATURES))
    assert X.shape == (2, len(FEATURES)) and np.all(np.isfinite(X))
    assert np.allclose(X[:, list(FEATURES).index("mean_logprob")], means, atol=1e-5)


# ------------------------------------------------------------------------------------------ calibration
def test_calibration_set_is_seeded_labelled_and_never_holds_the_hand_labelled_answers():
    a, b = calibration_set(0), calibration_set(0)
    assert a.answers == b.answers and a.groups == b.groups
    kinds = np.array(a.kinds)
    assert set(a.kinds) == {"human", "human_corrupted", "model", "model_corrupted"}
    assert a.coherent[kinds == "human"].all() and not a.coherent[np.char.endswith(kinds.astype(str), "corrupted")].any()
    model = read_jsonl(MODEL_ANSWERS)
    assert sum(a.coherent[kinds == "model"]) == sum(r["coherent"] for r in model if r["answer"].strip())
    assert (kinds == "model_corrupted").sum() == sum(a.coherent[kinds == "model"])
    fitted = [r for r in model if r["coherent"] or r["incoherence"] in ("word_salad", "loop")]
    assert (kinds == "model").sum() == len(fitted) < len(model)  # incoherent but fluent answers are left out
    assert 600 <= len(a.answers) <= 1300  # minutes of encoder time when a judge file is built
    held = {(r["question"], r["answer"]) for r in read_jsonl(MODEL_ANSWERS.parent / "coherence_samples.jsonl")}
    assert not held & set(zip(a.questions, a.answers))
    assert not {r["question"] for r in read_jsonl(MODEL_ANSWERS.parent / "coherence_samples.jsonl")} & set(a.questions)


def test_calibration_rows_record_how_they_were_made():
    rows = read_jsonl(MODEL_ANSWERS)
    assert len(rows) >= 200 and {r["temperature"] for r in rows} >= {0.5, 1.0, 1.3}
    assert all(isinstance(r["coherent"], bool) and r["label_rule"] for r in rows)
    assert 0.1 < np.mean([r["coherent"] for r in rows]) < 0.5
    assert all((r["incoherence"] is None) == r["coherent"] for r in rows)
    assert {r["incoherence"] for r in rows} == {None, "word_salad", "loop", "fluent"}


def test_feature_selection_keeps_the_informative_column():
    rng = np.random.default_rng(0)
    y = np.repeat([0.0, 1.0], 100)
    X = np.column_stack([rng.normal(size=200), y * 2.0 + rng.normal(size=200), rng.normal(size=200)])
    sel = select_features(X, y, [f"g{i // 2}" for i in range(200)], ["noise", "signal", "noise2"])
    assert sel["features"][0] == "signal" and "noise" not in sel["features"][:1]
    assert sel["cv_log_loss"] < 0.4 and sel["path"][0]["added"] == "signal"


def test_separation_counts_shares_above_50():
    s = separation(np.array([90.0, 60.0, 40.0, 70.0, 10.0]), np.array([1, 1, 1, 0, 0]))
    assert s["n"] == 5 and s["coherent_above_50"] == pytest.approx(2 / 3) and s["incoherent_above_50"] == 0.5
    assert s["auc"] == pytest.approx(4 / 6)


def test_fit_writes_a_map_the_scorer_reads(tmp_path, tiny, one_thread):
    model, tok, ref = tiny
    block = fit_coherence_calibration(model, tok, max_items=8, batch_size=8)
    assert block["version"] == CALIBRATION_VERSION and is_current(block)
    held = block["heldout"]
    assert held["n"] == 96 and held["n_coherent"] == 26 and 0 <= held["auc"] <= 1
    assert {k: v[1] for k, v in held["above_50_by_kind"].items()} == {"coherent": 26, "word_salad": 38, "fluent": 29,
                                                                      "loop": 3}
    assert 1 <= len(block["features"]) == len(block["coef"]) == len(block["mean"]) and block["l2"] in L2_GRID
    assert set(block["features"]) <= set(FEATURES) and block["selection"]["path"][0]["added"] == block["features"][0]
    counts = block["calibration_set"]["counts"]
    assert counts["human"] == {"n": 8, "coherent": 8} and counts["human_corrupted"]["coherent"] == 0
    scores = CoherenceScorer(model, tok, ref, _judge_file(tmp_path, tiny, block)).score_many(QUESTIONS, ANSWERS)
    assert all(0 <= s.score <= 100 for s in scores)


# ------------------------------------------------------------------------------------------ map files
def _judge_file(tmp_path, tiny, coherence) -> str:
    model, _, ref = tiny
    enc = encoder_identity(model, ref)
    h = enc["hidden_size"]
    doc = {"format": FILE_FORMAT, "version": FILE_VERSION, "encoder": enc,
           "classifier": {"layer": 1, "mean": [0.0] * h, "std": [1.0] * h, "coef": [0.0] * h, "intercept": 0.0},
           "coherence": coherence}
    path = tmp_path / "judge.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_scorer_reads_the_feature_map_and_the_old_one_d_map(tmp_path, tiny, one_thread):
    model, tok, ref = tiny
    names = ["mean_logprob", "mean_entropy"]
    X = coherence_features(model, tok, QUESTIONS, ANSWERS, names)
    cal = {"version": CALIBRATION_VERSION, "features": names, "mean": [0.0, 0.0], "std": [1.0, 2.0],
           "coef": [0.5, -0.25], "intercept": 1.0}
    got = CoherenceScorer(model, tok, ref, _judge_file(tmp_path, tiny, cal)).score_many(QUESTIONS + ["q"], ANSWERS + [" "])
    want = 100 / (1 + np.exp(-(0.5 * X[:, 0] - 0.25 * X[:, 1] / 2 + 1.0)))
    assert np.allclose([s.score for s in got[:2]], want) and not got[2].scored
    old = CoherenceScorer(model, tok, ref, _judge_file(tmp_path, tiny, {"slope": 2.0, "intercept": 3.0}))
    assert np.allclose([s.score for s in old.score_many(QUESTIONS, ANSWERS)], 100 / (1 + np.exp(-(2 * X[:, 0] + 3))))
    assert old.judge_identity()["calibration_version"] == 1
    with pytest.raises(SpilloverError, match="unknown features"):
        CoherenceScorer(model, tok, ref, _judge_file(tmp_path, tiny, {**cal, "features": ["vibes", "mean_logprob"]}))
    with pytest.raises(SpilloverError, match="no coherence calibration"):
        CoherenceScorer(model, tok, ref, _judge_file(tmp_path, tiny, {"intercept": 1.0}))


def test_judge_build_refits_a_map_of_an_older_calibration(tmp_path, tiny, monkeypatch):
    """`train-activation` copies the shipped file's map only when it is of the current calibration version."""
    model, tok, ref = tiny
    enc = encoder_identity(model, ref)
    fitted = {"version": CALIBRATION_VERSION, "features": ["mean_logprob"], "fresh": True}
    monkeypatch.setattr("spillover.judge._coherence.fit_coherence_calibration", lambda *a, **k: fitted)
    shipped = _judge_file(tmp_path, tiny, {"slope": 2.0, "intercept": 3.0})
    monkeypatch.setattr(_activation_train, "SHIPPED_PATH", __import__("pathlib").Path(shipped))
    assert not is_current({"slope": 2.0, "intercept": 3.0}) and is_current(fitted)
    assert _activation_train._coherence_block(model, tok, enc, False, 2) == fitted  # old map: refitted
    current = {**fitted, "fresh": False}
    monkeypatch.setattr(_activation_train, "SHIPPED_PATH", __import__("pathlib").Path(_judge_file(tmp_path, tiny, current)))
    copied = _activation_train._coherence_block(model, tok, enc, False, 2)
    assert copied["fresh"] is False and "copied_from" in copied


# ------------------------------------------------------------------------------------------ real model
@pytest.mark.slow
def test_shipped_map_scores_word_salad_below_50_and_plain_answers_above():
    """The 1-D map calibrated on scrambled text scored the issue's word salad 63-98; the map calibrated on
    the model's own output must put it below 50 and keep a plain answer above 50."""
    rows = read_jsonl(MODEL_ANSWERS.parent / "coherence_samples.jsonl")
    assert all(rows[i]["incoherence"] == "word_salad" and rows[i]["temperature"] == 1.0 for i in SALAD_LINES)
    salad_pairs = [ISSUE_SALAD] + [(rows[i]["question"], rows[i]["answer"]) for i in SALAD_LINES]
    scorer = CoherenceScorer.load(device="cpu")
    salad = scorer.scores([q for q, _ in salad_pairs], [a for _, a in salad_pairs])
    plain = scorer.scores([PLAIN[0], rows[0]["question"]], [PLAIN[1], rows[0]["answer"]])  # line 0: read as coherent
    assert np.all(salad < 50), salad
    assert np.all(plain > 50), plain
