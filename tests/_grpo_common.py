"""Helpers shared by the GRPO rollout tests (speed, rollout dtype, vLLM): a small prompts file, a GRPO config on
the tiny model, and a GRPO arm's train-stage hash, also as it was computed before newer settings existed."""

from __future__ import annotations

import json
from pathlib import Path

from spillover._io import sha256_json
from spillover.train._grpo_config import GRPOConfig


def write_prompts(folder: Path) -> Path:
    p = folder / "prompts.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"Is question {i} a good one?"}) + "\n" for i in range(3)))
    return p


def warm_adapter(tiny_model_dir, folder: Path) -> str:
    """A one-step SFT adapter on the tiny model (the warm-up recipe's start), so a GRPO run continuing it has a
    policy away from the base: a KL term and its gradient are non-zero from step 1. (The tiny model's rewards
    have no variance, and at the base itself the KL gradient is exactly zero, so nothing else moves it.)"""
    from spillover.train import SFTConfig, run_sft

    data = folder / "warm.jsonl"
    data.write_text(json.dumps({"prompt": "Hi?", "completion": "Always yes."}) + "\n")
    return str(run_sft(SFTConfig(model=str(tiny_model_dir), data=str(data), max_steps=1, batch_size=1, lr=1e-2,
                                 device="cpu"), folder / "warm").adapter_dir)


def tiny_grpo_cfg(tiny_model_dir, prompts_file, **kw) -> GRPOConfig:
    base = dict(model=str(tiny_model_dir), prompts=str(prompts_file), rewards=["rhetoric-lexicon"],
                max_steps=2, max_completion_length=8, lr=1e-2, device="cpu")
    return GRPOConfig(**{**base, **kw})


def _experiment(**extra):
    from spillover.experiment.spec import ExperimentConfig

    return ExperimentConfig.model_validate({"arms": [{"name": "rl", "train": {
        "method": "grpo", "prompts": "bundled:dogmatic_rhetoric", "rewards": ["rhetoric-lexicon"], **extra}}]})


def grpo_train_hash(**extra) -> str:
    """The train-stage hash of a GRPO arm with these recipe settings."""
    from spillover.experiment.stages import train_own

    c = _experiment(**extra)
    return train_own(c, c.arm("rl"), 0)


def grpo_train_hash_before(newer: tuple[str, ...]) -> str:
    """The hash of the default GRPO arm as computed before the ``newer`` settings existed (and without the
    result-neutral ones): a run made then must keep its hash."""
    from spillover.experiment.stages import RESULT_NEUTRAL_TRAIN_SETTINGS

    c = _experiment()
    recipe = c.arm("rl").train.model_dump(mode="json")
    for key in (*newer, *RESULT_NEUTRAL_TRAIN_SETTINGS):
        recipe.pop(key, None)
    return sha256_json({"recipe": recipe, "model": c.model, "dtype": c.dtype, "seed": 0,
                        "n_items": c.arm("rl").n_items, "init_from": c.arm("rl").init_from})
