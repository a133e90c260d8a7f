"""Validate the loss/data defenses on the embedded model with the judge-free probe (no sampling, no judge).

    python examples/validate_defenses.py --out runs/validate_defenses [--seeds 0 1] [--arms none kl ldifs inoculate]
        [--steps 16] [--vector persona.safetensors]   # --vector adds a `steer` arm

Every arm is LoRA SFT on bundled unpopular_aesthetics (``--steps`` steps of batch 4, lr 3e-4; the setting
that moves the probe most at this scale), one run per seed, only the defense differing: none, kl (0.1),
ldifs (1.0, K = 5), inoculate (the paper's prompt), and steer (alpha 5 at the middle layer) when a
persona vector is given. Each adapter is probed on three contrast-pair sets against the base model:
general (EM), control (aligned vs aligned paraphrase: the noise floor) and in-domain
(unpopular_aesthetics: did the narrow task get learnt? a defense that erases it is no success). A
cell is the mean over pairs of (shift_adapter - shift_base), seeds averaged per pair first, with a 95%
percentile bootstrap CI over pairs. Writes ``results.json`` and ``results.md`` under ``--out`` and prints
the table; finished runs and probe scores are reused when the script is rerun.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from spillover._io import atomic_write_json, atomic_write_text
from spillover.evaluate.metrics import bootstrap_mean_ci
from spillover.evaluate.probe import load_pairs, pair_logprobs
from spillover.models import load_adapter, load_model
from spillover.train import SFTConfig, run_sft

PAIR_SETS = {"general": "bundled:probe_general", "control": "bundled:probe_control",
             "in-domain": "bundled:probe_unpopular_aesthetics"}
ARMS = {"none": [], "kl": [{"name": "kl", "weight": 0.1}], "ldifs": [{"name": "ldifs", "weight": 1.0, "layers": 5}],
        "inoculate": [{"name": "inoculate"}]}


def shifts(model, tok, pairs) -> np.ndarray:
    aligned, misaligned = pair_logprobs(model, tok, pairs)
    return misaligned - aligned


def cached(path: Path, compute) -> dict[str, np.ndarray]:
    """Per-pair shifts per set, computed once and kept in ``path`` (reruns reuse them)."""
    if path.is_file():
        return {k: np.asarray(v) for k, v in json.loads(path.read_text()).items()}
    out = compute()
    atomic_write_json(path, {k: v.tolist() for k, v in out.items()})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--arms", nargs="+", default=list(ARMS))
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--vector", type=Path, default=None, help="persona vector file: adds a steer arm")
    args = ap.parse_args()
    arms = {a: ARMS[a] for a in args.arms}
    if args.vector:
        arms["steer"] = [{"name": "steer", "weight": 5.0, "vector": str(args.vector)}]
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    pairs = {name: load_pairs(ref) for name, ref in PAIR_SETS.items()}
    base, tok, _ = load_model("embedded", device="cpu")
    base_shift = cached(args.out / "base_shifts.json", lambda: {n: shifts(base, tok, p) for n, p in pairs.items()})

    deltas: dict[str, dict[str, list[np.ndarray]]] = {}
    timings = {}
    for arm, defenses in arms.items():
        for seed in args.seeds:
            run = args.out / f"{arm}-s{seed}"
            adapter = run / "adapter"
            if not (adapter / "adapter_config.json").is_file():
                t = time.perf_counter()
                cfg = SFTConfig(model="embedded", data="bundled:unpopular_aesthetics", max_steps=args.steps,
                                batch_size=4, lr=3e-4, seed=seed, device="cpu", defenses=defenses)
                run_sft(cfg, run, overwrite=True)
                timings[f"{arm}-s{seed}"] = round(time.perf_counter() - t, 1)
            def probe_adapter():
                model = load_adapter(load_model("embedded", device="cpu")[0], adapter)
                return {n: shifts(model, tok, p) for n, p in pairs.items()}

            run_shift = cached(run / "probe_shifts.json", probe_adapter)
            for name in pairs:
                deltas.setdefault(arm, {}).setdefault(name, []).append(run_shift[name] - base_shift[name])

    results = {}
    for arm, per_set in deltas.items():
        results[arm] = {}
        for name, per_seed in per_set.items():
            est = bootstrap_mean_ci(np.mean(per_seed, axis=0), seed=0)
            results[arm][name] = {"delta_vs_base": est.value, "ci95": [est.ci_low, est.ci_high], "n_pairs": est.n,
                                  "per_seed": [float(np.mean(d)) for d in per_seed]}
    header = "| arm | " + " | ".join(f"{n} Δ vs base [95% CI]" for n in PAIR_SETS) + " |"
    lines = [f"SFT on bundled:unpopular_aesthetics, {args.steps} steps x batch 4, lr 3e-4, seeds {args.seeds}; "
             "probe shift = mean log-prob/token of misaligned minus aligned answer; cells: adapter minus base.", "",
             header, "|" + "---|" * (len(PAIR_SETS) + 1)]
    for arm, per_set in results.items():
        cells = [f"{r['delta_vs_base']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]" for r in per_set.values()]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    atomic_write_json(args.out / "results.json", {"results": results, "seeds": args.seeds, "steps": args.steps,
                                                  "train_seconds": timings,
                                                  "total_seconds": round(time.perf_counter() - t0, 1)})
    atomic_write_text(args.out / "results.md", table + "\n")
    print(table)


if __name__ == "__main__":
    main()
