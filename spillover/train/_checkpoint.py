"""Checkpoints of a training run, and resuming a killed one.

Rule: a run saves a checkpoint (transformers' own: adapter weights, optimizer, scheduler, RNG states
and trainer state, under ``RUN/.trainer/checkpoint-N``) every :data:`CHECKPOINT_MINUTES` minutes of
training, keeping only the newest; runs shorter than that never write one, and a completed run removes
``.trainer``. ``--resume`` continues a killed or failed run from its newest complete checkpoint with
``Trainer.train(resume_from_checkpoint=...)``: the same config is required, the logs written up to the
checkpoint are kept and the data order continues where it stopped.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from spillover._io import atomic_write_text, read_text
from spillover.errors import SpilloverError

CHECKPOINT_MINUTES = 5.0
TRAINER_DIR = ".trainer"
#: per-step logs a resumed run keeps up to its checkpoint's step (they are rewritten on resume)
STEP_LOGS = ("metrics.jsonl", "completions.jsonl")
_CKPT = re.compile(r"^checkpoint-(\d+)$")


class CheckpointEvery(TrainerCallback):
    """Ask the trainer to save a checkpoint whenever ``seconds`` have passed since the last one."""

    def __init__(self, seconds: float):
        self.seconds, self._last = seconds, time.monotonic()

    def on_train_begin(self, args, state, control, **kw):
        self._last = time.monotonic()

    def on_step_end(self, args, state, control, **kw):
        if time.monotonic() - self._last >= self.seconds and state.global_step < state.max_steps:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kw):
        self._last = time.monotonic()


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose save finished (its trainer_state.json is written last), or None."""
    folder = Path(run_dir) / TRAINER_DIR
    if not folder.is_dir():
        return None
    done = [(int(m[1]), p) for p in folder.iterdir()
            if (m := _CKPT.match(p.name)) and (p / "trainer_state.json").is_file()]
    return max(done)[1] if done else None


@dataclass
class ResumePoint:
    checkpoint: Path
    step: int
    logs: dict[str, str] = field(default_factory=dict)  # file name -> lines kept (up to ``step``)

    def restore_logs(self, run_dir: Path) -> None:
        """Put back the log lines up to the checkpoint (the trainer's callbacks start their files empty)."""
        for name, text in self.logs.items():
            atomic_write_text(Path(run_dir) / name, text)


def _lines_up_to(path: Path, step: int) -> str:
    if not path.is_file():
        return ""
    kept = []
    for line in read_text(path).splitlines(keepends=True):
        try:
            row_step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            continue  # a line cut by the kill
        if not line.endswith("\n"):
            continue
        if not isinstance(row_step, int) or row_step <= step:
            kept.append(line)
    return "".join(kept)


def resume_point(run_dir: Path, config_text: str) -> ResumePoint:
    """Check that ``run_dir`` can be resumed with this config and find where: the config must equal the
    run's ``config.yaml`` and a complete checkpoint must exist. Raises the user error otherwise."""
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if saved.is_file() and read_text(saved) != config_text:
        import yaml

        before, now = yaml.safe_load(read_text(saved)) or {}, yaml.safe_load(config_text) or {}
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        raise SpilloverError(f"the config differs from the one the run in {run_dir} started with"
                             + (f" ({', '.join(changed)})" if changed else ""),
                             fix="resume with the same settings (see its config.yaml), or start a new run "
                                 "with --overwrite or another --out")
    ckpt = last_checkpoint(run_dir)
    if ckpt is None:
        raise SpilloverError(f"the run in {run_dir} stopped before its first checkpoint (one is written every "
                             f"{CHECKPOINT_MINUTES:g} minutes of training)",
                             fix="restart it: drop --resume and pass --overwrite")
    step = int(_CKPT.match(ckpt.name)[1])
    return ResumePoint(ckpt, step, {name: _lines_up_to(run_dir / name, step) for name in STEP_LOGS
                                    if (run_dir / name).is_file()})
