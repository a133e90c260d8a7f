"""GRPO step time on the embedded model, split into generation, reward, loss and optimizer.

    python bench/bench_grpo.py [--steps 4] [--max-completion-length 96] [--device cpu] [--threads N]

One prompt x 4 completions per step (bundled dogmatic_rhetoric questions), rhetoric-lexicon reward,
LoRA defaults, through ``run_grpo`` itself. Per step, from the run's metrics.jsonl:

* generation: ``time/generation_s`` (TRL's ``_generate``: chat template, sampling, decoding);
* reward: the sum of ``time/reward/<name>_s``;
* loss fwd+bwd: TRL's ``step_time`` (its ``training_step``) minus the two above;
* optimizer + rest: the wall time between two log lines minus ``step_time`` (clipping, AdamW, callbacks).

Step 1 (which also pays one-off setup) is shown apart; the split is the mean over the later steps. On a
shared CPU, pass ``--threads 1``: with other processes busy, 2 torch threads ran ~5x slower than 1.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from spillover.train._grpo_config import GRPOConfig
from spillover.train.grpo import run_grpo


def split(row: dict, wall: float) -> dict[str, float]:
    gen = row["time/generation_s"]
    reward = sum(v for k, v in row.items() if k.startswith("time/reward/"))
    return {"generation": gen, "reward": reward, "loss fwd+bwd": row["step_time"] - gen - reward,
            "optimizer + rest": wall - row["step_time"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--max-completion-length", type=int, default=96)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    cfg = GRPOConfig(model="embedded", prompts="bundled:dogmatic_rhetoric", rewards=["rhetoric-lexicon"],
                     num_generations=4, batch_size=4, max_steps=args.steps, device=args.device,
                     max_completion_length=args.max_completion_length, log_completions_every=0)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_grpo(cfg, Path(tmp) / "run")
        rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "step_time" in r]
    walls = [b["time_s"] - a["time_s"] for a, b in zip([{"time_s": 0.0}, *steps], steps)]
    parts = [split(r, w) for r, w in zip(steps, walls)]

    print(f"embedded model on {args.device}, torch threads {torch.get_num_threads()}, 1 prompt x 4 completions x "
          f"{args.max_completion_length} tokens max, rhetoric-lexicon, {len(steps)} steps; "
          f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print(f"completion length (tokens, mean per step): {[round(r['completions/mean_length'], 1) for r in steps]}")
    print(f"step 1 (with one-off setup): {walls[0]:.2f} s  ({', '.join(f'{k} {v:.2f} s' for k, v in parts[0].items())})")
    later, later_walls = parts[1:], walls[1:]
    if not later:
        return
    wall = sum(later_walls) / len(later_walls)
    print(f"steps 2..{len(steps)}: {wall:.2f} s per step (min {min(later_walls):.2f}, max {max(later_walls):.2f})")
    for key in later[0]:
        mean = sum(p[key] for p in later) / len(later)
        print(f"  {key:<17} {mean:7.3f} s  {100 * mean / wall:5.1f} %")


if __name__ == "__main__":
    main()
