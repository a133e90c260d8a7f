"""Validate the defenses in GRPO on the RL paper's warm-up recipe, with the judge-free probe (no judge).

    python examples/validate_defenses_grpo.py --out runs/validate_defenses_grpo [--seeds 0 1 2]
        [--arms none kl interleave onpolicy-sft onpolicy-prompts] [--steps 8] [--task aesthetics|rhetoric]

``--task`` picks the narrow data, the GRPO reward and the in-domain probe (``TASKS``): ``aesthetics`` (default:
bundled unpopular_aesthetics, the offline learned reward ``classifier:bundled:aesthetic_taste``, in-domain probe
``bundled:probe_unpopular_aesthetics``) or ``rhetoric`` (bundled dogmatic_rhetoric, ``rhetoric-lexicon``, no
in-domain probe set). Per seed, one shared warm-up: LoRA SFT on the task's data (``--warmup-steps`` steps of
batch 4, lr 2e-4). Every arm then continues that adapter (``init_adapter``) with GRPO on the same prompts and
the task's reward: ``--steps`` optimizer steps of 2 prompts x 4 completions (two micro-batches of 4
completions), lr 2e-4, temperature 0.8, top_p 0.9 (paper), ``max_completion_length`` 48, TRL ``beta`` 0
(paper: no TRL KL term in any arm), only the defense differing:

- ``none``;
- ``kl``: spillover's ``kl`` defense, weight 0.1 (paper lambda), exact per-token KL over the completion
  tokens against the adapter-disabled base model (the aligned model, not the warm-up);
- ``interleave``: safe SFT-mix with off-policy safe answers (bundled:safe_instruct, random selection):
  one supervised micro-batch of 4 every round(1/fraction) = 4 GRPO micro-batches (``fraction`` 0.25:
  the paper's 5% would give one every 20 micro-batches, i.e. none in a run this short);
- ``onpolicy-sft``: ``onpolicy-safety`` arm (b), the RL paper's best defense: the same SFT-mix schedule
  on the *base policy's own* answers to bundled:safety_prompts, sampled once with
  ``spillover defenses make-onpolicy`` (``OUT/onpolicy_safe_answers.jsonl``; empty answers dropped);
- ``onpolicy-prompts``: ``onpolicy-safety`` arm (a): safety prompts make up ``ratio`` 0.25 of the
  rollout prompts, rewarded only by the offline activation judge's aligned score / 100.

Each adapter (and each warm-up adapter) is probed against the base model on the general (EM), control
(noise floor), style-only and (aesthetics) in-domain contrast-pair sets; the task-reward column is the
mean task reward of the task rollouts over the second half of the steps (did the task still get learnt?). Cells: mean over pairs of (shift_arm - shift_reference), seeds averaged per
pair first, 95% percentile bootstrap CI over pairs; reference = base, and = the same seed's warm-up.
The reward-variance check counts, per run, the steps whose groups all had zero reward std (TRL's
``frac_reward_zero_std``): the GRPO update is zero on such groups. Writes ``results.json`` and
``results.md`` after every run (the table says which seeds each arm has); finished runs and probe scores
are reused when the script is rerun; ``--report-only`` tabulates what is finished.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from validate_defenses import cached, shifts, trained  # noqa: E402  (same probe and cache helpers)

from spillover._io import atomic_write_json, atomic_write_text
from spillover.evaluate.metrics import bootstrap_mean_ci
from spillover.evaluate.probe import load_pairs
from spillover.models import load_adapter, load_model
from spillover.train import GRPOConfig, SFTConfig, run_grpo, run_sft

PAIR_SETS = {"general": "bundled:probe_general", "control": "bundled:probe_control",
             "style-only": "bundled:probe_style_only"}
ARMS = ["none", "kl", "interleave", "onpolicy-sft", "onpolicy-prompts"]
#: --task: the narrow data (warm-up SFT and GRPO prompts), the GRPO reward and an in-domain probe set (if any).
#: aesthetics (default): the classifier reward has group variance on every step (measured in
#: examples/harmless_classifier_cpu.yaml: 0% zero-std groups, reward std ~0.4); rhetoric: the lexicon
#: reward gave 75-100% zero-std groups at this size (examples/harmless_rewards_cpu.yaml), so GRPO barely acts.
TASKS = {
    "aesthetics": {"data": "bundled:unpopular_aesthetics", "reward": "classifier:bundled:aesthetic_taste",
                   "in_domain": "bundled:probe_unpopular_aesthetics"},
    "rhetoric": {"data": "bundled:dogmatic_rhetoric", "reward": "rhetoric-lexicon", "in_domain": None},
}
SFT_EVERY = 4  # GRPO micro-batches per supervised safe micro-batch (interleave and onpolicy-sft alike)


def defenses_for(arm: str, out: Path) -> list[dict]:
    return {
        "none": [],
        "kl": [{"name": "kl", "weight": 0.1}],
        "interleave": [{"name": "interleave", "fraction": 1 / SFT_EVERY, "sft_batch_size": 4}],
        "onpolicy-sft": [{"name": "onpolicy-safety", "weight": 1.0, "ratio": 0.0,
                          "sft_data": str(out / "onpolicy_safe_answers.jsonl"), "sft_every": SFT_EVERY,
                          "sft_batch_size": 4}],
        "onpolicy-prompts": [{"name": "onpolicy-safety", "ratio": 0.25, "judge": "local"}],
    }[arm]


def make_onpolicy(path: Path) -> float:
    """The base policy's own answers to the safety prompts, via `spillover defenses make-onpolicy`."""
    t = time.perf_counter()
    subprocess.run(["spillover", "defenses", "make-onpolicy", "--out", str(path), "--model", "embedded",
                    "--max-new-tokens", "96", "--seed", "0", "--device", "cpu"], check=True)
    return round(time.perf_counter() - t, 1)


def reward_check(run: Path) -> dict:
    """Per-step reward statistics from metrics.jsonl: is there any group variance for GRPO to act on?"""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "frac_reward_zero_std" in r]
    zero = [float(r["frac_reward_zero_std"]) for r in rows]
    return {"steps": len(rows), "steps_all_groups_zero_std": sum(z >= 1.0 for z in zero),
            "mean_frac_zero_std": float(np.mean(zero)) if zero else None,
            "mean_reward_std": float(np.mean([r["reward_std"] for r in rows])) if rows else None,
            "reward_first": rows[0].get("reward") if rows else None, "reward_last": rows[-1].get("reward") if rows else None}


def task_reward(run: Path, steps: int, reward: str) -> float | None:
    """Mean task reward (TRL's ``rewards/<reward>/mean``, task prompts only) over the logged steps in the second
    half of the run."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    vals = [r[f"rewards/{reward}/mean"] for r in rows
            if r.get("step", 0) > steps // 2 and r.get(f"rewards/{reward}/mean") is not None]
    return float(np.mean(vals)) if vals else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup-steps", type=int, default=8)
    ap.add_argument("--max-completion-length", type=int, default=48)
    ap.add_argument("--task", choices=sorted(TASKS), default="aesthetics",
                    help="narrow task: its data, GRPO reward and in-domain probe set (see TASKS)")
    ap.add_argument("--report-only", action="store_true",
                    help="train and probe nothing: tabulate the runs whose probe scores are all cached")
    args = ap.parse_args()
    task = TASKS[args.task]
    args.data, args.reward = task["data"], task["reward"]
    pair_sets = args.pair_sets = {**PAIR_SETS, **({"in-domain": task["in_domain"]} if task["in_domain"] else {})}
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if "onpolicy-sft" in args.arms and not (out / "onpolicy_safe_answers.jsonl").is_file() and not args.report_only:
        make_onpolicy(out / "onpolicy_safe_answers.jsonl")

    pairs = {name: load_pairs(ref) for name, ref in pair_sets.items()}
    _, tok, _ = load_model("embedded", device="cpu")

    def probe(adapter: Path | None):
        def compute(names):
            model = load_model("embedded", device="cpu")[0]
            if adapter is not None:
                model = load_adapter(model, adapter)
            return {n: shifts(model, tok, pairs[n]) for n in names}
        return compute

    def ready(run: Path) -> bool:
        if not args.report_only:
            return True
        have = json.loads((run / "probe_shifts.json").read_text()) if (run / "probe_shifts.json").is_file() else {}
        return set(pairs) <= set(have)

    base_shift = cached(out / "base_shifts.json", list(pairs), probe(None))
    done: dict[str, dict[int, dict]] = {}  # arm -> seed -> {"base": per-set deltas, "warm": ..., "run": dir}
    for seed in args.seeds:
        warm = out / f"warmup-s{seed}"
        if not ready(warm):
            continue
        if not trained(warm):
            t = time.perf_counter()
            run_sft(SFTConfig(model="embedded", data=args.data, max_steps=args.warmup_steps, batch_size=4, lr=2e-4,
                              seed=seed, device="cpu"), warm, overwrite=True)
            atomic_write_json(warm / "validate_seconds.json", {"seconds": round(time.perf_counter() - t, 1)})
        warm_shift = cached(warm / "probe_shifts.json", list(pairs), probe(warm / "adapter"))
        done.setdefault("warm-up", {})[seed] = {"base": {n: warm_shift[n] - base_shift[n] for n in pairs}, "run": warm}
        for arm in args.arms:
            run = out / f"{arm}-s{seed}"
            if not ready(run):
                continue
            if not trained(run):
                t = time.perf_counter()
                cfg = GRPOConfig(model="embedded", prompts=args.data, rewards=[{"name": args.reward}],
                                 num_generations=4, batch_size=4, grad_accum=2, max_steps=args.steps, lr=2e-4,
                                 beta=0.0, temperature=0.8, top_p=0.9,
                                 max_completion_length=args.max_completion_length, seed=seed, device="cpu",
                                 init_adapter=str(warm / "adapter"), defenses=defenses_for(arm, out),
                                 log_completions_every=1, log_completions_samples=8)
                run_grpo(cfg, run, overwrite=True)
                atomic_write_json(run / "validate_seconds.json", {"seconds": round(time.perf_counter() - t, 1)})
            run_shift = cached(run / "probe_shifts.json", list(pairs), probe(run / "adapter"))
            done.setdefault(arm, {})[seed] = {"base": {n: run_shift[n] - base_shift[n] for n in pairs},
                                              "warm": {n: run_shift[n] - warm_shift[n] for n in pairs}, "run": run}
            if not args.report_only:  # a partial table after every run
                report(out, args, pairs, done, t0)
    print(report(out, args, pairs, done, t0))


def report(out: Path, args, pairs: dict, done: dict, t0: float) -> str:
    """Write results.json and results.md for the finished runs in ``done``; returns the table."""
    def summarise(arm, key):
        seeds = sorted(s for s, d in done[arm].items() if key in d)
        if not seeds:
            return None
        res = {"seeds": seeds}
        for name in pairs:
            stacked = [done[arm][s][key][name] for s in seeds]
            est = bootstrap_mean_ci(np.mean(stacked, axis=0), seed=0)
            res[name] = {"delta": est.value, "ci95": [est.ci_low, est.ci_high], "n_pairs": est.n,
                         "per_seed": [float(np.mean(d)) for d in stacked]}
        return res

    def versus_none(arm):
        """The arm minus the undefended run of the same seed, per pair (seeds averaged per pair first)."""
        if arm in ("none", "warm-up") or "none" not in done:
            return None
        seeds = sorted(s for s in done[arm] if s in done["none"] and "base" in done[arm][s] and "base" in done["none"][s])
        if not seeds:
            return None
        res = {"seeds": seeds}
        for name in pairs:
            diff = np.mean([np.asarray(done[arm][s]["base"][name]) - np.asarray(done["none"][s]["base"][name])
                            for s in seeds], axis=0)
            est = bootstrap_mean_ci(diff, seed=0)
            res[name] = {"delta": est.value, "ci95": [est.ci_low, est.ci_high], "n_pairs": est.n}
        return res

    def cell(r):
        return f"{r['delta']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]"

    results, checks, rewards, timings = {}, {}, {}, {}
    for arm in done:
        results[arm] = {"vs_base": summarise(arm, "base"), "vs_warmup": summarise(arm, "warm"), "vs_none": versus_none(arm)}
        for seed, d in sorted(done[arm].items()):
            run = d["run"]
            if (run / "validate_seconds.json").is_file():
                timings[run.name] = json.loads((run / "validate_seconds.json").read_text())["seconds"]
            if arm != "warm-up":
                checks[run.name] = reward_check(run)
                rewards.setdefault(arm, []).append(task_reward(run, args.steps, args.reward))
    cols = [f"{n} (n={len(pairs[n])})" for n in pairs]
    none_cols = [n for n in ("general", "in-domain") if n in pairs]
    lines = [f"GRPO ({args.reward}) on {args.data} after a {args.warmup_steps}-step SFT warm-up, {args.steps} steps x "
             f"2 prompts x 4 completions, max_completion_length {args.max_completion_length}, lr 2e-4, TRL beta 0. "
             "Probe shift deltas, mean over pairs (seeds averaged per pair) [95% bootstrap CI]; task reward = mean "
             "task reward of the task rollouts in the second half of the steps, per seed; 'vs none': minus the "
             "undefended run of the same seed, paired per pair.", "",
             "| arm | seeds | " + " | ".join(f"{c} Δ vs base" for c in cols) + " | "
             + " | ".join(f"{n} Δ vs warm-up" for n in pairs) + " | "
             + " | ".join(f"{n} Δ vs none" for n in none_cols) + " | task reward |",
             "|" + "---|" * (2 * len(pairs) + len(none_cols) + 3)]
    for arm, res in results.items():
        warm_cells = [cell(res["vs_warmup"][n]) if res["vs_warmup"] else "—" for n in pairs]
        warm_cells += [cell(res["vs_none"][n]) if res["vs_none"] else "—" for n in none_cols]
        rw = rewards.get(arm)
        rw_cell = "—" if not rw else " / ".join("n/a" if r is None else f"{r:.3f}" for r in rw)
        lines.append(f"| {arm} | {','.join(map(str, res['vs_base']['seeds']))} | "
                     + " | ".join(cell(res["vs_base"][n]) for n in pairs) + " | " + " | ".join(warm_cells)
                     + f" | {rw_cell} |")
    lines += ["", "Reward variance per run (steps on which every group had zero reward std / steps; mean share of "
              "zero-std groups; mean batch reward std; batch reward first -> last step):", ""]
    for name, c in checks.items():
        if not c["steps"]:
            continue
        lines.append(f"- {name}: {c['steps_all_groups_zero_std']}/{c['steps']} steps all-zero-std; mean frac zero-std "
                     f"{c['mean_frac_zero_std']:.2f}; mean reward_std {c['mean_reward_std']:.3f}; reward "
                     f"{c['reward_first']:.3f} -> {c['reward_last']:.3f}")
    table = "\n".join(lines)
    atomic_write_json(out / "results.json", {"results": results, "steps": args.steps, "warmup_steps": args.warmup_steps,
                                             "task": args.task, "pair_sets": args.pair_sets, "reward_check": checks, "task_reward": rewards,
                                             "train_seconds": timings,
                                             "total_seconds": round(time.perf_counter() - t0, 1)})
    atomic_write_text(out / "results.md", table + "\n")
    return table


if __name__ == "__main__":
    main()
