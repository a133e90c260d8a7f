"""User rewards: any Python callable named ``module:function`` (or ``module:Class.attr``).

The callable must follow TRL's signature, ``fn(prompts, completions, **kwargs) -> list[float]``.
Params given in a config are bound as keyword arguments; names the function does not take (and it has
no ``**kwargs``) are an error at load time, not at the first training step. An ``async`` user function
is run to completion, so the wrapper is always a plain sync TRL reward.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any

from spillover.errors import SpilloverError, did_you_mean
from spillover.rewards._base import Reward, run_sync

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def load_user_reward(spec: str) -> Callable:
    """Import ``module:function`` and return the callable; every failure is a :class:`SpilloverError`."""
    where = f"user reward {spec!r}"
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise SpilloverError("a user reward must be written 'module:function'", where=where,
                             fix="e.g. 'my_rewards:length_reward' with my_rewards.py importable (on PYTHONPATH)")
    module_name, attr_path = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise SpilloverError(f"cannot import module {module_name!r}: {e}", where=where,
                             fix="check the module name and that its folder is on PYTHONPATH "
                                 "(or install the package that holds it)") from None
    except Exception as e:
        raise SpilloverError(f"importing {module_name!r} failed: {type(e).__name__}: {e}", where=where,
                             fix="fix the error in that module (import it in Python to see the traceback)") from None
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise SpilloverError(f"{getattr(obj, '__name__', obj)!s} has no attribute {part!r}."
                                 f"{did_you_mean(part, names)}", where=where,
                                 fix="name a function defined in that module") from None
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpilloverError(f"{attr_path!r} is a {type(obj).__name__}, not a callable", where=where,
                             fix="name a function fn(prompts, completions, **kwargs) -> list[float]")
    return obj


def check_user_params(spec: str, fn: Callable, params: dict) -> None:
    """Params must be keyword arguments ``fn`` accepts."""
    if not params:
        return
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return
    unknown = sorted(set(params) - set(signature.parameters))
    if unknown:
        raise SpilloverError(f"params {unknown} are not arguments of the function", where=f"user reward {spec!r}",
                             fix=f"use the function's keyword arguments: {', '.join(signature.parameters)}")


class UserReward(Reward):
    """A user callable behind the :class:`Reward` interface (``score_details`` gives only ``reward``)."""

    description = "A user reward function loaded from 'module:function'."

    def __init__(self, spec: str, params: dict | None = None):
        fn = load_user_reward(spec)
        check_user_params(spec, fn, params or {})
        self.name = spec
        self.params = dict(params or {})
        self.__name__ = spec
        self.fn = functools.partial(fn, **self.params) if self.params else fn

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        out = self.fn(prompts=prompts, completions=completions, **kwargs)
        if inspect.isawaitable(out):
            async def wait():
                return await out

            out = run_sync(wait)
        if not isinstance(out, (list, tuple)) or len(out) != len(completions):
            raise SpilloverError(f"returned {type(out).__name__} of length {len(out) if hasattr(out, '__len__') else '?'}"
                                 f" for {len(completions)} completions", where=f"user reward {self.name!r}",
                                 fix="return a list with one float (or None) per completion")
        return [None if r is None else float(r) for r in out]

    def score_details(self, prompt: Any, completion: Any) -> dict:
        return {"reward": self([prompt], [completion])[0]}
