"""GRPO step time on the embedded model, split into generation, reward, loss and optimizer.

    python bench/bench_grpo.py [--steps 4] [--max-completion-length 96] [--device cpu] [--threads N]
                               [--merge auto|on|off] [--compare [--reps 3]]
                               [--rollouts unmerged merged merged-bf16 [--dist-prompts 8]]

One prompt x 4 completions per step (bundled dogmatic_rhetoric questions), rhetoric-lexicon reward,
LoRA defaults, through ``run_grpo`` itself. Per step, from the run's metrics.jsonl:

* generation: ``time/generation_s`` (TRL's ``_generate``: chat template, sampling, decoding);
* reward: the sum of ``time/reward/<name>_s``;
* loss fwd+bwd: TRL's ``step_time`` (its ``training_step``) minus the two above;
* optimizer + rest: the wall time between two log lines minus ``step_time`` (clipping, AdamW, callbacks).

Step 1 (which also pays one-off setup) is shown apart; the split is the mean over the later steps. On a
shared CPU, pass ``--threads 1``: with other processes busy, 2 torch threads ran ~5x slower than 1.
``--merge`` sets ``merge_rollout_adapter`` (auto merges the adapter into the weights for rollouts on CPU);
several values (``--merge off on``) run one after another in the same process and print step and generation
times side by side, in wall and process CPU time (CPU time moves less with other processes' load).

``--rollouts`` runs whole GRPO runs for rollout variants in turn (``unmerged``: fp32, adapter unmerged;
``merged``: fp32, adapter merged; ``merged-bf16``: merged, sampled from a bf16 copy, ``rollout_dtype:
bfloat16``; ``unmerged-bf16``); a name listed twice runs twice (e.g. ``unmerged merged merged-bf16 unmerged
merged merged-bf16`` alternates against load drift) and the side-by-side table takes each name's median. Then
the rollout distribution change of bf16 (``--dist-prompts`` prompts x 4 completions, a trained-looking adapter):
completions sampled from the bf16 merged policy, each sampled token's log-prob (at the sampling temperature,
before top-p, as TRL's loss sees it) under the bf16 policy and under the fp32 policy the loss uses; it prints
the mean / p99 / max |delta| per token, the mean signed delta, the mean |sum of deltas| per completion (the
sequence-level log importance ratio an IS correction would use), and how many completions equal fp32 sampling
with the same seed.

``--compare`` instead times one step's generation alone (TRL's ``_generate`` of the GRPO trainer, the
same 1 prompt x 4 completions, a non-zero adapter, the same seed), each variant in turn within one
process, ``--reps`` rounds alternating, and prints the median per variant and its ratio to the unmerged
baseline, plus whether each variant's completions equal the baseline's token for token:

* ``unmerged``: the adapter as a separate LoRA path in every linear (the path before merged rollouts);
* ``merged``: the adapter folded into the base weights (``merge_rollout_adapter: on``);
* ``merged+static``: and a static KV cache (``cache_implementation: static``);
* ``merged+bf16``: sampled from a bf16 copy of the merged weights (``rollout_dtype: bfloat16``; changes the
  sampling, so its completions may differ);
* ``merged, top_p=1``: without the nucleus filter (a probe of what the 49k-vocab sort costs; changes the
  sampling, so its completions differ by design);
* ``merged, 2 threads`` / ``unmerged, 2 threads`` (only when 2 threads are available): thread count.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from spillover.train._grpo_config import GRPOConfig
from spillover.train.grpo import _GRPOTrainer, run_grpo


def split(row: dict, wall: float) -> dict[str, float]:
    gen = row["time/generation_s"]
    reward = sum(v for k, v in row.items() if k.startswith("time/reward/"))
    return {"generation": gen, "reward": reward, "loss fwd+bwd": row["step_time"] - gen - reward,
            "optimizer + rest": wall - row["step_time"]}


def compare(args) -> None:
    """Generation alone, variants side by side (see the module docstring)."""
    import statistics
    import time

    from transformers import set_seed

    from spillover.data import resolve_data_path
    from spillover.train.grpo import build_grpo_trainer, build_rewards, load_grpo_prompts, merged_adapter
    from spillover.train.sft import prepare_policy

    cfg = GRPOConfig(model="embedded", prompts="bundled:dogmatic_rhetoric", rewards=["rhetoric-lexicon"],
                     num_generations=4, batch_size=4, max_steps=1, device=args.device,
                     max_completion_length=args.max_completion_length, log_completions_every=0)
    model, tok, _ = prepare_policy(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: B != 0 (a fresh one is all-zero and merges to nothing)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    prompt = load_grpo_prompts(resolve_data_path(cfg.prompts))[0].messages
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_grpo_trainer(cfg, model, tok, [{"prompt": prompt}], build_rewards(cfg), Path(tmp))
    trainer.model.train()
    base_cache = trainer.generation_config.cache_implementation
    base_top_p = trainer.generation_config.top_p
    threads = torch.get_num_threads()

    def run(merge: bool, cache=base_cache, top_p=base_top_p, n_threads=threads, dtype=None):
        trainer.merge_rollout_adapter, trainer.rollout_dtype = merge, dtype
        trainer.generation_config.cache_implementation = cache
        trainer.generation_config.top_p = top_p
        torch.set_num_threads(n_threads)
        set_seed(0)
        t0, c0 = time.perf_counter(), time.process_time()
        out = trainer._generate([prompt] * 4)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        trainer.generation_config.cache_implementation, trainer.generation_config.top_p = base_cache, base_top_p
        torch.set_num_threads(threads)
        trainer.rollout_dtype = None
        return seconds, cpu, out[1]

    variants = {"unmerged": dict(merge=False), "merged": dict(merge=True),
                "merged+static": dict(merge=True, cache="static"), "merged+bf16": dict(merge=True, dtype=torch.bfloat16),
                "merged, top_p=1": dict(merge=True, top_p=1.0)}
    if threads >= 2:
        variants.update({"unmerged, 1 thread": dict(merge=False, n_threads=1),
                         "merged, 1 thread": dict(merge=True, n_threads=1)})
    if args.variants:
        unknown = set(args.variants) - set(variants)
        if unknown:
            raise SystemExit(f"unknown --variants {sorted(unknown)}; choose from {list(variants)}")
        variants = {k: v for k, v in variants.items() if k == "unmerged" or k in args.variants}
    c0 = time.process_time()
    with merged_adapter(trainer.model):
        merge_cpu = time.process_time() - c0
        c1 = time.process_time()
    restore_cpu = time.process_time() - c1
    run(False)  # warm-up (allocator, first-call setup)
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpus: dict[str, list[float]] = {k: [] for k in variants}
    completions: dict[str, list] = {}
    for _ in range(args.reps):
        for name, kw in variants.items():
            seconds, cpu, ids = run(**kw)
            times[name].append(seconds)
            cpus[name].append(cpu)
            completions.setdefault(name, ids)
    base, base_cpu = statistics.median(times["unmerged"]), statistics.median(cpus["unmerged"])
    lengths = [len(c) for c in completions["unmerged"]]
    print(f"generation only: embedded model on {args.device}, torch threads {threads}, 1 prompt x 4 completions, "
          f"max {args.max_completion_length} new tokens (lengths {lengths}), {args.reps} alternating reps; "
          f"load average {os.getloadavg()[0]:.2f}; merge {merge_cpu:.3f} s CPU, restore {restore_cpu:.4f} s CPU "
          f"(included in the merged variants' times). Wall time, and process CPU time (less sensitive to other "
          f"processes on a shared machine), medians:")
    for name, ts in times.items():
        med, cpu = statistics.median(ts), statistics.median(cpus[name])
        same = completions[name] == completions["unmerged"]
        print(f"  {name:<20} wall {med:6.2f} s ({', '.join(f'{t:.2f}' for t in ts)}) x{base / med:.2f}   "
              f"CPU {cpu:6.2f} s ({', '.join(f'{t:.2f}' for t in cpus[name])}) x{base_cpu / cpu:.2f}   "
              f"completions equal unmerged: {same}")


@contextlib.contextmanager
def cpu_clock():
    """Add process CPU time to the run's logged rows (``cpu_s``, cumulative) and the generation's CPU time
    (``time/generation_cpu_s``): on a shared machine CPU time moves less with other processes than wall time."""
    generate, log = _GRPOTrainer._generate, _GRPOTrainer.log

    def timed_generate(self, prompts):
        c0 = time.process_time()
        out = generate(self, prompts)
        self._metrics["train" if self.model.training else "eval"]["time/generation_cpu_s"].append(time.process_time() - c0)
        return out

    def timed_log(self, logs, *a, **kw):
        return log(self, {**logs, "cpu_s": time.process_time()}, *a, **kw)

    _GRPOTrainer._generate, _GRPOTrainer.log = timed_generate, timed_log
    try:
        yield
    finally:
        _GRPOTrainer._generate, _GRPOTrainer.log = generate, log


def one_run(args, merge: str, dtype: str = "model") -> dict:
    """One ``run_grpo`` of ``args.steps`` steps; prints its split and returns the later steps' means."""
    load_before = os.getloadavg()
    cfg = GRPOConfig(model="embedded", prompts="bundled:dogmatic_rhetoric", rewards=["rhetoric-lexicon"],
                     num_generations=4, batch_size=4, max_steps=args.steps, device=args.device,
                     max_completion_length=args.max_completion_length, log_completions_every=0,
                     merge_rollout_adapter=merge, rollout_dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp, cpu_clock():
        result = run_grpo(cfg, Path(tmp) / "run", checkpoint_minutes=None)  # no timed checkpoint inside a step
        rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "step_time" in r]
    walls = [b["time_s"] - a["time_s"] for a, b in zip([{"time_s": 0.0}, *steps], steps)]
    parts = [split(r, w) for r, w in zip(steps, walls)]

    print(f"embedded model on {args.device}, torch threads {torch.get_num_threads()}, 1 prompt x 4 completions x "
          f"{args.max_completion_length} tokens max, rhetoric-lexicon, merge_rollout_adapter {merge}, "
          f"rollout_dtype {dtype}, "
          f"{len(steps)} steps; "
          f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print(f"completion length (tokens, mean per step): {[round(r['completions/mean_length'], 1) for r in steps]}")
    print(f"step 1 (with one-off setup): {walls[0]:.2f} s  ({', '.join(f'{k} {v:.2f} s' for k, v in parts[0].items())})")
    cpus = [b["cpu_s"] - a["cpu_s"] for a, b in zip(steps, steps[1:])]
    later, later_walls = parts[1:], walls[1:]
    if not later:
        return {}
    wall = sum(later_walls) / len(later_walls)
    print(f"steps 2..{len(steps)}: {wall:.2f} s per step (min {min(later_walls):.2f}, max {max(later_walls):.2f})")
    for key in later[0]:
        mean = sum(p[key] for p in later) / len(later)
        print(f"  {key:<17} {mean:7.3f} s  {100 * mean / wall:5.1f} %")

    print(f"  process CPU per step {sum(cpus) / len(cpus):.2f} s, generation CPU "
          f"{sum(r['time/generation_cpu_s'] for r in steps[1:]) / len(later):.2f} s")
    return {"wall": wall, "cpu": sum(cpus) / len(cpus), "gen": sum(p["generation"] for p in later) / len(later),
            "gen_cpu": sum(r["time/generation_cpu_s"] for r in steps[1:]) / len(later)}


#: --rollouts variant -> (merge_rollout_adapter, rollout_dtype)
ROLLOUTS = {"unmerged": ("off", "model"), "merged": ("on", "model"), "merged-bf16": ("on", "bfloat16"),
            "unmerged-bf16": ("off", "bfloat16")}


def rollouts(args) -> None:
    """Whole runs per rollout variant, side by side (medians per name), then the bf16 distribution change."""
    import statistics

    runs: dict[str, list[dict]] = {}
    for i, name in enumerate(args.rollouts):
        print(f"--- run {i + 1}/{len(args.rollouts)}: {name}")
        runs.setdefault(name, []).append(one_run(args, *ROLLOUTS[name]))
    if all(runs.values()) and all(all(r) for r in runs.values()):
        med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
        first = next(iter(med))
        print(f"side by side (steps 2..{args.steps}, mean per run, median over {', '.join(f'{n} x{len(r)}' for n, r in runs.items())}; "
              f"ratio = {first} / variant):")
        for name, m in med.items():
            f = med[first]
            print(f"  {name:<14} step wall {m['wall']:6.2f} s x{f['wall'] / m['wall']:.2f}  step CPU {m['cpu']:6.2f} s "
                  f"x{f['cpu'] / m['cpu']:.2f}  generation wall {m['gen']:6.2f} s x{f['gen'] / m['gen']:.2f}  "
                  f"generation CPU {m['gen_cpu']:6.2f} s x{f['gen_cpu'] / m['gen_cpu']:.2f}")
    else:
        print("side by side: needs --steps >= 2 (step 1 carries one-off setup)")
    if any(ROLLOUTS[n][1] != "model" for n in runs):
        distribution_change(args)


def token_logps(model, prompt_ids: list[int], completion_ids: list[int], temperature: float) -> torch.Tensor:
    """Log-probs of ``completion_ids`` after ``prompt_ids`` (logits / temperature, fp32 softmax, as TRL's loss)."""
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float() / temperature
    return logits.log_softmax(-1).gather(-1, ids[0, len(prompt_ids):, None])[:, 0].cpu()


def distribution_change(args) -> None:
    """Sample from the bf16 merged policy; score the sampled tokens under it and under the fp32 policy."""
    from transformers import set_seed

    from spillover.data import resolve_data_path
    from spillover.train.grpo import build_grpo_trainer, build_rewards, cast_weights, load_grpo_prompts, merged_adapter
    from spillover.train.sft import prepare_policy

    cfg = GRPOConfig(model="embedded", prompts="bundled:dogmatic_rhetoric", rewards=["rhetoric-lexicon"],
                     num_generations=4, batch_size=4, max_steps=1, device=args.device,
                     max_completion_length=args.max_completion_length, log_completions_every=0,
                     merge_rollout_adapter="on", rollout_dtype="bfloat16")
    model, tok, _ = prepare_policy(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter (B != 0), as in --compare
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    prompts = [ex.messages for ex in load_grpo_prompts(resolve_data_path(cfg.prompts))][:args.dist_prompts]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_grpo_trainer(cfg, model, tok, [{"prompt": prompts[0]}], build_rewards(cfg), Path(tmp))
    trainer.model.train()
    policy = trainer.accelerator.unwrap_model(trainer.model)
    deltas, seq_deltas, same, total = [], [], 0, 0
    for i, prompt in enumerate(prompts):
        set_seed(i)
        prompt_ids, bf16_ids = trainer._generate([prompt] * cfg.num_generations)[:2]
        trainer.rollout_dtype = None
        set_seed(i)
        fp32_ids = trainer._generate([prompt] * cfg.num_generations)[1]
        trainer.rollout_dtype = torch.bfloat16
        same += sum(a == b for a, b in zip(bf16_ids, fp32_ids, strict=True))
        total += len(bf16_ids)
        for p_ids, c_ids in zip(prompt_ids, bf16_ids, strict=True):
            if not c_ids:
                continue
            fp32 = token_logps(policy, p_ids, c_ids, cfg.temperature)  # the loss's policy: fp32, adapter unmerged
            with merged_adapter(policy), cast_weights(policy, torch.bfloat16):
                bf16 = token_logps(policy, p_ids, c_ids, cfg.temperature)
            deltas.append(bf16 - fp32)
            seq_deltas.append(float((bf16 - fp32).sum()))
    d = torch.cat(deltas)
    q99 = torch.quantile(d.abs(), 0.99).item()
    print(f"rollout distribution change, bf16 merged vs fp32 policy ({len(prompts)} prompts x {cfg.num_generations} "
          f"completions sampled from bf16, {d.numel()} tokens, temperature {cfg.temperature}, before top-p):")
    print(f"  per token |delta log-prob|: mean {d.abs().mean():.4f}, p99 {q99:.4f}, max {d.abs().max():.4f}; "
          f"mean signed delta (bf16 - fp32) {d.mean():+.4f}")
    print(f"  per completion |sum of deltas| (log IS ratio): mean {sum(abs(x) for x in seq_deltas) / len(seq_deltas):.4f}, "
          f"max {max(abs(x) for x in seq_deltas):.4f}")
    print(f"  completions identical to fp32 sampling with the same seed: {same}/{total}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--max-completion-length", type=int, default=96)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--merge", nargs="+", default=["auto"], choices=["auto", "on", "off"],
                    help="merge_rollout_adapter; several (e.g. off on off on) = runs in turn, compared side by side")
    ap.add_argument("--compare", action="store_true", help="time generation variants side by side instead")
    ap.add_argument("--reps", type=int, default=3, help="--compare: alternating rounds")
    ap.add_argument("--rollouts", nargs="+", default=None, choices=list(ROLLOUTS),
                    help="whole runs per rollout variant side by side (repeat names to alternate), then the bf16 "
                         "rollout distribution change")
    ap.add_argument("--dist-prompts", type=int, default=8, help="--rollouts: prompts for the distribution check")
    ap.add_argument("--variants", nargs="+", default=None,
                    help="--compare: only these variants (with the unmerged baseline), e.g. merged merged+static")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare:
        return compare(args)
    if args.rollouts:
        return rollouts(args)
    summaries = {}
    for i, merge in enumerate(args.merge):
        summaries[f"{i + 1}: merge {merge}"] = one_run(args, merge)
    if len(summaries) > 1:
        print("side by side (steps 2.., means; ratios to the first run):")
        first = next(iter(summaries.values()))
        for name, s in summaries.items():
            print(f"  {name:<14} step wall {s['wall']:6.2f} s x{first['wall'] / s['wall']:.2f}  step CPU {s['cpu']:6.2f} s "
                  f"x{first['cpu'] / s['cpu']:.2f}  generation wall {s['gen']:6.2f} s x{first['gen'] / s['gen']:.2f}  "
                  f"generation CPU {s['gen_cpu']:6.2f} s x{first['gen_cpu'] / s['gen_cpu']:.2f}")


if __name__ == "__main__":
    main()
