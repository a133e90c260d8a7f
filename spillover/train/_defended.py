"""The one place defenses meet a trainer: a mixin over any HF/TRL trainer's ``compute_loss``.

Per micro-batch it enters every defense's forward hooks, runs the trainer's own loss, adds each
defense's loss term (divided by gradient accumulation exactly when the trainer will not divide the
total itself) and logs each term as ``defense/<name>``, averaged over the logging window.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict


class DefendedTrainerMixin:
    defenses: list = []
    supports_return_outputs = True  # False for trainers whose compute_loss cannot return model outputs (GRPO)

    def _init_defenses(self, defenses) -> None:
        self.defenses = list(defenses)
        self._defense_logs: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.defenses:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        with contextlib.ExitStack() as stack:
            for d in self.defenses:
                stack.enter_context(d.hooks(model))
            if self.supports_return_outputs and any(d.needs_outputs for d in self.defenses):
                result = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            else:
                result = super().compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        loss, outputs = result if isinstance(result, tuple) else (result, None)
        # HF divides the total by grad-accum steps only when the loss was not already normalised by
        # num_items_in_batch; our per-batch mean terms need that division either way, exactly once.
        already_scaled = getattr(self, "loss_is_scaled_for_ga", None)  # TRL's GRPOTrainer says so itself
        if already_scaled is None:  # transformers' own rule (SFTTrainer)
            already_scaled = (getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None) \
                or getattr(self, "compute_loss_func", None) is not None
        ga = self.args.gradient_accumulation_steps if already_scaled and model.training else 1
        for d in self.defenses:
            term = d.loss_term(model, inputs, outputs)
            if term is not None:
                self._defense_logs[f"defense/{d.name}"].append(float(term.detach()))
                loss = loss + term / ga
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        for key, values in self._defense_logs.items():
            if values:
                logs[key] = sum(values) / len(values)
        self._defense_logs.clear()
        return super().log(logs, *args, **kwargs)
