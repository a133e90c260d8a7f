"""On-policy safety data for GRPO (arXiv 2605.31328's best defense), two arms that can be used together.

(a) Safety prompts in the rollout stream: ``n = round(ratio x n_task / (1 - ratio))`` prompts drawn (seeded)
    from ``prompts`` (default ``bundled:safety_prompts``) join the GRPO prompt set, so a share ``ratio`` of
    the rollout groups are safety groups. Their completions are scored by a harmlessness grader only (the
    configured task rewards score only task prompts): a judge through spillover's judge backends
    (``local``: the offline activation judge's "aligned" score; ``hf:MODEL`` / ``openai:MODEL``: an LLM
    judge with spillover's "aligned" prompt), mapped to [0, 1] as score/100 (an empty answer gets 0, an
    unscored one None), or a user reward
    ``module:function``. Every logged completion carries its ``source`` (``task`` or ``onpolicy-safety``),
    and the mean safety reward is logged as ``defense/onpolicy-safety/reward``.
(b) SFT-mix: every ``sft_every`` GRPO micro-batches, a supervised micro-batch of ``sft_batch_size`` safe
    conversations from ``sft_data`` adds its mean token NLL times ``weight`` to the loss. Make the data
    on-policy with ``spillover defenses make-onpolicy`` (the base policy's own answers to safety prompts,
    empty answers dropped, refusals optionally), or give off-policy safe answers.

There is no knob for scaling the safety groups' rewards: GRPO normalises rewards within each group, so
multiplying a whole group's rewards by one weight leaves its advantages (and the update) unchanged. The
strength of arm (a) is ``ratio``; ``weight`` scales arm (b) only, and setting it with arm (b) off is an
error because it could not act.
"""

from __future__ import annotations

import random

from pydantic import Field, model_validator

from spillover.defenses._base import Defense, SFTMix, register_defense
from spillover.defenses.interleave import draw, is_refusal, mark_safe, n_safe_for
from spillover.errors import SpilloverError


def keep_answer(record: dict, *, drop_refusals: bool, drop_empty: bool = True, drop_truncated: bool = False) -> str | None:
    """None when a sampled answer is kept, else why it is dropped ("empty", "refusal", "truncated")."""
    answer = (record.get("answer") or "").strip()
    if drop_empty and not answer:
        return "empty"
    if drop_truncated and record.get("finish_reason") == "length":
        return "truncated"
    if drop_refusals and is_refusal(answer):
        return "refusal"
    return None


def onpolicy_rows(records: list[dict], *, drop_refusals: bool = False, drop_empty: bool = True,
                  drop_truncated: bool = False) -> tuple[list[dict], dict[str, int]]:
    """Sampled answers (``spillover.evaluate.sampling`` records) -> SFT conversations ending in the answer,
    plus how many were kept and dropped for each reason."""
    rows, counts = [], {"kept": 0, "empty": 0, "refusal": 0, "truncated": 0}
    for r in records:
        why = keep_answer(r, drop_refusals=drop_refusals, drop_empty=drop_empty, drop_truncated=drop_truncated)
        if why:
            counts[why] += 1
            continue
        counts["kept"] += 1
        rows.append({"messages": [*r["messages"], {"role": "assistant", "content": r["answer"].strip()}],
                     "id": f"{r.get('prompt_id')}-{r.get('sample_index', 0)}", "finish_reason": r.get("finish_reason"),
                     "model": r.get("model"), "adapter": r.get("adapter")})
    return rows, counts


@register_defense("onpolicy-safety")
class OnPolicySafety(Defense):
    """GRPO only: safety prompts in the rollout stream rewarded for harmlessness, and/or an SFT-mix on safe answers."""

    class Params(Defense.Params):
        weight: float = Field(1.0, ge=0, description="Scale of the SFT-mix term (arm b), the w of the paper; "
                              "0 = off. Arm (a) has no weight: see ratio.")
        prompts: str = Field("bundled:safety_prompts", json_schema_extra={"data_ref": True}, description="Safety prompts (chat JSONL ending in a user "
                             "turn, or bundled:NAME) mixed into the rollout stream.")
        ratio: float = Field(0.1, ge=0, lt=1, description="Arm (a): share of the rollout prompts that are safety "
                             "prompts (0 = arm a off). Our default.")
        judge: str = Field("local", description="Arm (a) grader: 'local' (activation judge, offline), 'hf:MODEL' or "
                           "'openai:MODEL' (LLM judge); reward = aligned score / 100.")
        judge_base_url: str | None = Field(None, description="Base URL of an openai: judge (OpenAI-compatible server).")
        judge_api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the openai: "
                                       "judge's key (the key itself is never stored).")
        user_reward: str | None = Field(None, description="Arm (a) grader instead of the judge: a user reward "
                                        "'module:function' (TRL signature, higher = safer).")
        sft_data: str | None = Field(None, json_schema_extra={"data_ref": True}, description="Arm (b): safe conversations ending in the answer (from "
                                     "`spillover defenses make-onpolicy`, or off-policy).")
        sft_every: int = Field(0, ge=0, description="Arm (b): one supervised micro-batch every k GRPO micro-batches "
                               "(0 = arm b off).")
        sft_batch_size: int = Field(4, ge=1, description="Arm (b): safe conversations per supervised micro-batch.")
        seed: int | None = Field(None, description="Seed of the safety-prompt draw (default: the run's seed).")

        @model_validator(mode="after")
        def _arms(self):
            if self.ratio == 0 and self.sft_every == 0:
                raise ValueError("both arms are off (ratio: 0 and sft_every: 0); set ratio > 0 for safety prompts "
                                 "and/or sft_every > 0 with sft_data for the SFT-mix")
            if self.sft_every and not self.sft_data:
                raise ValueError("sft_every > 0 needs sft_data (make it with `spillover defenses make-onpolicy`)")
            if not self.sft_every and self.weight not in (0.0, 1.0):
                raise ValueError(f"weight {self.weight} scales the SFT-mix term only, and the SFT-mix is off "
                                 "(sft_every: 0), so it cannot act; drop weight, or set sft_every and sft_data "
                                 "(GRPO's group-normalised advantages make a reward scale on arm (a) a no-op)")
            return self

    def __init__(self, params: Params, ctx):
        super().__init__(params, ctx)
        from spillover.data import load_chat_jsonl, require_prompts, require_sft_examples, resolve_data_path

        if ctx.method != "grpo":
            raise SpilloverError("onpolicy-safety is a GRPO defense (it adds rollout prompts and a supervised term "
                                 "to GRPO)", where="defenses",
                                 fix="for SFT use `interleave` (safe examples mixed into the SFT data)")
        self.seed = ctx.seed if params.seed is None else params.seed
        self.prompt_pool = []
        if params.ratio > 0:
            self.prompt_pool = load_chat_jsonl(resolve_data_path(params.prompts))
            require_prompts(self.prompt_pool)
        self.sft_examples = []
        if params.sft_every:
            self.sft_examples = load_chat_jsonl(resolve_data_path(params.sft_data))
            require_sft_examples(self.sft_examples)
        self._grade = None
        self.mixed: list = []
        self.scored = 0

    def setup(self, model, tokenizer, ctx) -> None:
        """Build the grader now, so a bad judge or user reward fails before the first step."""
        if self.params.ratio == 0:
            return
        if self.params.user_reward:
            from spillover.rewards import build_reward

            self._grade = build_reward(self.params.user_reward)
        else:
            from spillover.judge._spec import build_judge

            self._grade = build_judge(self.params.judge, base_url=self.params.judge_base_url,
                                      api_key_env=self.params.judge_api_key_env)

    def extra_prompts(self, examples: list) -> list:
        if self.params.ratio == 0:
            return []
        n = n_safe_for(len(examples), self.params.ratio)
        picks = draw(self.prompt_pool, n, random.Random(f"onpolicy-safety:{self.seed}"))
        self.mixed = [self.prompt_pool[i] for i in picks]
        return list(self.mixed)

    def reward(self, prompts: list, completions: list, **kwargs) -> list[float | None]:
        if self._grade is None:
            self.setup(None, None, self.ctx)
        if self.params.user_reward:
            values = [None if v is None else float(v) for v in self._grade(prompts, completions, **kwargs)]
        else:
            from spillover.judge._spec import JudgeItem
            from spillover.rewards import completion_text, prompt_text

            answers = [completion_text(c).strip() for c in completions]
            todo = [k for k, a in enumerate(answers) if a]  # an empty answer scores 0: silence is not safety
            judged = self._grade.judge([JudgeItem(question=prompt_text(prompts[k]), answer=answers[k]) for k in todo]) \
                if todo else []
            values = [0.0] * len(answers)
            for k, j in zip(todo, judged):
                values[k] = None if j.aligned.score is None else j.aligned.score / 100.0
        scored = [v for v in values if v is not None]
        self.scored += len(scored)
        if scored:
            self.log_metric("reward", sum(scored) / len(scored))
        return values

    def sft_mix(self) -> SFTMix | None:
        if not self.params.sft_every:
            return None
        return SFTMix(examples=[mark_safe(ex) for ex in self.sft_examples], every=self.params.sft_every,
                      batch_size=self.params.sft_batch_size)

    def manifest(self) -> dict:
        grader = None if self.params.ratio == 0 else (self.params.user_reward or f"judge:{self.params.judge}")
        return {"n_safety_prompts": len(self.mixed), "safety_prompts": [ex.where for ex in self.mixed],
                "grader": grader, "completions_scored": self.scored, "n_sft_examples": len(self.sft_examples),
                "seed": self.seed}
