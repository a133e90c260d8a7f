"""Training stage: LoRA SFT (TRL SFTTrainer) and GRPO, with defenses plugged in through one mixin."""

from spillover.train._config import ModelSpec, OptimSpec, SFTConfig
from spillover.train._defended import DefendedTrainerMixin
from spillover.train.sft import TrainResult, run_sft

__all__ = ["DefendedTrainerMixin", "ModelSpec", "OptimSpec", "SFTConfig", "TrainResult", "run_sft"]
