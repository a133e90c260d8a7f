"""The vLLM engines of an experiment run (``evaluation.sampling.engine: vllm``): one engine per merged model
across stages and units, and the next unit's engine started while this one is judged.

A unit's sampling stages (its EM questions, then its benign tasks) share one engine from an
:class:`~spillover.evaluate.engine.EnginePool`. When they are done (:meth:`RunEngines.handoff`, before
judging), the engine is kept only if the next unit of the run samples the same merged model (the base
arm's seeds), otherwise stopped; and, with ``prefetch_engine`` on, the next unit's engine is started
without waiting, so it loads while this unit is judged and probed. Prefetching happens only for a next
unit that has nothing to train first (its adapter exists now), so at most one engine runs at a time
besides the one being started ahead.

The local executor opens one :func:`engine_session` around the units it runs; a unit run on its own (a
Slurm job) gets a session of its own, closed when the unit ends. Every engine is stopped when the
session closes, on success, error or Ctrl-C (and by spillover.engines' atexit and signal handlers).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from spillover.errors import SpilloverError

_ACTIVE: RunEngines | None = None


class RunEngines:
    """Engines for ``units`` ((arm, seed) pairs in the order they run) of the experiment in ``out``."""

    def __init__(self, out: str | Path, units: Sequence[tuple[str, int]]):
        self.out, self.units = Path(out), [tuple(u) for u in units]
        self.pool = None

    def _pool(self, cfg):
        if self.pool is None:
            from spillover.evaluate.engine import EnginePool

            self.pool = EnginePool(prefetch=cfg.evaluation.sampling.prefetch_engine)
        return self.pool

    def _settings(self, cfg) -> dict:
        return {"dtype": cfg.dtype, "batch_size": cfg.evaluation.sampling.batch_size,
                "compiled": cfg.evaluation.sampling.engine_compiled}

    def sampler(self, cfg, adapter: str | None):
        """A sampler on the engine of the experiment's model plus ``adapter`` (started, waited for or reused);
        closing it leaves the engine to this session."""
        return self._pool(cfg).sampler(cfg.model, adapter, device=cfg.device, **self._settings(cfg))

    def handoff(self, cfg, arm: str, seed: int) -> None:
        """The unit (arm, seed) has sampled: keep its engine only for a next unit on the same model, start the
        next unit's engine ahead when prefetching is on."""
        if cfg.evaluation.sampling.engine != "vllm":
            return
        following = self.units[self.units.index((arm, seed)) + 1:] if (arm, seed) in self.units else []
        try:
            adapter = engine_need(self.out, cfg, *following[0]) if following else False
            keep = None if adapter is False else self._pool(cfg).key(cfg.model, adapter, **self._settings(cfg))
        except SpilloverError:  # the next unit cannot start an engine (e.g. its adapter's base differs): it says why
            keep = None
        if keep is None:
            if self.pool is not None:
                self.pool.close()
            return
        self.pool.close_except({keep})
        try:
            self.pool.prefetch(cfg.model, adapter, device=cfg.device, **self._settings(cfg))
        except Exception as e:  # noqa: BLE001 - only a head start: the next unit starts its engine itself, or says why not
            print(f"could not start the next unit's engine ahead: {e}", file=sys.stderr)

    def close(self) -> None:
        """Stop every engine (the session stays usable: a later unit starts its own)."""
        if self.pool is not None:
            self.pool.close()


def engine_need(out: Path, cfg, arm_name: str, seed: int) -> str | None | bool:
    """The adapter (None: the base model) whose engine unit (arm, seed) will sample with next, or False when
    it will not sample (not evaluated, or sampled already) or must train first (no adapter to start on yet)."""
    from spillover.experiment.results import unit_dir
    from spillover.experiment.stages import (
        Stage,
        _upstream_train,
        adapter_of,
        benign_own,
        read_marker,
        sample_own,
    )

    arm = cfg.arm(arm_name)
    if not arm.evaluate:
        return False
    folder = unit_dir(out, arm.name, seed)
    if arm.train is not None:
        m = read_marker(folder, "train")
        if m is None or m.state != "done":
            return False
    adapter = adapter_of(out, cfg, arm, seed)
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        return False
    upstream = {"train": _upstream_train(out, cfg, arm, seed)}
    todo = not Stage(folder, "sample", sample_own(cfg, arm, seed), upstream).done
    if cfg.evaluation.benign:
        todo |= not Stage(folder, "benign", benign_own(cfg, seed), upstream).done
    return adapter if todo else False


@contextmanager
def engine_session(out: str | Path, units: Sequence[tuple[str, int]]) -> Iterator[RunEngines]:
    """The engines of ``units`` run in this process, all stopped at the end (inside an open session: that one)."""
    global _ACTIVE
    if _ACTIVE is not None:
        yield _ACTIVE
        return
    _ACTIVE = session = RunEngines(out, units)
    try:
        yield session
    finally:
        _ACTIVE = None
        session.close()


def current_session() -> RunEngines | None:
    return _ACTIVE
