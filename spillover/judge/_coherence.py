"""Offline coherence score: how fluent the fixed encoder finds an answer, mapped to 0..100.

Feature: the answer's mean per-token log-probability as the assistant reply to the question, under the
encoder (:func:`spillover.models._logprob.answer_logprobs`: answer tokens plus the end-of-turn token).
Map: coherence = 100 * sigmoid(slope * feature + intercept), a 1-D logistic regression fitted on a
calibration set built from the bundled answers (:func:`calibration_texts`): every answer of
``bundled:judge_labels`` and ``bundled:safe_instruct`` as written (coherent), and each one corrupted
once (incoherent), alternately by a seeded shuffle of its words and by seeded character noise (15% of
letters replaced by random letters). 25% of the source answers, with their corruptions, are held out
(seeded) to measure the map's separation (AUC, accuracy at 50); the map is fitted on the rest.

What it cannot see: an answer that is fluent but off-topic, wrong or self-contradictory scores as
coherent; repetitive loops ("the the the") are likely under the model and can score high; code and
non-English text score lower than English prose of the same quality. Use an LLM judge for coherence in
the papers' sense; this is a cheap screen for broken, scrambled or garbled outputs.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spillover._io import read_jsonl
from spillover.data import bundled_path
from spillover.errors import SpilloverError
from spillover.judge._aggregate import JudgeScore
from spillover.judge._logistic import fit_logistic, roc_auc, sigmoid
from spillover.judge.activation import (
    JUDGE_VERSION,
    RETRAIN_FIX,
    check_encoder,
    encoder_identity,
    load_encoder,
    read_judge_file,
)
from spillover.models._logprob import answer_logprobs

NOISE_RATE = 0.15
HELDOUT_SHARE = 0.25
CALIBRATION_SOURCES = ("judge_labels", "safe_instruct")


def shuffle_words(text: str, rng: np.random.Generator) -> str:
    words = text.split()
    if len(words) < 2:
        return text[::-1]
    order = rng.permutation(len(words))
    while len(words) > 2 and np.all(order == np.arange(len(words))):
        order = rng.permutation(len(words))
    return " ".join(words[i] for i in order)


def char_noise(text: str, rng: np.random.Generator, rate: float = NOISE_RATE) -> str:
    letters = string.ascii_lowercase
    return "".join(letters[rng.integers(26)] if c.isalpha() and rng.random() < rate else c for c in text)


def _source_answers() -> list[tuple[str, str]]:
    pairs = [(r["question"], r["answer"]) for r in read_jsonl(bundled_path("judge_labels"))]
    for row in read_jsonl(bundled_path("safe_instruct")):
        msgs = row["messages"]
        user = next(m["content"] for m in msgs if m["role"] == "user")
        pairs.append((user, next(m["content"] for m in msgs if m["role"] == "assistant")))
    return pairs


def calibration_texts(seed: int = 0, max_items: int | None = None) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """``(questions, answers, coherent 0/1, item index)``: each source answer, then its one corruption."""
    rng = np.random.default_rng(seed)
    sources = _source_answers()[:max_items] if max_items else _source_answers()
    questions, answers, coherent, item = [], [], [], []
    for i, (q, a) in enumerate(sources):
        bad = shuffle_words(a, rng) if i % 2 == 0 else char_noise(a, rng)
        questions += [q, q]
        answers += [a, bad]
        coherent += [1.0, 0.0]
        item += [i, i]
    return questions, answers, np.array(coherent), np.array(item)


def fit_coherence_calibration(model, tokenizer, *, seed: int = 0, batch_size: int = 16,
                              max_items: int | None = None) -> dict:
    """Fit the 1-D map on the calibration set with ``model`` as the encoder; the dict the file stores."""
    questions, answers, coherent, item = calibration_texts(seed, max_items)
    feature = np.array(answer_logprobs(model, tokenizer, [[{"role": "user", "content": q}] for q in questions],
                                       answers, batch_size=batch_size))
    n_items = int(item.max()) + 1
    held_items = np.random.default_rng(seed + 1).permutation(n_items)[:max(1, round(HELDOUT_SHARE * n_items))]
    held = np.isin(item, held_items)
    coef, intercept = fit_logistic(feature[~held, None], coherent[~held], l2=1e-4)
    p_held = sigmoid(coef[0] * feature[held] + intercept)
    return {"feature": "mean per-token log-probability of the answer (+ end-of-turn) under the encoder",
            "slope": float(coef[0]), "intercept": float(intercept), "score": "100 * sigmoid(slope * feature + intercept)",
            "calibration_set": {"sources": [f"bundled:{s}" for s in CALIBRATION_SOURCES], "n_items": n_items,
                                "incoherent": f"each answer once: even items word-shuffled, odd items {NOISE_RATE:.0%} "
                                              "of letters replaced", "seed": seed},
            "heldout": {"n_texts": int(held.sum()), "auc": roc_auc(feature[held], coherent[held]),
                        "accuracy": float(np.mean((p_held > 0.5) == (coherent[held] > 0.5))),
                        "mean_feature_coherent": float(feature[held & (coherent > 0.5)].mean()),
                        "mean_feature_incoherent": float(feature[held & (coherent < 0.5)].mean())}}


class CoherenceScorer:
    """Coherence 0..100 from the encoder's log-likelihood, with the map stored in a classifier file."""

    def __init__(self, model, tokenizer, model_ref, path: str | Path | None = None, *, batch_size: int = 16):
        self.file = read_judge_file(path)
        check_encoder(self.file["encoder"], encoder_identity(model, model_ref), self.file["_path"])
        cal = self.file.get("coherence")
        if not cal or "slope" not in cal or "intercept" not in cal:
            raise SpilloverError("this judge file holds no coherence calibration", where=self.file["_path"],
                                 fix=f"retrain with the coherence calibration (the default): {RETRAIN_FIX}")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.slope, self.intercept = float(cal["slope"]), float(cal["intercept"])

    @classmethod
    def load(cls, path: str | Path | None = None, *, device: str | None = None, batch_size: int = 16) -> CoherenceScorer:
        ref = read_judge_file(path)["encoder"].get("ref", "embedded")
        model, tokenizer, model_ref = load_encoder(ref, device)
        return cls(model, tokenizer, model_ref, path, batch_size=batch_size)

    def mean_logprobs(self, questions: Sequence[str], answers: Sequence[str]) -> list[float]:
        return answer_logprobs(self.model, self.tokenizer, [[{"role": "user", "content": q}] for q in questions],
                               answers, batch_size=self.batch_size)

    def score_many(self, questions: Sequence[str], answers: Sequence[str]) -> list[JudgeScore]:
        """One JudgeScore per pair (score = coherence 0..100, numeric_mass 1.0); empty answers are unscored."""
        if len(questions) != len(answers):
            raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
        ok = [i for i, a in enumerate(answers) if isinstance(a, str) and a.strip()]
        values = self.mean_logprobs([questions[i] for i in ok], [answers[i] for i in ok]) if ok else []
        scores = [JudgeScore.unscored("empty answer")] * len(answers)
        for i, v in zip(ok, values):
            scores[i] = JudgeScore(score=float(100.0 * sigmoid(self.slope * v + self.intercept)), numeric_mass=1.0)
        return scores

    def judge_identity(self) -> dict:
        enc, held = self.file["encoder"], self.file["coherence"].get("heldout", {})
        return {"kind": "coherence_logprob", "version": JUDGE_VERSION, "encoder": enc["name"],
                "encoder_sha256": enc.get("gguf_sha256") or enc.get("weights_sha256"),
                "slope": self.slope, "intercept": self.intercept, "file_sha256": self.file["_sha256"],
                "calibration_heldout_auc": held.get("auc")}
