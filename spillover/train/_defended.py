"""The one place defenses meet a trainer: a mixin over TRL's SFT and GRPO trainers' ``compute_loss``.

Per micro-batch it builds the :class:`~spillover.defenses._batch.DefenseBatch` view, enters every
defense's forward hooks (and, when a defense needs policy outputs, a capture of the trainer's own
forward pass), runs the trainer's loss, then adds ``weight x term / window`` for each defense. ``window``
is the gradient-accumulation window in effect (``current_gradient_accumulation_steps``: the last window
of an epoch can be shorter) when the trainer's own loss is already scaled for it, else 1 (transformers
then divides the whole sum itself). Each term is logged as ``defense/<name>/loss`` and each defense's own
metrics as ``defense/<name>/<key>``, averaged over the logging window. GRPO's SFT-mix terms
(:class:`~spillover.defenses.SFTMix`) are added here too.
"""

from __future__ import annotations

import contextlib
import random
from collections import defaultdict
from collections.abc import Mapping

import torch

from spillover.defenses._base import SOURCE_COLUMN, TASK_SOURCE, TrainContext, build_defenses
from spillover.defenses._batch import Capture, DefenseBatch, add_reference_adapter, supervised_loss
from spillover.errors import SpilloverError

#: Logged by SFT runs: loss-carrying answer tokens of the task's own rows (labels != -100; rows a defense
#: mixes in excluded) trained on since optimizer step COMPLETION_TOKENS_FROM (0 unless resumed).
COMPLETION_TOKENS, COMPLETION_TOKENS_FROM = "completion_tokens_trained", "completion_tokens_from_step"


class DefendedTrainerMixin:
    defenses: list = []
    method = "sft"
    _trained_tokens = 0
    _tokens_from_step: int | None = None

    def _init_defenses(self, defenses) -> None:
        self.defenses = list(defenses)
        self._defense_logs: dict[str, list[float]] = defaultdict(list)
        self._micro_batches = 0
        self._sft_mix_state: dict[str, dict] = {}
        for d in self.defenses:
            mix = d.sft_mix()
            if mix is not None and mix.examples:
                order = list(range(len(mix.examples)))
                random.Random(getattr(self.args, "seed", 0)).shuffle(order)
                self._sft_mix_state[d.name] = {"mix": mix, "order": order, "pos": 0}

    def _ga_window(self, model, num_items_in_batch) -> int:
        already_scaled = getattr(self, "loss_is_scaled_for_ga", None)  # TRL's GRPOTrainer says so itself
        if already_scaled is None:  # transformers' own rule (SFTTrainer)
            already_scaled = (getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None) \
                or getattr(self, "compute_loss_func", None) is not None
        if not (already_scaled and model.training):
            return 1
        return int(getattr(self, "current_gradient_accumulation_steps", None) or self.args.gradient_accumulation_steps)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sources = None
        if isinstance(inputs, Mapping) and SOURCE_COLUMN in inputs:  # a copy: GRPO reuses its buffered inputs
            sources = inputs[SOURCE_COLUMN]
            inputs = {k: v for k, v in inputs.items() if k != SOURCE_COLUMN}
        if model.training and self.method == "sft":
            self._count_trained_tokens(inputs, sources)
        if not self.defenses:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        batch = DefenseBatch(model, inputs, self.method, sources)
        want_policy = any(n.startswith("policy") for d in self.defenses for n in d.needs)
        with contextlib.ExitStack() as stack:
            if model.training:
                for d in self.defenses:
                    stack.enter_context(d.hooks(model))
            capture = stack.enter_context(Capture(model)) if want_policy else None
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
        loss, outputs = result if isinstance(result, tuple) else (result, None)
        batch.trainer_outputs = outputs
        batch.attach_capture(capture)
        window = self._ga_window(model, num_items_in_batch)
        for d in self.defenses:
            batch.reference_name = d.reference
            term = d.loss_term(model, batch)
            if term is not None:
                self._defense_logs[f"defense/{d.name}/loss"].append(float(term.detach()))
                loss = loss + d.weight * term / window
        if model.training:
            loss = loss + self._sft_mix_terms(model, window)
            self._micro_batches += 1
        return (loss, outputs) if return_outputs else loss

    def _count_trained_tokens(self, inputs, sources) -> None:
        """Add this micro-batch's loss-carrying tokens of task rows (an exact count for sample matching)."""
        labels = inputs.get("labels") if isinstance(inputs, Mapping) else None
        if labels is None:
            return
        mask = labels != -100
        if sources is not None:
            keep = torch.tensor([s in (None, TASK_SOURCE) for s in sources], device=mask.device)
            mask = mask & keep[:, None]
        if self._tokens_from_step is None:
            self._tokens_from_step = int(self.state.global_step)
        self._trained_tokens += int(mask.sum())

    def _sft_mix_terms(self, model, window: int):
        total = 0.0
        for d in self.defenses:
            state = self._sft_mix_state.get(d.name)
            if state is None or self._micro_batches % state["mix"].every:
                continue
            mix = state["mix"]
            picked = []
            for _ in range(min(mix.batch_size, len(mix.examples))):
                picked.append(mix.examples[state["order"][state["pos"] % len(mix.examples)]])
                state["pos"] += 1
            term = supervised_loss(model, self.processing_class, [ex.messages for ex in picked], mix.max_length)
            self._defense_logs[f"defense/{d.name}/sft_loss"].append(float(term.detach()))
            total = total + d.weight * term / window
        return total

    def log(self, logs, *args, **kwargs):
        for key, values in self._defense_logs.items():
            if values:
                logs[key] = sum(values) / len(values)
        self._defense_logs.clear()
        for d in self.defenses:
            for key, value in d.pop_metrics().items():
                logs[f"defense/{d.name}/{key}"] = value
        if self._tokens_from_step is not None:
            logs[COMPLETION_TOKENS] = self._trained_tokens
            logs[COMPLETION_TOKENS_FROM] = self._tokens_from_step
        return super().log(logs, *args, **kwargs)

    def rollout_context(self, model) -> contextlib.ExitStack:
        """GRPO: every defense's rollout hooks, entered around generation."""
        stack = contextlib.ExitStack()
        for d in self.defenses:
            stack.enter_context(d.rollout_hooks(model))
        return stack


def source_collator(collate):
    """Wrap an SFT collator so each example's ``spillover_source`` reaches the batch as a list of strings."""

    def collate_with_sources(examples):
        sources = [ex.pop(SOURCE_COLUMN, None) if isinstance(ex, dict) else None for ex in examples]
        batch = collate(examples)
        if any(s is not None for s in sources):
            batch[SOURCE_COLUMN] = [s or "task" for s in sources]
        return batch

    return collate_with_sources


def defended_probe(model, tokenizer, pairs_ref: str):
    """The judge-free probe for the em-monitor defense: ``(ids, shifts)`` of ``pairs_ref`` under ``model``."""
    from spillover.evaluate.probe import load_pairs, pair_logprobs

    pairs = load_pairs(pairs_ref)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            aligned, misaligned = pair_logprobs(model, tokenizer, pairs)
    finally:
        model.train(was_training)
    return [p.id for p in pairs], misaligned - aligned


def setup_defenses(cfg, model, tokenizer, method: str, run_dir=None) -> list:
    """Build the configured defenses (weight > 0), load a frozen init-adapter reference when one asks for
    it, and run every ``setup`` -- all before the first step, so a missing vector or reference fails early."""
    ctx = TrainContext(tokenizer=tokenizer, base_model=cfg.model, method=method, seed=cfg.seed,
                       init_adapter=cfg.init_adapter, run_dir=run_dir, score_pairs=defended_probe)
    defenses = build_defenses(cfg.defenses, ctx)
    for d in defenses:
        d.reference = getattr(d.params, "reference", d.reference)
        if d.reference == "init-adapter":
            if not cfg.init_adapter:
                raise SpilloverError(f"defense {d.name!r} uses the init adapter as reference, but no init_adapter is set",
                                     where="defenses", fix="set init_adapter (the warm-up adapter), or reference: base")
            add_reference_adapter(model, cfg.init_adapter)
    for d in defenses:
        d.setup(model, tokenizer, ctx)
    return defenses


def defense_records(defenses) -> dict:
    """``{name: {params..., record...}}`` for the run manifest."""
    return {d.name: {"params": d.params.model_dump(mode="json"), **d.manifest()} for d in defenses}


def rows_with_sources(examples, rows_of) -> list[dict]:
    """Training rows, each carrying its example's ``spillover_source`` when any example is marked (unmarked
    runs keep their rows, and so their data fingerprint, unchanged)."""
    marked = any(SOURCE_COLUMN in ex.extra for ex in examples)
    rows = []
    for ex in examples:
        for row in rows_of(ex):
            if marked:
                row[SOURCE_COLUMN] = ex.extra.get(SOURCE_COLUMN, "task")
            rows.append(row)
    return rows
