"""SFT step time and peak memory of the loss and hook defenses against plain SFT, side by side.

    python bench/bench_defenses.py [--steps 6] [--rounds 2] [--threads 1] [--arms plain,kl,ldifs,kl+ldifs,steer,kl-2pass]

Each arm is one ``run_sft`` on the embedded model (bundled unpopular_aesthetics, batch 4, LoRA defaults)
in its own subprocess, so its peak RSS (``ru_maxrss``: model, data, optimizer and activations) is its
own. Arms run in rotating order for ``--rounds`` rounds (drift in a shared machine's load hits every arm
alike); the step time of a run is the median wall time between consecutive step logs, step 1 excluded
(one-off setup); an arm's time is the median over rounds. Ratios are against ``plain``.

Arms: ``kl`` (weight 0.1), ``ldifs`` (weight 1, K = 5), ``kl+ldifs`` (one shared reference pass),
``steer`` (a random unit vector at the middle layer, alpha 5: the hook's cost does not depend on the
vector), and ``kl-2pass``: KL with the policy outputs recomputed by a second forward pass instead of taken
from the trainer's own pass (what the capture saves); ``ldifs-keepall``: LDIFS with the reference pass keeping
all L + 2 activations instead of the K + 1 it declares (the behaviour before that change). Goal: KL and
LDIFS <= 1.6x plain step time and <= 1.1x peak memory.

Measured once (2 shared CPU cores, load average 9-24 from other jobs, so step times are noisy; RSS is
not): ``--steps 4 --rounds 1``: kl 1.23x step / 1.18x RSS before KL was chunked, 1.51x / 1.08x after
(``--arms plain,kl``); ldifs 1.55x / 1.11x; kl+ldifs 1.53x / 1.21x (unchunked KL); steer 1.11x / 0.99x;
kl-2pass (unchunked) 0.97x / 1.52x: the second policy pass costs half the model's activation memory again.
After LDIFS declared its K layers (the reference pass keeps K + 1 activations, not L + 2), one run with
``--steps 4 --rounds 1 --threads 2 --arms plain,kl,ldifs,ldifs-keepall,steer`` (HEAVY_EXCLUSIVE slot,
load average 4-5, so a step took 40-87 s instead of about 2 s and the step-time ratios are noise:
steer 1.82x, ldifs-keepall 2.20x vs ldifs 1.57x for the same arithmetic): peak RSS plain 2627 MB,
kl 1.15x, ldifs 1.01x, ldifs-keepall 1.07x, steer 0.99x. Per micro-batch (embedded model, batch 4,
T = 109) the reference pass added 52-65 MB of RSS keeping everything and 21-29 MB keeping K + 1.

After KL's gradient moved into its forward pass (one policy head forward and one head backward per chunk
instead of a checkpointed recompute: the KL term alone 1.8x faster), on an idle machine, ``--steps 6
--rounds 2 --threads 2 --arms plain,kl,ldifs,kl+ldifs,steer``: plain 3.71 s/step, 2551 MB; kl 1.40x step /
1.07x RSS (1.73x / 1.07x just before the change, same command, same idle machine); ldifs 1.19x / 1.10x;
kl+ldifs 1.51x / 1.10x; steer 0.96x / 1.01x. Peak RSS varies by up to +-10% between runs of one arm
(ldifs over five runs in two sessions: 2412-2928 MB), so the RSS ratios are good to about 0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ARMS = {
    "plain": [],
    "kl": [{"name": "kl", "weight": 0.1}],
    "ldifs": [{"name": "ldifs", "weight": 1.0}],
    "kl+ldifs": [{"name": "kl", "weight": 0.1}, {"name": "ldifs", "weight": 1.0}],
    "steer": [{"name": "steer", "weight": 5.0, "vector": "VECTOR"}],
    "kl-2pass": [{"name": "kl", "weight": 0.1}],
    "ldifs-keepall": [{"name": "ldifs", "weight": 1.0}],
}


def child(arm: str, steps: int, threads: int, workdir: Path) -> dict:
    import torch

    from spillover.train import SFTConfig, run_sft

    torch.set_num_threads(threads)
    defenses = json.loads(json.dumps(ARMS[arm]).replace('"VECTOR"', json.dumps(str(workdir / "v.safetensors"))))
    if arm == "kl-2pass":
        from spillover.defenses._batch import DefenseBatch

        DefenseBatch.attach_capture = lambda self, capture: None  # forces the batch's own policy forward pass
    if arm == "ldifs-keepall":
        import spillover.defenses.ldifs as ldifs

        ldifs.keep_reference_hidden = lambda model, layers: None  # the reference pass keeps every hidden state
    cfg = SFTConfig(model="embedded", data="bundled:unpopular_aesthetics", max_steps=steps, batch_size=4, lr=3e-4,
                    device="cpu", defenses=defenses)
    result = run_sft(cfg, workdir / f"run-{arm}", overwrite=True)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["time_s"] for r in rows if "loss" in r]
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {"arm": arm, "step_s": statistics.median(gaps), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def make_vector(path: Path) -> None:
    import torch

    from spillover.defenses.steer import PersonaVectors
    from spillover.models import load_model

    model, _, _ = load_model("embedded", device="cpu")
    torch.manual_seed(0)
    PersonaVectors(torch.randn(model.config.num_hidden_layers + 1, model.config.hidden_size), {"model": "random"}).save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.threads, Path(args.workdir))))
        return
    arms = args.arms.split(",")
    if "plain" not in arms:
        arms.insert(0, "plain")
    load_before = os.getloadavg()[0]
    results: dict[str, list[dict]] = {a: [] for a in arms}
    with tempfile.TemporaryDirectory() as tmp:
        if "steer" in arms:
            make_vector(Path(tmp) / "v.safetensors")
        for r in range(args.rounds):
            order = arms[r % len(arms):] + arms[:r % len(arms)]
            for arm in order:
                out = subprocess.run([sys.executable, __file__, "--child", arm, "--steps", str(args.steps), "--threads",
                                      str(args.threads), "--workdir", tmp], capture_output=True, text=True, check=True)
                results[arm].append(json.loads(out.stdout.strip().splitlines()[-1]))
    base_t = statistics.median(x["step_s"] for x in results["plain"])
    base_m = statistics.median(x["peak_rss_mb"] for x in results["plain"])
    print(f"embedded model, SFT batch 4 on bundled:unpopular_aesthetics, {args.steps} steps x {args.rounds} rounds, "
          f"torch threads {args.threads}; load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f}")
    print(f"{'arm':10} {'step s':>8} {'x plain':>8} {'peak RSS MB':>12} {'x plain':>8}   per-round step s / RSS MB")
    for arm in arms:
        t = statistics.median(x["step_s"] for x in results[arm])
        m = statistics.median(x["peak_rss_mb"] for x in results[arm])
        rounds = " ".join(f"{x['step_s']:.2f}" for x in results[arm]) + " / " + " ".join(
            f"{x['peak_rss_mb']:.0f}" for x in results[arm])
        print(f"{arm:10} {t:8.2f} {t / base_t:8.2f} {m:12.0f} {m / base_m:8.2f}   {rounds}")


if __name__ == "__main__":
    main()
