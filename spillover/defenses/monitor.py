"""EM monitor with optional early stopping: the judge-free probe on the current policy every N steps.

Before the first step the probe (contrast pairs: mean per-token log-probability of a misaligned minus an
aligned answer; :mod:`spillover.evaluate.probe`) is scored on the starting policy; every ``every``
optimizer steps it is scored again and ``defense/em-monitor/shift`` logs the mean over pairs of
``shift_now - shift_start`` (> 0: the policy moved towards the misaligned answers). With ``stop_at`` set,
training stops at the first check whose shift exceeds it, and with ``keep_best`` the adapter saved is the
one of the last check that stayed below the threshold (the start when the first check already exceeds
it), kept in memory (LoRA weights only). The history of checks is recorded in the run manifest.

Motivation: EM can appear after the narrow task has converged, and stopping early removes much of it;
the monitor makes that measurable in every run at the cost of one probe pass per check (about a second
per 30 pairs on the embedded model on CPU).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from spillover.defenses._base import Defense, register_defense
from spillover.errors import SpilloverError


def _trainable_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@register_defense("em-monitor")
class EMMonitorDefense(Defense):
    """Every N steps, score the judge-free probe on the current policy and log the shift; optionally stop early.

    Logs ``defense/em-monitor/shift`` (mean probe shift vs the starting policy). With ``stop_at``, stops
    when the shift passes it and (``keep_best``) keeps the last adapter below the threshold."""

    class Params(Defense.Params):
        weight: float = Field(1.0, ge=0, description="Any value > 0 = on; 0 = off.")
        every: int = Field(10, ge=1, description="Score the probe every this many optimizer steps.")
        pairs: str = Field("bundled:probe_general", json_schema_extra={"data_ref": True}, description="Contrast pairs (a probe JSONL or bundled:NAME); a "
                           "small set keeps checks cheap.")
        stop_at: float | None = Field(None, description="Stop training when the mean shift vs the start exceeds this "
                                      "(log-prob per token; null = only monitor).")
        keep_best: bool = Field(True, description="When stopping, save the adapter of the last check below stop_at "
                                "instead of the current one.")

    def setup(self, model, tokenizer, ctx) -> None:
        if ctx.score_pairs is None:
            raise SpilloverError("em-monitor needs the probe, which this trainer did not provide",
                                 fix="train through spillover.train (run_sft / run_grpo)")
        self.tokenizer, self._score = tokenizer, ctx.score_pairs
        self.ids, self.start = self._score(model, tokenizer, self.params.pairs)
        self.history: list[dict] = [{"step": 0, "shift": 0.0}]
        self.best_state = _trainable_state(model) if self.params.stop_at is not None and self.params.keep_best else None
        self.best_step, self.stopped_at = 0, None

    def after_step(self, model, step: int) -> bool | None:
        if step % self.params.every:
            return None
        _, now = self._score(model, self.tokenizer, self.params.pairs)
        shift = float(np.mean(np.asarray(now) - np.asarray(self.start)))
        self.log_metric("shift", shift)
        self.history.append({"step": step, "shift": round(shift, 6)})
        limit = self.params.stop_at
        if limit is None:
            return None
        if shift > limit:
            self.stopped_at = step
            self.log_metric("stopped", 1.0)
            return True
        if self.params.keep_best:
            self.best_state, self.best_step = _trainable_state(model), step
        return None

    def after_train(self, model) -> None:
        if self.stopped_at is not None and self.best_state is not None:
            params = dict(model.named_parameters())
            for name, value in self.best_state.items():
                params[name].data.copy_(value)

    def manifest(self) -> dict:
        return {"checks": getattr(self, "history", []), "stopped_at_step": getattr(self, "stopped_at", None),
                "saved_adapter_step": (self.best_step if getattr(self, "stopped_at", None) is not None
                                       and self.best_state is not None else None),
                "n_pairs": len(getattr(self, "ids", []))}
