"""Trainer callbacks: a rich progress bar with ETA, a per-step metrics JSONL, and the defense hooks."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback


class RichProgress(TrainerCallback):
    """One progress bar per training run: steps done, elapsed, ETA and the last loss."""

    def __init__(self, description: str = "training"):
        self.description, self.progress, self.task = description, None, None

    def on_train_begin(self, args, state, control, **kw):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[info]}"))
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=state.max_steps, info="")

    def on_step_end(self, args, state, control, **kw):
        if self.progress:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kw):
        if self.progress and logs and "loss" in logs:
            self.progress.update(self.task, info=f"loss {logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kw):
        if self.progress:
            self.progress.stop()
            self.progress = None


class MetricsLog(TrainerCallback):
    """Append every log record (loss, lr, grad norm, defense terms...) as one JSON line, flushed."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self._t0 = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch, "time_s": round(time.perf_counter() - self._t0, 3), **logs}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()


class DefenseSteps(TrainerCallback):
    """Calls each defense's ``after_step`` after every optimizer step; one returning True stops training
    (early stopping)."""

    def __init__(self, defenses):
        self.defenses = defenses

    def on_step_end(self, args, state, control, model=None, **kw):
        for d in self.defenses:
            if d.after_step(model, state.global_step):
                control.should_training_stop = True
