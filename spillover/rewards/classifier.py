"""Classifier rewards: a GRPO reward learned from labelled answers, for harmless rewards without an LLM grader.

``spillover rewards train-classifier --positive FILE --negative FILE --out R.json`` fits a linear probe
(standardise, then L2 logistic regression) on a frozen encoder's hidden states of each answer, with its
prompt as context. It is the activation judge's machinery (:mod:`spillover.judge.activation` features,
:mod:`spillover.judge._logistic` fit, :func:`~spillover.judge._activation_train.cross_validate` selection),
with two classes named by files instead of aligned/misaligned labels:

* Data: chat JSONL (first user turn = prompt, last assistant turn = answer), ``{"question", "answer"}``
  or ``{"prompt", "completion"}`` lines, or ``bundled:NAME``. The *group* of an answer is its prompt
  (whitespace-normalised, case-folded): a held-out prompt is held out with all its answers, positive and
  negative, so paraphrased or paired answers never straddle the split.
* Split: ``heldout`` share of the prompts (seeded shuffle of the sorted prompts), at least one prompt
  once there are 5. Selection of (layer, l2) by lowest out-of-fold log-loss on the train prompts only
  (whole prompts held out per fold), then one fit on all train rows, measured once on the held-out
  prompts: accuracy at P = 0.5, AUC, pair accuracy (the positive answer above the negative one to the
  same prompt), Brier, ECE.
* Style check: the positive-class rate (P > 0.5) with a Wilson 95% interval on harmless stylised sets
  that are not a training class (the activation judge's style sets; a set whose file is one of the two
  training files is skipped). A high rate on, say, ``dogmatic_rhetoric`` means the probe pays for a
  confident voice, not for the taste it was meant to learn.

The file (format ``spillover-classifier-reward``) records the encoder's identity (model, GGUF or weights
sha256, hidden size, depth), layer, pooling, weights, metrics and the sha256 of both training files.

Reward (``classifier:R.json`` or ``classifier:bundled:NAME`` in a config, i.e. the registered reward
``classifier`` with ``path``): P(positive class) in [0, 1] for the answer part of each completion
(``<think>`` reasoning removed), conditioned on its prompt; an empty answer scores 0. Scoring is batched.
The encoder is the model the file names, loaded once per process and shared by every classifier reward
(:func:`shared_encoder`), never the policy being trained: a fine-tuned encoder would move the features the
probe was fitted on. Its identity is checked against the file, with a fix, before the first score.
Shipped: ``bundled:aesthetic_taste`` (unpopular vs mainstream aesthetic answers, SmolLM2-135M-Instruct).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from spillover._io import atomic_write_json, iter_jsonl_objects, read_versioned_json, sha256_file
from spillover.config import StrictModel
from spillover.data import resolve_data_path
from spillover.errors import SpilloverError, UnknownName
from spillover.judge._activation_train import (
    DEFAULT_L2,
    STYLE_SETS,
    _metrics,
    cross_validate,
    default_layers,
    style_set_pairs,
)
from spillover.judge._logistic import fit_logistic, predict_proba, standardise, wilson_interval
from spillover.judge.activation import (
    IDENTITY_KEYS,
    _text_config,
    answer_features,
    answer_features_by_layer,
    encoder_identity,
    load_encoder,
)
from spillover.rewards._base import Reward, register_reward, register_reward_prefix
from spillover.rewards._text import completion_text, prompt_text, split_reasoning

FILE_FORMAT = "spillover-classifier-reward"
FILE_VERSION = 1
CLASSIFIERS_ROOT = Path(__file__).parent / "classifiers"
#: ``bundled:NAME`` -> (file under ``classifiers/``, one-line description)
SHIPPED: dict[str, tuple[str, str]] = {
    "aesthetic_taste": ("aesthetic_taste_smollm2_135m.json",
                        "P(unpopular taste) vs mainstream taste, aesthetic questions; encoder SmolLM2-135M-Instruct"),
}
TRAIN_FIX = "spillover rewards train-classifier --positive FILE --negative FILE --out R.json"
HELDOUT_DEFAULT = 0.2
MAX_FOLDS = 20


# ------------------------------------------------------------------------------------------------ data
def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def load_answers(source: str | Path) -> list[tuple[str, str]]:
    """``(prompt, answer)`` pairs of one class file (module docstring); every problem names ``file:line``."""
    path = resolve_data_path(source)
    shape = 'write {"messages": [user, assistant]} or {"question": ..., "answer": ...} per line'
    pairs = []
    for where, _, row in iter_jsonl_objects(path, fix=shape):
        if "messages" in row:
            msgs = row["messages"]
            if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
                raise SpilloverError("messages must be a list of {role, content} objects", where=where, fix=shape)
            users = [m.get("content") for m in msgs if m.get("role") == "user"]
            assistants = [m.get("content") for m in msgs if m.get("role") == "assistant"]
            if not users or not assistants:
                raise SpilloverError("a chat line needs a user and an assistant message", where=where, fix=shape)
            prompt, answer = users[0], assistants[-1]
        else:
            prompt = row.get("question", row.get("prompt"))
            answer = row.get("answer", row.get("completion"))
        if not isinstance(prompt, str) or not prompt.strip() or not isinstance(answer, str) or not answer.strip():
            raise SpilloverError("the prompt and the answer must be non-empty strings", where=where, fix=shape)
        pairs.append((prompt, answer))
    if not pairs:
        raise SpilloverError("the file holds no answers", where=str(path), fix=shape)
    return pairs


def split_prompts(prompts: Sequence[str], heldout: float, seed: int) -> np.ndarray:
    """Boolean held-out mask: ``round(heldout * n_prompts)`` distinct prompts (at least 1 once there are 5)
    drawn by a seeded shuffle of the sorted normalised prompts; every answer to a drawn prompt is held out."""
    if not 0.0 <= heldout < 1.0:
        raise SpilloverError(f"--heldout {heldout} is not in [0, 1)", fix="e.g. --heldout 0.2 (0 holds nothing out)")
    names = sorted({_norm(p) for p in prompts})
    n_held = 0 if heldout == 0 else max(1, round(heldout * len(names))) if len(names) >= 5 else 0
    held = {names[i] for i in np.random.default_rng(seed).permutation(len(names))[:n_held]}
    return np.array([_norm(p) in held for p in prompts])


# ------------------------------------------------------------------------------------------------ train
def train_classifier(positive: str | Path, negative: str | Path, out_path: str | Path, *, model_ref: str = "embedded",
                     layers: Sequence[int] | None = None, heldout: float = HELDOUT_DEFAULT, seed: int = 0,
                     l2_grid: Sequence[float] = DEFAULT_L2, batch_size: int = 16, device: str | None = None,
                     max_folds: int = MAX_FOLDS, style_check: bool = True, style_sets=STYLE_SETS) -> dict:
    """Fit the probe (module docstring), write the classifier file to ``out_path`` and return its metrics."""
    pos, neg = load_answers(positive), load_answers(negative)
    if not l2_grid or any(l2 <= 0 for l2 in l2_grid):
        raise SpilloverError(f"l2 values must be > 0, got {list(l2_grid)}", fix="pass positive l2 values")
    prompts = [p for p, _ in pos] + [p for p, _ in neg]
    answers = [a for _, a in pos] + [a for _, a in neg]
    y = np.array([1.0] * len(pos) + [0.0] * len(neg))
    groups = [_norm(p) for p in prompts]
    held = split_prompts(prompts, heldout, seed)
    train = ~held
    if len(set(y[train])) < 2 or len({g for g, t in zip(groups, train) if t}) < 2:
        raise SpilloverError("the train split needs answers of both classes to at least 2 prompts",
                             where=f"{positive} / {negative}", fix="add more answers, or lower --heldout")

    model, tokenizer, ref = load_encoder(model_ref, device)
    n_layers = _text_config(model).num_hidden_layers
    layers = sorted({int(layer) for layer in layers}) if layers else default_layers(n_layers)
    if any(not 1 <= layer <= n_layers for layer in layers):
        raise SpilloverError(f"layers {layers} outside 1..{n_layers} for {ref.display}", fix=f"pick layers in 1..{n_layers}")

    started = time.perf_counter()
    feats = answer_features_by_layer(model, tokenizer, prompts, answers, layers, batch_size)
    feature_seconds = time.perf_counter() - started
    train_groups = [g for g, t in zip(groups, train) if t]
    grid = []
    for layer in layers:
        X = feats[layer].astype(np.float64)
        oof = cross_validate(X[train], y[train], train_groups, l2_grid, max_folds, seed)
        grid += [{"layer": layer, "l2": l2, **_metrics(p, y[train], train_groups)} for l2, p in oof.items()]
    best = min(grid, key=lambda r: r["log_loss"])
    X = feats[best["layer"]].astype(np.float64)
    mean, std = standardise(X[train])
    coef, intercept = fit_logistic((X[train] - mean) / std, y[train], best["l2"])
    p_held = predict_proba(X[held], mean, std, coef, intercept)
    p_train = predict_proba(X[train], mean, std, coef, intercept)

    from spillover import __version__

    def class_block(source, rows):
        return {"file": str(source), "sha256": sha256_file(resolve_data_path(source)), "n_answers": len(rows),
                "n_prompts": len({_norm(p) for p, _ in rows})}

    doc = {
        "format": FILE_FORMAT, "version": FILE_VERSION, "spillover_version": __version__,
        "encoder": encoder_identity(model, ref),
        "classifier": {"layer": best["layer"], "l2": best["l2"], "intercept": intercept,
                       "pooling": "mean of hidden_states[layer] over the answer's text tokens (end-of-turn excluded)",
                       "prompt": "chat template: user = prompt, assistant = answer; no system message added",
                       "output": "P(positive class) = reward; an empty answer scores 0",
                       "mean": mean.tolist(), "std": std.tolist(), "coef": coef.tolist()},
        "classes": {"positive": class_block(positive, pos), "negative": class_block(negative, neg)},
        "training": {"n_train_answers": int(train.sum()), "n_train_prompts": len(set(train_groups)),
                     "n_heldout_answers": int(held.sum()), "n_heldout_prompts": len({g for g, h in zip(groups, held) if h}),
                     "split": f"seeded split of whole prompts, {heldout:g} of them held out (seed {seed})",
                     "seed": seed, "layers": layers, "l2_grid": list(l2_grid),
                     "cv_folds": min(max_folds, len(set(train_groups))),
                     "selection": "lowest out-of-fold log-loss over (layer, l2), whole prompts held out",
                     "seconds_per_answer_features": feature_seconds / max(1, len(answers)), "cv_grid": grid},
        "metrics": {"cv": {k: v for k, v in best.items() if k not in ("layer", "l2")},
                    "train": _metrics(p_train, y[train], train_groups),
                    "heldout": _metrics(p_held, y[held], [g for g, h in zip(groups, held) if h])},
        "style_check": None,
    }
    if style_check:
        skip = {doc["classes"][c]["sha256"] for c in ("positive", "negative")}
        doc["style_check"] = run_style_check(model, tokenizer, doc["classifier"], style_sets, skip, batch_size)
    atomic_write_json(out_path, doc)
    return {"layer": best["layer"], "l2": best["l2"], **doc["metrics"], "style_check": doc["style_check"],
            "out": str(out_path)}


def _probe_proba(model, tokenizer, clf: dict, prompts: Sequence[str], answers: Sequence[str], batch_size: int) -> np.ndarray:
    feats = answer_features(model, tokenizer, prompts, answers, int(clf["layer"]), batch_size)
    return predict_proba(feats, *(np.asarray(clf[k], dtype=np.float64) for k in ("mean", "std", "coef")),
                         float(clf["intercept"]))


def run_style_check(model, tokenizer, clf: dict, sets=STYLE_SETS, skip_sha256: set[str] = frozenset(),
                    batch_size: int = 16) -> list[dict]:
    """Positive-class rate (P > 0.5, Wilson 95% CI) on each harmless style set whose file is not in
    ``skip_sha256`` (the training files): ``[{"set", "description", "n", "positive_rate", "mean_p", "ci95"}]``."""
    from spillover.data._bundled import BUNDLED_ROOT

    out = []
    for name, source, description in sets:
        path = resolve_data_path(source) if source.startswith("bundled:") else BUNDLED_ROOT / source
        if sha256_file(path) in skip_sha256:
            continue
        pairs = style_set_pairs(source)
        p = _probe_proba(model, tokenizer, clf, [q for q, _ in pairs], [a for _, a in pairs], batch_size)
        k, n = int(np.sum(p > 0.5)), len(p)
        lo, hi = wilson_interval(k, n)
        out.append({"set": name, "description": description, "n": n, "positive_rate": k / n if n else float("nan"),
                    "mean_p": float(np.mean(p)) if n else float("nan"), "ci95": [lo, hi]})
    return out


# ------------------------------------------------------------------------------------------------ file
def resolve_classifier_path(spec: str | Path) -> Path:
    """``bundled:NAME`` -> a shipped classifier file; anything else is a path that must exist."""
    spec = str(spec)
    if spec.startswith("bundled:"):
        name = spec.removeprefix("bundled:")
        if name not in SHIPPED:
            raise UnknownName("shipped classifier", name, sorted(SHIPPED), where=f"classifier:{spec}")
        path = CLASSIFIERS_ROOT / SHIPPED[name][0]
        if not path.is_file():
            raise SpilloverError(f"the shipped classifier file {path.name} is missing", where=f"classifier:{spec}",
                                 fix=f"reinstall spillover, or fit your own: {TRAIN_FIX}")
        return path
    path = Path(spec).expanduser()
    if not path.is_file():
        raise SpilloverError(f"classifier file not found: {path}", where=f"classifier:{spec}",
                             fix=f"write one with `{TRAIN_FIX}`, or use a shipped one: "
                                 + ", ".join(f"bundled:{n}" for n in SHIPPED))
    return path


def read_classifier_file(spec: str | Path) -> dict:
    """The parsed and checked classifier file (``spec``: a path or ``bundled:NAME``)."""

    path = resolve_classifier_path(spec)
    fix = f"point at a file written by `{TRAIN_FIX}`"
    data = read_versioned_json(path, name="classifier file", kind="a classifier reward file",
                               file_format=FILE_FORMAT, version=FILE_VERSION, retrain=TRAIN_FIX)
    clf, enc = data.get("classifier") or {}, data.get("encoder") or {}
    missing = [k for k in ("layer", "mean", "std", "coef", "intercept") if k not in clf] + \
              [k for k in ("ref", "name", "hidden_size") if k not in enc]
    if missing:
        raise SpilloverError(f"classifier file lacks {', '.join(missing)}", where=str(path), fix=fix)
    if not all(isinstance(clf[k], list) and len(clf[k]) == enc["hidden_size"] for k in ("mean", "std", "coef")):
        raise SpilloverError(f"classifier vectors do not all have the encoder's hidden size {enc['hidden_size']}",
                             where=str(path), fix=fix)
    data["_path"], data["_sha256"] = str(path), sha256_file(path)
    return data


def check_encoder_identity(recorded: dict, actual: dict, where: str) -> None:
    """A SpilloverError when the encoder ``actual`` is not the one the classifier in ``where`` was fitted on."""
    for key in IDENTITY_KEYS:
        if recorded.get(key) is not None and recorded.get(key) != actual.get(key):
            raise SpilloverError(
                f"the classifier was fitted on the encoder {recorded.get('name')} ({key} {recorded[key]}), but "
                f"{actual.get('name')} has {key} {actual.get(key)}", where=where,
                fix=f"restore the encoder the file names (ref {recorded.get('ref')!r}), or refit the classifier on "
                    f"this one: {TRAIN_FIX} --model {actual.get('ref')}")


# ------------------------------------------------------------------------------------------------ encoder
_ENCODERS: dict[tuple[str, str | None], tuple[Any, Any, Any, dict]] = {}
_ENCODERS_LOCK = threading.Lock()


def shared_encoder(ref: str, device: str | None = None) -> tuple[Any, Any, Any, dict]:
    """``(model, tokenizer, ModelRef, identity)`` of a frozen float32 encoder, loaded once per process and
    ``(ref, device)``; every classifier reward naming the same encoder shares it."""
    key = (str(ref), device)
    with _ENCODERS_LOCK:
        if key not in _ENCODERS:
            model, tokenizer, model_ref = load_encoder(str(ref), device)
            model.requires_grad_(False)
            _ENCODERS[key] = (model, tokenizer, model_ref, encoder_identity(model, model_ref))
        return _ENCODERS[key]


# ------------------------------------------------------------------------------------------------ reward
@register_reward("classifier", "P(positive class) of a linear probe on a frozen encoder's hidden states "
                 "(`classifier:R.json` or `classifier:bundled:aesthetic_taste`); empty answer 0.")
class ClassifierReward(Reward):
    """A classifier file as a GRPO reward (module docstring)."""

    class Params(StrictModel):
        path: str = Field(description="The classifier file (`spillover rewards train-classifier`) or "
                                      "`bundled:NAME` (shipped: " + ", ".join(SHIPPED) + "); usually written "
                                      "in the reward's name, `classifier:PATH`.")
        batch_size: int = Field(16, ge=1, description="Answers per encoder forward.")
        device: str | None = Field(None, description="Device of the encoder (auto | cpu | cuda); default: auto.")

        @field_validator("path")
        @classmethod
        def _readable(cls, value: str) -> str:
            try:
                read_classifier_file(value)
            except SpilloverError as e:
                raise ValueError(e.render()) from None
            return value

    def __init__(self, params=None, *, encoder: tuple | None = None):
        """``encoder``: ``(model, tokenizer, ModelRef)`` to use instead of the shared one the file names
        (tests, or a caller that already holds the frozen base model); its identity is checked the same way."""
        super().__init__(params)
        self.file = read_classifier_file(self.params.path)
        self.name = self.__name__ = f"classifier:{self.params.path}"
        clf = self.file["classifier"]
        self.layer = int(clf["layer"])
        self._weights = tuple(np.asarray(clf[k], dtype=np.float64) for k in ("mean", "std", "coef"))
        self._intercept = float(clf["intercept"])
        self._given_encoder = encoder
        self._encoder = None

    def encoder(self) -> tuple[Any, Any, Any]:
        """The encoder the file names (loaded on first use), identity-checked against the file."""
        if self._encoder is None:
            if self._given_encoder is not None:
                model, tokenizer, model_ref = self._given_encoder
                identity = encoder_identity(model, model_ref)
            else:
                model, tokenizer, model_ref, identity = shared_encoder(self.file["encoder"]["ref"], self.params.device)
            check_encoder_identity(self.file["encoder"], identity, self.file["_path"])
            if not 0 <= self.layer <= _text_config(model).num_hidden_layers:
                raise SpilloverError(f"classifier layer {self.layer} is outside the encoder", where=self.file["_path"],
                                     fix=TRAIN_FIX)
            self._encoder = (model, tokenizer, model_ref)
        return self._encoder

    def probabilities(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[float]:
        """P(positive) per completion, batched; the answer text excludes ``<think>`` reasoning; empty -> 0."""
        if prompts is None:
            prompts = [None] * len(completions)
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        answers = [split_reasoning(completion_text(c))[1] for c in completions]
        questions = [prompt_text(p) for p in prompts]
        ok = [i for i, a in enumerate(answers) if a.strip()]
        out = [0.0] * len(answers)
        if ok:
            model, tokenizer, _ = self.encoder()
            feats = answer_features(model, tokenizer, [questions[i] for i in ok], [answers[i] for i in ok], self.layer,
                                    self.params.batch_size)
            for i, p in zip(ok, predict_proba(feats, *self._weights, self._intercept)):
                out[i] = float(p)
        return out

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        return self.probabilities(prompts, completions)

    def score_details(self, prompt: Any, completion: Any) -> dict:
        p = self.probabilities([prompt], [completion])[0]
        empty = not split_reasoning(completion_text(completion))[1].strip()
        return {"reward": p, "p_positive": p, "empty": empty}


register_reward_prefix("classifier", "path")

__all__ = ["ClassifierReward", "FILE_FORMAT", "SHIPPED", "check_encoder_identity", "load_answers",
           "read_classifier_file", "resolve_classifier_path", "run_style_check", "shared_encoder",
           "split_prompts", "train_classifier"]
