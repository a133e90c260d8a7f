"""LoRA SFT on TRL's SFTTrainer: loss on assistant tokens only, defenses plugged in, one run directory.

Layout of ``out``: ``config.yaml`` (resolved), ``manifest.json`` (versions, data fingerprint, status,
timings), ``metrics.jsonl`` (loss per step), ``adapter/`` (PEFT weights + spillover_adapter.json).
Assistant-only loss uses TRL's prompt/completion form (conversation so far -> assistant turn), which
masks the prompt with any chat template (TRL's ``assistant_only_loss`` needs ``{% generation %}``
markers that SmolLM2's template lacks).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset
from trl import SFTConfig as TRLSFTConfig
from trl import SFTTrainer

from spillover._io import atomic_dir, atomic_write_text, sha256_file, sha256_json
from spillover._run import environment_info, now_iso, prepare_run_dir, update_manifest
from spillover.config import dump_yaml
from spillover.data import load_chat_jsonl, require_sft_examples, resolve_data_path, to_prompt_completion
from spillover.defenses import SOURCE_COLUMN
from spillover.models import apply_lora, load_adapter, load_model, pick_device, pick_dtype, save_adapter
from spillover.train._callbacks import DefenseSteps, MetricsLog, RichProgress
from spillover.train._checkpoint import CHECKPOINT_MINUTES, CheckpointEvery, ResumePoint, resume_point
from spillover.train._config import SFTConfig
from spillover.train._defended import (
    DefendedTrainerMixin,
    defense_records,
    rows_with_sources,
    setup_defenses,
    source_collator,
)


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path
    steps: int
    final_loss: float | None
    seconds: float


def _trl_args(cfg, output_dir: Path, device, dtype, **method_kwargs):
    """Shared TrainingArguments fields for SFT and GRPO configs."""
    import torch

    steps = {"max_steps": cfg.max_steps} if cfg.max_steps else {"num_train_epochs": cfg.epochs}
    return dict(
        output_dir=str(output_dir), learning_rate=cfg.lr, lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        max_grad_norm=cfg.max_grad_norm, activation_checkpointing=cfg.gradient_checkpointing,
        seed=cfg.seed, data_seed=cfg.seed, logging_steps=cfg.logging_steps,
        save_strategy="no", save_total_limit=1, report_to=[], disable_tqdm=True, use_cpu=device.type == "cpu",
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, dataloader_num_workers=0,
        **steps, **method_kwargs,
    )


def prepare_policy(cfg, *, trainable: bool = True):
    """Load the base model and wrap it with a fresh (seeded) or initial LoRA adapter."""
    from transformers import set_seed

    model, tok, ref = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    set_seed(cfg.seed)
    model = load_adapter(model, cfg.init_adapter, trainable=trainable) if cfg.init_adapter else apply_lora(model, cfg.lora)
    return model, tok, ref


def finish_trainer_setup(trainer, defenses, run_dir: Path, description: str) -> None:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(RichProgress(description))
    trainer.add_callback(MetricsLog(run_dir / "metrics.jsonl"))
    if defenses:
        trainer.add_callback(DefenseSteps(defenses))


def save_run_adapter(model, run_dir: Path, cfg, model_display: str, method: str) -> Path:
    adapter_dir = run_dir / "adapter"
    with atomic_dir(adapter_dir) as tmp:
        save_adapter(model, tmp, base_model=cfg.model, lora=cfg.lora,
                     extra={"method": method, "init_adapter": cfg.init_adapter, "base_model_name": model_display})
    return adapter_dir


class _SFTTrainer(DefendedTrainerMixin, SFTTrainer):
    """TRL's SFTTrainer with spillover's defense hooks; keeps the ``spillover_source`` column for them."""

    method = "sft"

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if SOURCE_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, SOURCE_COLUMN]


def build_sft_trainer(cfg: SFTConfig, model, tokenizer, rows: list[dict], output_dir: Path, defenses=()):
    """A ready SFT trainer over prompt/completion ``rows`` (the completion alone carries the loss)."""
    device = pick_device(cfg.device)
    args = TRLSFTConfig(**_trl_args(cfg, output_dir, device, pick_dtype(cfg.dtype, device)),
                        max_length=cfg.max_length, completion_only_loss=True, packing=False, shuffle_dataset=True)
    trainer = _SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    if rows and SOURCE_COLUMN in rows[0]:
        trainer.data_collator = source_collator(trainer.data_collator)
    trainer._init_defenses(defenses)
    return trainer


def train_and_save(trainer, model, defenses, run_dir: Path, cfg, model_display: str, method: str,
                   extra_manifest=None, *, resume: ResumePoint | None = None,
                   checkpoint_minutes: float | None = CHECKPOINT_MINUTES) -> TrainResult:
    """Train (from ``resume``'s checkpoint when given; saving a checkpoint every ``checkpoint_minutes``,
    0/None = never), apply the defenses' after-train hooks, save the adapter and complete the manifest
    (Ctrl-C marks it ``interrupted``, an error ``failed``). Shared by SFT and GRPO;
    ``extra_manifest(log_history, steps)`` returns method-specific manifest fields."""
    if checkpoint_minutes:
        trainer.add_callback(CheckpointEvery(60.0 * checkpoint_minutes))
    if resume is not None:
        resume.restore_logs(run_dir)
        update_manifest(run_dir, resumed_from_step=resume.step, resumed=now_iso())
    t0 = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=str(resume.checkpoint) if resume else None)
    except (KeyboardInterrupt, SystemExit):
        update_manifest(run_dir, status="interrupted", finished=now_iso())
        raise
    except BaseException:
        update_manifest(run_dir, status="failed", finished=now_iso())
        raise
    for d in defenses:
        d.after_train(model)
    if defenses:
        update_manifest(run_dir, defenses=defense_records(defenses))
    seconds = time.perf_counter() - t0
    if "ref" in getattr(model, "peft_config", {}):  # TRL's frozen copy of an initial adapter when beta > 0
        model.delete_adapter("ref")
    adapter_dir = save_run_adapter(model, run_dir, cfg, model_display, method)
    shutil.rmtree(run_dir / ".trainer", ignore_errors=True)
    steps = trainer.state.global_step
    history = trainer.state.log_history
    losses = [r["loss"] for r in history if "loss" in r]
    tokens = [r["num_tokens"] for r in history if "num_tokens" in r]
    update_manifest(run_dir, status="complete", finished=now_iso(), steps=steps, train_seconds=round(seconds, 2),
                    seconds_per_step=round(seconds / max(steps, 1), 3), train_loss=output.training_loss,
                    tokens_seen=int(tokens[-1]) if tokens else None,
                    **(extra_manifest(history, steps) if extra_manifest else {}))
    return TrainResult(run_dir, adapter_dir, steps, losses[-1] if losses else None, seconds)


def run_sft(cfg: SFTConfig, out: str | Path, *, overwrite: bool = False, resume: bool = False,
            checkpoint_minutes: float | None = CHECKPOINT_MINUTES) -> TrainResult:
    """Train a LoRA adapter with SFT (``resume``: continue a killed run in ``out`` from its last checkpoint);
    returns where everything was written."""
    data_path = resolve_data_path(cfg.data)
    examples = load_chat_jsonl(data_path, strip_qwen3=cfg.strip_qwen3_markers)
    require_sft_examples(examples)

    run_dir = prepare_run_dir(out, overwrite=overwrite, resume=resume)
    point = resume_point(run_dir, dump_yaml(cfg)) if resume else None
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    model, tok, ref = prepare_policy(cfg)
    defenses = setup_defenses(cfg, model, tok, "sft", run_dir)
    for d in defenses:
        examples = d.transform_data(examples)
    rows = rows_with_sources(examples, lambda ex: to_prompt_completion([ex]))
    update_manifest(run_dir, kind="train", method="sft", status="running", started=now_iso(), model=ref.display,
                    model_path=ref.path, data=str(data_path), data_file_sha256=sha256_file(data_path),
                    data_fingerprint=sha256_json(rows), n_examples=len(examples), n_train_rows=len(rows),
                    env=environment_info(), **({"defenses": defense_records(defenses)} if defenses else {}))

    trainer = build_sft_trainer(cfg, model, tok, rows, run_dir / ".trainer", defenses)
    finish_trainer_setup(trainer, defenses, run_dir, "SFT")
    return train_and_save(trainer, model, defenses, run_dir, cfg, ref.display, "sft", resume=point,
                          checkpoint_minutes=checkpoint_minutes)
