"""The reward interface and registry.

A reward is a :class:`Reward` subclass registered under a name, with a one-line ``description`` and a
``Params`` :class:`~spillover.config.StrictModel`. An instance is a TRL reward function:
``reward(prompts, completions, **kwargs) -> list[float]``, where completions are strings or chat
messages (the last assistant content is scored, see :mod:`spillover.rewards._text`). Every reward also
has ``score_details(prompt, completion) -> dict`` with ``reward`` and its sub-scores, for debugging one
answer (``spillover rewards score``).

Runtime dependencies that are not config (the judge's ``grade`` callable, a ``coherence_fn``) are
keyword arguments of the constructor. :func:`build_reward` passes each reward only the dependencies its
constructor names, so one call site can build every reward of an experiment with the same keywords.

What must not live here: the judge's HTTP client, the trainer.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, TypeVar

from pydantic import Field, ValidationError, model_validator

from spillover.config import StrictModel, format_validation_error
from spillover.errors import SpilloverError, UnknownName

T = TypeVar("T")


class Reward:
    """Base class: subclasses set ``Params`` and implement :meth:`score_details`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    class Params(StrictModel):
        pass

    def __init__(self, params: StrictModel | dict | None = None):
        if params is None or isinstance(params, dict):
            try:
                params = self.Params.model_validate(params or {})
            except ValidationError as e:
                raise format_validation_error(e, f"reward {self.name!r}") from None
        self.params = params
        self.__name__ = self.name  # TRL names a reward's logged columns after ``__name__``

    def score_details(self, prompt: Any, completion: Any) -> dict:
        """``{"reward": float, ...sub-scores}`` for one prompt and completion."""
        raise NotImplementedError

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        if prompts is None:
            prompts = [None] * len(completions)
        return [float(self.score_details(p, c)["reward"]) for p, c in zip(prompts, completions, strict=True)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.params!r})"


_REWARDS: dict[str, type[Reward]] = {}


def register_reward(name: str, description: str):
    """Class decorator: register ``cls`` under ``name`` with a one-line ``description``."""
    if "\n" in description or not description.strip():
        raise ValueError(f"reward {name!r}: the description must be one non-empty line")

    def add(cls: type[Reward]) -> type[Reward]:
        if name in _REWARDS:
            raise ValueError(f"reward {name!r} registered twice")
        _REWARDS[name] = cls
        cls.name, cls.description = name, description
        return cls

    return add


def get_reward(name: str) -> type[Reward]:
    """The registered reward class called ``name``; an unknown name raises with a did-you-mean."""
    if name not in _REWARDS:
        raise UnknownName("reward", name, sorted(_REWARDS))
    return _REWARDS[name]


def list_rewards() -> dict[str, type[Reward]]:
    """Every registered reward by name, sorted."""
    return dict(sorted(_REWARDS.items()))


#: ``PREFIX:VALUE`` reward names that mean the registered reward ``PREFIX`` with one param set to VALUE
#: (``classifier:R.json`` is the reward ``classifier`` with ``path: R.json``)
_SPEC_PREFIXES: dict[str, str] = {}


def register_reward_prefix(prefix: str, param: str) -> None:
    """Let ``PREFIX:VALUE`` name the registered reward ``prefix`` with ``param`` = VALUE."""
    _SPEC_PREFIXES[prefix] = param


def split_reward_spec(name: str, params: dict | None = None) -> tuple[str, dict]:
    """``(registered name, params)`` of a reward name: ``PREFIX:VALUE`` becomes ``PREFIX`` with its param
    set; any other name is returned as is. An empty VALUE or a conflicting param is an error."""
    params = dict(params or {})
    prefix, sep, value = name.partition(":")
    if not sep or prefix not in _SPEC_PREFIXES or name in _REWARDS:
        return name, params
    param = _SPEC_PREFIXES[prefix]
    if not value.strip():
        raise SpilloverError(f"{name!r} names no {param}", where=f"reward {name!r}",
                             fix=f"write {prefix}:<{param}>, e.g. {prefix}:R.json")
    if param in params and params[param] != value:
        raise SpilloverError(f"{name!r} sets {param} to {value!r}, but the params set it to {params[param]!r}",
                             where=f"reward {name!r}", fix=f"give the {param} once: in the name or in the params")
    return prefix, {**params, param: value}


def is_user_reward_spec(name: str) -> bool:
    """``module:function`` names a user reward; ``grader:...``, ``PREFIX:VALUE`` of a registered prefix
    (``classifier:R.json``) and plain names are registry names."""
    return (":" in name and not name.startswith("grader:") and name not in _REWARDS
            and name.partition(":")[0] not in _SPEC_PREFIXES)


def build_reward(name: str, params: dict | None = None, **deps: Any) -> Reward:
    """An instance of the registered reward ``name`` (or a user reward ``module:function``) with
    ``params`` validated; ``deps`` the constructor does not take are not passed."""
    if is_user_reward_spec(name):
        from spillover.rewards._user import UserReward

        return UserReward(name, params or {})
    name, params = split_reward_spec(name, params)
    cls = get_reward(name)
    accepted = inspect.signature(cls.__init__).parameters
    return cls(params or {}, **{k: v for k, v in deps.items() if k in accepted})


class RewardRef(StrictModel):
    """``{name: ..., weight: ..., <params>}`` in a config; params are validated by the reward's ``Params``."""

    name: str = Field(description="A registered reward (`spillover rewards list`) or a user reward `module:function`.")
    weight: float = Field(1.0, description="This reward's weight in the sum GRPO optimises (TRL `reward_weights`).")
    params: dict[str, Any] = Field(default_factory=dict, description="The reward's parameters.")

    @model_validator(mode="before")
    @classmethod
    def _collect_params(cls, data):
        if isinstance(data, str):
            return {"name": data}
        if isinstance(data, dict) and "params" not in data:
            return {"name": data.get("name"), "weight": data.get("weight", 1.0),
                    "params": {k: v for k, v in data.items() if k not in ("name", "weight")}}
        return data

    @model_validator(mode="after")
    def _check(self):
        """Errors become ValueErrors so a config loader reports them at the key's file and line."""
        try:
            if is_user_reward_spec(self.name):
                from spillover.rewards._user import check_user_params, load_user_reward

                check_user_params(self.name, load_user_reward(self.name), self.params)
            else:
                name, params = split_reward_spec(self.name, self.params)
                get_reward(name).Params.model_validate(params)
        except ValidationError as e:
            raise ValueError(format_validation_error(e, f"reward {self.name!r}").what) from None
        except SpilloverError as e:
            raise ValueError(e.render()) from None
        return self

    def build(self, **deps: Any) -> Reward:
        return build_reward(self.name, self.params, **deps)


def set_reward_params(refs: list[RewardRef], name: str, params: dict[str, Any], *, source: str) -> list[RewardRef]:
    """``refs`` with ``params`` merged into every reward called ``name`` (``params`` win), re-validated.
    Used for command-line flags that set one reward's params, whether the rewards came from other flags
    or from a config file; no reward called ``name`` is an error naming ``source``, never a silent no-op."""
    if not any(ref.name == name for ref in refs):
        listed = ", ".join(ref.name for ref in refs) or "none"
        raise SpilloverError(f"{source} sets {name} parameters, but the rewards are: {listed}", where=source,
                             fix=f"add the {name} reward (--reward {name} or in the config's rewards), "
                                 f"or drop {source}")
    try:
        return [RewardRef.model_validate({"name": ref.name, "weight": ref.weight, "params": {**ref.params, **params}})
                if ref.name == name else ref for ref in refs]
    except ValidationError as e:
        raise format_validation_error(e, source) from None


def run_sync(make_coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, also when this thread already runs an event loop
    (a notebook, TRL's async machinery): then it runs on a fresh loop in a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = asyncio.run(make_coro())
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name="spillover-reward-sync")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


__all__ = ["Reward", "RewardRef", "build_reward", "get_reward", "is_user_reward_spec", "list_rewards",
           "register_reward", "register_reward_prefix", "run_sync", "set_reward_params", "split_reward_spec"]
