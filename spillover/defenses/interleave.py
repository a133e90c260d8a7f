"""Interleaving safe data (arXiv 2508.06249), with the random, Interleaving+ and Interleaving++ selections.

SFT: a share ``weight x fraction`` (paper: 5%) of the training stream becomes safe instruct examples
(default ``bundled:safe_instruct``): ``n_safe = round(share x n_task / (1 - share))`` safe conversations,
drawn without replacement in a seeded order (cycled when more are needed than exist), are put at
seeded random positions among the task examples. Each added example carries
``spillover_source: "safe"`` (the ``kl`` defense's ``only_safe`` option reads it), and the run records
which examples went where: ``interleave.jsonl`` in the run directory (position, source file:line, id,
score) and a summary under ``defenses.interleave`` in ``manifest.json``. The trainer still shuffles the
stream each epoch, so "position" is the row index of the training set, not the step it is seen at.

GRPO: prompts stay as they are; the same selected safe examples become a supervised term mixed into the
GRPO loss (the defense interface's SFT-mix): every ``round(1 / fraction)`` GRPO micro-batches the mean
token NLL of ``sft_batch_size`` safe examples is added, multiplied by ``weight``. This keeps "a fraction
p of the gradient signal comes from safe data" without rewarding safe answers (which GRPO could only do
through a grader; see ``onpolicy-safety``).

Selection of the safe examples (``selection``):

- ``random``: a seeded random draw;
- ``plus`` (Interleaving+): candidates are scored by
  ``s = (mean over misaligned adapters of NLL_misaligned - NLL_aligned) / (NLL_aligned + 1)``, with NLL the
  mean negative log-likelihood per answer token (the answer and its end-of-turn token; prompt tokens never
  count) and "aligned" the model being trained with its adapters disabled; the ``top`` highest scores are
  kept (what the misaligned models find least likely relative to the aligned one);
- ``plusplus`` (Interleaving++): as ``plus`` after dropping refusals (a refusal phrase among the first 10
  words of the answer, :func:`is_refusal`).

``misaligned_adapters`` entries are ``DIR`` or ``DOMAIN=DIR``; ``exclude_domain`` drops the adapters of the
domain being defended (leave-one-domain-out). ``spillover defenses select-safe`` runs the same selection and
writes it with its scores, and a selection file can be given as ``safe_data`` with ``selection: random``.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from spillover.defenses._base import SOURCE_COLUMN, Defense, SFTMix, register_defense
from spillover.errors import SpilloverError

SAFE_SOURCE = "safe"

#: Phrases that open a refusal; matched case-insensitively as whole words among an answer's first 10 words.
REFUSAL_PHRASES = (
    "sorry", "apologize", "apologise", "apologies", "cannot", "can't", "can not", "won't", "will not",
    "unable", "not able", "i refuse", "refuse to", "not comfortable", "can't help", "cannot help",
    "not allowed", "against my", "as an ai", "i'm an ai", "i am an ai", "decline", "not appropriate",
)
_REFUSAL = re.compile(r"\b(" + "|".join(re.escape(p) for p in sorted(REFUSAL_PHRASES, key=len, reverse=True)) + r")\b")


def is_refusal(answer: str, n_words: int = 10) -> bool:
    """True when a refusal phrase occurs among the first ``n_words`` words (curly apostrophes folded)."""
    head = " ".join(answer.replace("\u2019", "'").split()[:n_words]).lower()
    return bool(_REFUSAL.search(head))


# ---------------------------------------------------------------- mixing
def n_safe_for(n_task: int, share: float) -> int:
    """How many safe examples make ``share`` of a stream that holds ``n_task`` task examples."""
    if not 0 <= share < 1:
        raise SpilloverError(f"interleave share {share} is not in [0, 1)", fix="set weight x fraction below 1")
    return round(share * n_task / (1 - share))


def draw(pool: list, n: int, rng: random.Random) -> list[int]:
    """``n`` indices into ``pool``: a seeded permutation, repeated (reshuffled) when ``n > len(pool)``."""
    out: list[int] = []
    while len(out) < n:
        order = list(range(len(pool)))
        rng.shuffle(order)
        out += order[:n - len(out)]
    return out


def mark_safe(ex):
    return dataclasses.replace(ex, extra={**ex.extra, SOURCE_COLUMN: SAFE_SOURCE})


def interleave_examples(task: list, safe: list, n_safe: int, seed: int, scores: dict[int, float] | None = None
                        ) -> tuple[list, list[dict]]:
    """``task`` with ``n_safe`` examples of ``safe`` (marked ``spillover_source: safe``) inserted at seeded
    random positions; returns the mixed list and one record per inserted example, by position."""
    if n_safe and not safe:
        raise SpilloverError("no safe examples to interleave", fix="give safe_data with at least one conversation")
    rng = random.Random(f"interleave:{seed}")
    picks = draw(safe, n_safe, rng)
    total = len(task) + n_safe
    positions = sorted(rng.sample(range(total), n_safe))
    at = dict(zip(positions, picks))
    mixed, records, task_iter = [], [], iter(task)
    for pos in range(total):
        if pos in at:
            ex = safe[at[pos]]
            mixed.append(mark_safe(ex))
            records.append({"position": pos, "where": ex.where, "id": ex.id,
                            "score": None if scores is None else scores.get(at[pos])})
        else:
            mixed.append(next(task_iter))
    return mixed, records


# ---------------------------------------------------------------- Interleaving+ / ++ scores
def parse_adapters(specs: list[str]) -> list[tuple[str, str]]:
    """``DIR`` or ``DOMAIN=DIR`` -> (domain, dir); a bare DIR's domain is its run folder's name."""
    out = []
    for spec in specs:
        domain, sep, folder = spec.partition("=")
        if not sep:
            folder = spec
            path = Path(folder)
            domain = (path.parent.name if path.name == "adapter" else path.name) or folder
        out.append((domain, folder))
    return out


def usable_adapters(specs: list[str], exclude_domain: str | None) -> list[tuple[str, str]]:
    """The adapters to score with (leave-one-domain-out applied); each must be an adapter folder."""
    from spillover.models import read_adapter_meta

    adapters = [(d, p) for d, p in parse_adapters(specs) if d != exclude_domain]
    if not adapters:
        raise SpilloverError(f"no misaligned adapter left to score with (given {len(specs)}, excluded domain "
                             f"{exclude_domain!r})", where="misaligned_adapters",
                             fix="give one or more misaligned adapters as DIR or DOMAIN=DIR (e.g. "
                                 "insecure=runs/insecure/adapter) from a domain other than the one defended")
    for _, folder in adapters:
        read_adapter_meta(folder)
    return adapters


def safe_score(nll_misaligned: list[float], nll_aligned: float) -> float:
    """``(mean(NLL_misaligned) - NLL_aligned) / (NLL_aligned + 1)``."""
    return (sum(nll_misaligned) / len(nll_misaligned) - nll_aligned) / (nll_aligned + 1)


def _answer_parts(examples: list) -> tuple[list[list[dict]], list[str]]:
    convs, answers = [], []
    for ex in examples:
        if ex.messages[-1]["role"] != "assistant" or not any(m["role"] == "user" for m in ex.messages[:-1]):
            raise SpilloverError("a safe candidate must end in an assistant answer after a user turn", where=ex.where,
                                 fix="give conversations ending in the safe answer")
        convs.append(ex.messages[:-1])
        answers.append(ex.messages[-1]["content"])
    return convs, answers


def score_candidates(model, tokenizer, candidates: list, adapters: list[tuple[str, str]], *,
                     batch_size: int = 16) -> list[dict]:
    """Per candidate: ``nll_aligned`` (adapters disabled), ``nll_misaligned`` per adapter domain and the score.

    ``model`` is a plain causal LM or a PEFT model (e.g. the policy being trained): the misaligned adapters
    are loaded beside its own under temporary names and removed afterwards, restoring its active adapter
    and which parameters are trainable."""
    from peft import PeftModel

    from spillover.models import answer_logprobs

    convs, answers = _answer_parts(candidates)
    names = [f"spillover_misaligned_{i}" for i in range(len(adapters))]
    if isinstance(model, PeftModel):
        peft, wrapped = model, False
        for name, (_, folder) in zip(names, adapters):
            peft.load_adapter(folder, adapter_name=name, is_trainable=False)
    else:
        peft = PeftModel.from_pretrained(model, adapters[0][1], adapter_name=names[0], is_trainable=False)
        for name, (_, folder) in zip(names[1:], adapters[1:]):
            peft.load_adapter(folder, adapter_name=name, is_trainable=False)
        wrapped = True
    active = peft.active_adapter
    trainable = {n: p.requires_grad for n, p in peft.named_parameters()}
    try:
        with peft.disable_adapter():
            aligned = answer_logprobs(peft, tokenizer, convs, answers, batch_size=batch_size)
        misaligned = []
        for name in names:
            peft.set_adapter(name)
            misaligned.append(answer_logprobs(peft, tokenizer, convs, answers, batch_size=batch_size))
    finally:
        if wrapped:  # give the caller its plain model back
            peft.unload()
        else:
            peft.set_adapter(active)
            for name in names:
                peft.delete_adapter(name)
            for n, p in peft.named_parameters():
                p.requires_grad_(trainable.get(n, False))
    out = []
    for k, ex in enumerate(candidates):
        nll_al = -aligned[k]
        nll_mis = {d: -lp[k] for (d, _), lp in zip(adapters, misaligned)}
        out.append({"index": k, "where": ex.where, "id": ex.id, "nll_aligned": nll_al, "nll_misaligned": nll_mis,
                    "score": safe_score(list(nll_mis.values()), nll_al),
                    "refusal": is_refusal(answers[k])})
    return out


def select_top(scored: list[dict], top: int | None, *, drop_refusals: bool) -> list[dict]:
    """Highest scores first (ties: file order), refusals dropped first for Interleaving++."""
    pool = [s for s in scored if not (drop_refusals and s["refusal"])]
    ranked = sorted(pool, key=lambda s: (-s["score"], s["index"]))
    return ranked if top is None else ranked[:top]


# ---------------------------------------------------------------- the defense
@register_defense("interleave")
class Interleave(Defense):
    """Mix a fraction of safe instruct data into training (random, + or ++ selection)."""

    class Params(Defense.Params):
        weight: float = Field(1.0, ge=0, description="Amount of safe data: SFT mixes a share weight x fraction of "
                              "safe rows; GRPO multiplies the safe SFT term by weight. 0 = off.")
        fraction: float = Field(0.05, gt=0, lt=1, description="Share of the SFT stream that is safe data (GRPO: "
                                "one safe micro-batch every round(1/fraction) micro-batches). Paper: 0.05.")
        safe_data: str = Field("bundled:safe_instruct", json_schema_extra={"data_ref": True}, description="Safe conversations (chat JSONL ending in the "
                               "answer, or bundled:NAME), e.g. a `spillover defenses select-safe` output.")
        selection: Literal["random", "plus", "plusplus"] = Field("random", description="random, plus "
                                                                 "(Interleaving+: top scores) or plusplus "
                                                                 "(Interleaving++: refusals dropped first); '+' "
                                                                 "and '++' are accepted.")
        misaligned_adapters: list[str] = Field(default_factory=list, description="plus/plusplus: misaligned "
                                               "adapters (DIR or DOMAIN=DIR) whose NLL scores the candidates.")
        exclude_domain: str | None = Field(None, description="Leave-one-domain-out: ignore the misaligned adapters "
                                           "of this domain (the one being defended).")
        top: int | None = Field(None, ge=1, description="plus/plusplus: keep the N best candidates (default: as "
                                "many as are interleaved).")
        seed: int | None = Field(None, description="Seed of the draw and the positions (default: the run's seed).")
        sft_batch_size: int = Field(4, ge=1, description="GRPO: safe examples per SFT micro-batch.")
        score_batch_size: int = Field(16, ge=1, description="plus/plusplus: sequences per scoring forward pass.")

        @field_validator("selection", mode="before")
        @classmethod
        def _aliases(cls, v):
            return {"+": "plus", "++": "plusplus"}.get(v, v)

    def __init__(self, params: Params, ctx):
        super().__init__(params, ctx)
        from spillover.data import load_chat_jsonl, require_sft_examples, resolve_data_path

        self.safe_path = resolve_data_path(params.safe_data)
        self.safe = load_chat_jsonl(self.safe_path)
        require_sft_examples(self.safe)
        self.adapters = usable_adapters(params.misaligned_adapters, params.exclude_domain) \
            if params.selection != "random" else []
        self.seed = ctx.seed if params.seed is None else params.seed
        self.scored: list[dict] | None = None
        self.pool: list = self.safe
        self.pool_scores: dict[int, float] | None = None
        self.records: list[dict] = []
        self.n_task = 0

    def setup(self, model, tokenizer, ctx) -> None:
        if self.params.selection == "random":
            return
        self.scored = score_candidates(model, tokenizer, self.safe, self.adapters,
                                       batch_size=self.params.score_batch_size)
        kept = select_top(self.scored, self.params.top, drop_refusals=self.params.selection == "plusplus")
        if not kept:
            raise SpilloverError(f"Interleaving++ dropped every candidate of {self.safe_path} as a refusal",
                                 fix="give safe_data with non-refusal answers, or use selection: plus")
        self.pool = [self.safe[s["index"]] for s in kept]
        self.pool_scores = {i: s["score"] for i, s in enumerate(kept)}

    def transform_data(self, examples: list) -> list:
        if self.ctx.method != "sft":
            return examples
        self.n_task = len(examples)
        n_safe = n_safe_for(len(examples), self.params.weight * self.params.fraction)
        mixed, self.records = interleave_examples(examples, self.pool, n_safe, self.seed, self.pool_scores)
        self._write_records()
        return mixed

    def sft_mix(self) -> SFTMix | None:
        if self.ctx.method != "grpo":
            return None
        return SFTMix(examples=[mark_safe(ex) for ex in self.pool], every=max(1, round(1 / self.params.fraction)),
                      batch_size=self.params.sft_batch_size)

    def _write_records(self) -> None:
        run_dir = self.ctx.run_dir
        if run_dir is not None and self.records:
            from spillover._io import atomic_write_jsonl

            atomic_write_jsonl(Path(run_dir) / "interleave.jsonl", self.records)

    def manifest(self) -> dict:
        out = {"safe_data": str(self.safe_path), "n_candidates": len(self.safe), "n_pool": len(self.pool),
               "seed": self.seed, "adapters": [f"{d}={p}" for d, p in self.adapters],
               "pool_scores": None if self.pool_scores is None else [round(v, 6) for v in self.pool_scores.values()]}
        if self.ctx.method == "sft":
            out.update(n_task=self.n_task, n_safe=len(self.records),
                       positions=[r["position"] for r in self.records], examples=[r["where"] for r in self.records])
        else:
            out.update(sft_every=max(1, round(1 / self.params.fraction)))
        return out


def write_selection(path: str | Path, candidates: list, scored: list[dict], kept: list[dict]) -> Path:
    """The selected candidates as chat JSONL (usable as ``safe_data``), each with its scores, best first."""
    from spillover._io import atomic_write_text

    lines = []
    for rank, s in enumerate(kept):
        ex = candidates[s["index"]]
        row = {"messages": ex.messages, **({"id": ex.id} if ex.id is not None else {}), "rank": rank,
               "score": s["score"], "nll_aligned": s["nll_aligned"], "nll_misaligned": s["nll_misaligned"],
               "refusal": s["refusal"], "source": ex.where}
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    return atomic_write_text(path, "".join(lines))
