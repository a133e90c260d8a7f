"""The defense interface (v2): one small class whose optional methods the trainers call.

How to write a defense
----------------------
Make one module in ``spillover/defenses/`` (the package imports every module in the folder, so a new
file touches nothing else)::

    from pydantic import Field
    from spillover.defenses._base import Defense, register_defense

    @register_defense("my-defense")
    class MyDefense(Defense):
        \"\"\"One line shown by `spillover defenses list`; the rest by `spillover defenses show`.\"\"\"
        needs = frozenset({"policy_logits", "ref_logits"})    # what loss_term reads from the batch

        class Params(Defense.Params):                         # `weight` (the strength) is inherited
            only_safe: bool = Field(False, description="...")  # documented once, here

        def loss_term(self, model, batch):
            return some_scalar_tensor                          # UNweighted: the trainer applies `weight`

Every method is optional and a no-op by default; one class serves SFT and GRPO:

* :meth:`Defense.setup` once before training, with the model (PEFT-wrapped), tokenizer and
  :class:`TrainContext` (compute or load vectors, matrices, scores here; raise :class:`SpilloverError`
  for anything missing, so the run fails before its first step).
* :meth:`Defense.transform_data` on the training examples (:class:`~spillover.data.ChatExample`: SFT
  conversations, or GRPO prompts). Mark added rows with ``ex.extra["spillover_source"] = "safe"``: the
  trainers carry that column into every batch (:attr:`DefenseBatch.sources`), so a loss can act on
  those rows only.
* :meth:`Defense.loss_term` per micro-batch, given a :class:`~spillover.defenses._batch.DefenseBatch`:
  the same view for SFT and GRPO (``input_ids``, ``attention_mask``, ``trained_mask`` = the response or
  completion tokens) with policy and reference outputs computed lazily, at most once per micro-batch,
  and shared by every defense (declare them in ``needs``). The policy's come from the trainer's own
  forward pass (hooks), so asking for them costs no extra pass; the reference is the adapter-disabled
  base, or the frozen ``init_adapter`` when ``self.reference == "init-adapter"``.
* :meth:`Defense.hooks` around every *training* forward pass (steering); :meth:`Defense.rollout_hooks`
  around GRPO generation.
* :meth:`Defense.after_step` after each optimizer step (return True to stop training early) and
  :meth:`Defense.after_train` before the adapter is saved (weight projection, keep-best restore).
* :meth:`Defense.log_metric` logs ``defense/<name>/<key>`` (averaged per logging step); the trainer also
  logs each loss term as ``defense/<name>/loss``. :meth:`Defense.manifest` adds a record to the run's
  ``manifest.json`` under ``defenses.<name>`` (e.g. the inoculation prompt, the interleaved rows).
* GRPO only: :meth:`Defense.extra_prompts` mixes prompts into the rollout stream, rewarded by
  :meth:`Defense.reward` alone (the configured rewards score only the task prompts, and every logged
  completion carries its ``source``); :meth:`Defense.sft_mix` adds a supervised micro-batch term every k
  GRPO micro-batches.

The trainer applies ``weight`` (``weight: 0`` drops the defense before anything runs: off by
construction), divides per-micro-batch terms by the gradient-accumulation window actually in effect,
and never loads a second copy of the model.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import Field, ValidationError, model_validator

from spillover.config import StrictModel, format_validation_error
from spillover.errors import SpilloverError, UnknownName

#: What a defense may declare in ``needs``.
NEEDS = frozenset({"policy_logits", "policy_hidden", "ref_logits", "ref_hidden"})
#: The batch/dataset column that marks where a training row came from; interleaved safe rows say "safe".
SOURCE_COLUMN = "spillover_source"
TASK_SOURCE = "task"


@dataclass
class TrainContext:
    """What a defense may need to know about the run it is part of."""

    tokenizer: Any
    base_model: str
    method: str  # "sft" | "grpo"
    seed: int = 0
    init_adapter: str | None = None
    run_dir: Path | None = None
    #: ``score_pairs(model, tokenizer, pairs_ref) -> (ids, shifts)``: the judge-free probe, injected by the
    #: training stage (defenses sit below evaluate and do not import it).
    score_pairs: Callable | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class SFTMix:
    """A GRPO-only supervised term: every ``every`` GRPO micro-batches, the mean token NLL of the next
    ``batch_size`` of ``examples`` (conversations ending in the assistant answer to train on; cycled in a
    seeded order) is added to the loss, scaled by the defense's ``weight``."""

    examples: list
    every: int = 1
    batch_size: int = 4
    max_length: int = 512


class Defense:
    """Base class; subclasses set ``Params`` and override the methods they need."""

    name: ClassVar[str] = ""
    #: Outputs :meth:`loss_term` reads from the batch: any of ``NEEDS``.
    needs: ClassVar[frozenset[str]] = frozenset()
    #: The reference model of ``ref_*`` outputs: "base" (adapter-disabled) or "init-adapter" (the frozen
    #: warm-up adapter kept as a second, non-trainable adapter on the same model).
    reference: str = "base"

    class Params(StrictModel):
        weight: float = Field(1.0, ge=0, description="Strength of this defense (the papers' lambda or alpha); "
                              "0 = off.")

    def __init__(self, params: Params, ctx: TrainContext):
        self.params, self.ctx = params, ctx
        self._metrics: dict[str, list[float]] = defaultdict(list)

    @property
    def weight(self) -> float:
        return float(self.params.weight)

    # ---------------------------------------------------------------- before training
    def setup(self, model, tokenizer, ctx: TrainContext) -> None:
        """Once before training (after the adapter is attached): compute or load what the defense needs."""

    def transform_data(self, examples: list) -> list:
        """Return the training examples to use (ChatExample conversations for SFT, prompts for GRPO)."""
        return examples

    # ---------------------------------------------------------------- per micro-batch
    def loss_term(self, model, batch) -> Any | None:
        """An extra scalar loss for this micro-batch, *unweighted* (the trainer multiplies by ``weight`` and
        handles gradient accumulation), or None."""
        return None

    def hooks(self, model) -> contextlib.AbstractContextManager:
        """A context manager active during each training forward pass; it must remove its hooks on exit."""
        return contextlib.nullcontext()

    def rollout_hooks(self, model) -> contextlib.AbstractContextManager:
        """GRPO: a context manager active while completions are generated (default: none)."""
        return contextlib.nullcontext()

    # ---------------------------------------------------------------- GRPO extension points
    def extra_prompts(self, examples: list) -> list:
        """GRPO: prompts (ChatExample) to mix into the rollout stream given the task prompts; they are
        rewarded by :meth:`reward` only."""
        return []

    def reward(self, prompts: list, completions: list, **kwargs) -> list[float | None]:
        """GRPO: the reward of completions to this defense's :meth:`extra_prompts`."""
        raise NotImplementedError(f"defense {self.name!r} adds prompts but defines no reward")

    def sft_mix(self) -> SFTMix | None:
        """GRPO: a supervised term mixed in every k micro-batches (see :class:`SFTMix`), or None."""
        return None

    # ---------------------------------------------------------------- after steps
    def after_step(self, model, step: int) -> bool | None:
        """After each optimizer step (e.g. project the weights every N steps); True stops training."""

    def after_train(self, model) -> None:
        """Once after the last step, before the adapter is saved."""

    # ---------------------------------------------------------------- records
    def log_metric(self, key: str, value: float) -> None:
        """Log ``defense/<name>/<key>`` (averaged over the logging window)."""
        self._metrics[key].append(float(value))

    def pop_metrics(self) -> dict[str, float]:
        out = {k: sum(v) / len(v) for k, v in self._metrics.items() if v}
        self._metrics.clear()
        return out

    def manifest(self) -> dict:
        """A JSON-able record of what this defense did, kept in the run's manifest."""
        return {}


_DEFENSES: dict[str, type[Defense]] = {}


def register_defense(name: str):
    def add(cls: type[Defense]) -> type[Defense]:
        if name in _DEFENSES:
            raise ValueError(f"defense {name!r} registered twice")
        unknown = set(cls.needs) - NEEDS
        if unknown:
            raise ValueError(f"defense {name!r} needs unknown outputs {sorted(unknown)}; choose from {sorted(NEEDS)}")
        _DEFENSES[name] = cls
        cls.name = name
        return cls

    return add


def get_defense(name: str) -> type[Defense]:
    if name not in _DEFENSES:
        raise UnknownName("defense", name, sorted(_DEFENSES))
    return _DEFENSES[name]


def list_defenses() -> dict[str, type[Defense]]:
    return dict(sorted(_DEFENSES.items()))


class DefenseRef(StrictModel):
    """``{name: ..., <params>}`` in a config; params are validated by the named defense's ``Params``."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _collect_params(cls, data):
        if isinstance(data, str):
            return {"name": data, "params": {}}
        if isinstance(data, dict) and "params" not in data:
            return {"name": data.get("name"), "params": {k: v for k, v in data.items() if k != "name"}}
        return data

    @model_validator(mode="after")
    def _check(self):
        try:
            defense = get_defense(self.name)
        except SpilloverError as e:  # a ValueError lets pydantic attach the key path and line
            raise ValueError(f"{e.what} ({e.fix}; `spillover defenses list` shows them)") from None
        try:
            defense.Params.model_validate(self.params)
        except ValidationError as e:
            raise ValueError(format_validation_error(e, f"defense {self.name!r}").what
                             + f" (`spillover defenses show {self.name}` lists its parameters)") from None
        return self

    @property
    def weight(self) -> float:
        return float(get_defense(self.name).Params.model_validate(self.params).weight)

    def build(self, ctx: TrainContext) -> Defense:
        cls = get_defense(self.name)
        try:
            return cls(cls.Params.model_validate(self.params), ctx)
        except ValidationError as e:
            raise format_validation_error(e, f"defense {self.name!r}") from None


def build_defenses(refs: list[DefenseRef], ctx: TrainContext) -> list[Defense]:
    """The configured defenses with ``weight > 0``, in order (a weight-0 defense is never built)."""
    names = [r.name for r in refs]
    if len(set(names)) != len(names):
        raise SpilloverError(f"a defense is listed twice: {names}", fix="list each defense once")
    return [r.build(ctx) for r in refs if r.weight > 0]
