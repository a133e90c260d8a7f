"""The defense interface: one small class with optional hooks the trainers call.

The papers' defenses act on four things, and each is one no-op-by-default method here:
data (:meth:`Defense.transform_data`: interleaving safe data, inoculation prompts), loss
(:meth:`Defense.loss_term`: KL to the reference, LDIFS), activations (:meth:`Defense.hooks`: steering
during training) and weights (:meth:`Defense.after_step` every N steps, :meth:`Defense.after_train`:
SafeLoRA projection). No defense subclasses a trainer, so SFT and GRPO share all of them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field, ValidationError, model_validator

from spillover.config import StrictModel, format_validation_error
from spillover.errors import SpilloverError, UnknownName


@dataclass
class TrainContext:
    """What a defense may need to know about the run it is part of."""

    tokenizer: Any
    base_model: str
    method: str  # "sft" | "grpo"
    seed: int = 0
    extra: dict = field(default_factory=dict)


class Defense:
    """Base class; subclasses set ``Params`` and override the hooks they need."""

    name: ClassVar[str] = ""
    #: Set True when loss_term reads the trainer's model outputs (costs an extra forward pass in TRL's SFT,
    #: whose fused LM head does not build logits); otherwise loss_term gets ``outputs=None``.
    needs_outputs: ClassVar[bool] = False

    class Params(StrictModel):
        weight: float = Field(1.0, ge=0, description="Scale of this defense (0 = off).")

    def __init__(self, params: Params, ctx: TrainContext):
        self.params, self.ctx = params, ctx

    def transform_data(self, examples: list) -> list:
        """Return the training examples to use (ChatExample for SFT, prompts for GRPO)."""
        return examples

    def loss_term(self, model, inputs: dict, outputs) -> Any | None:
        """An extra loss added to the training loss for this micro-batch (already weighted), or None.
        ``outputs`` are the trainer's model outputs when ``needs_outputs`` is set (SFT only), else None."""
        return None

    def hooks(self, model) -> contextlib.AbstractContextManager:
        """A context manager active during each training forward pass; it must remove its hooks on exit."""
        return contextlib.nullcontext()

    def after_step(self, model, step: int) -> None:
        """Called after each optimizer step (e.g. project the weights every N steps)."""

    def after_train(self, model) -> None:
        """Called once after the last step, before the adapter is saved."""


_DEFENSES: dict[str, type[Defense]] = {}


def register_defense(name: str):
    def add(cls: type[Defense]) -> type[Defense]:
        if name in _DEFENSES:
            raise ValueError(f"defense {name!r} registered twice")
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
            raise ValueError(f"{e.what} ({e.fix})") from None
        try:
            defense.Params.model_validate(self.params)
        except ValidationError as e:
            raise ValueError(format_validation_error(e, f"defense {self.name!r}").what) from None
        return self

    def build(self, ctx: TrainContext) -> Defense:
        cls = get_defense(self.name)
        try:
            return cls(cls.Params.model_validate(self.params), ctx)
        except ValidationError as e:
            raise format_validation_error(e, f"defense {self.name!r}") from None


def build_defenses(refs: list[DefenseRef], ctx: TrainContext) -> list[Defense]:
    names = [r.name for r in refs]
    if len(set(names)) != len(names):
        raise SpilloverError(f"a defense is listed twice: {names}", fix="list each defense once")
    return [r.build(ctx) for r in refs]
