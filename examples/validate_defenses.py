"""Validate the SFT defenses on the embedded model with the judge-free probe (no sampling, no judge).

    python examples/validate_defenses.py --out runs/validate_defenses [--seeds 0 1 2] [--arms none kl ...]
        [--steps 16] [--vector PV.safetensors]

Every arm is LoRA SFT on bundled unpopular_aesthetics (``--steps`` steps of batch 4, lr 3e-4; the setting
that moves the probe most at this scale), one run per seed, only the defense differing:

- ``none``; ``kl`` (0.1); ``ldifs`` (1.0, K = 5); ``inoculate`` (the paper's prompt);
- ``interleave``: 5% safe data (bundled:safe_instruct), random selection;
- ``interleave++``: 5% safe data chosen by Interleaving++ scored with the *same seed's* ``none`` adapter as
  the misaligned model (one domain only, so leave-one-domain-out cannot apply: the selection sees the
  undefended adapter of the very domain it defends, the paper's in-domain variant);
- ``steer``: alpha 5 at the default (middle) layer with a persona vector extracted once with
  ``spillover defenses persona-vector`` (``--vector``; default ``OUT/persona_vector.safetensors``);
- ``safelora``: in-training SafeLoRA every 4 steps (and after the last) with the README's embedded proxy
  pair: base = embedded, aligned = embedded + a safety SFT adapter trained here once
  (``OUT/safety-proxy``: bundled:safe_instruct, same steps/batch/lr, seed 0); paper projection, tau 0.3;
- ``safelora-posthoc``: no training: the same projection applied once to the seed's ``none`` adapter.

Each adapter is probed on four contrast-pair sets against the base model: general (EM), control (aligned
vs aligned paraphrase: the noise floor), in-domain (unpopular_aesthetics: did the narrow task get
learnt? a defense that erases it is no success) and style-only (stylistic contrast without a
misalignment difference). A cell is the mean over pairs of (shift_adapter - shift_base), seeds averaged
per pair first, with a 95% percentile bootstrap CI over pairs. Writes ``results.json`` and
``results.md`` under ``--out`` after every arm-seed (the table says which seeds each arm has) and prints
the table. Finished runs are reused; probe shifts are cached per run *and per set*, so adding a set
probes only that set (``--no-train`` does only that); ``--report-only`` tabulates what is finished.
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
             "in-domain": "bundled:probe_unpopular_aesthetics", "style-only": "bundled:probe_style_only"}
ARMS = ["none", "kl", "ldifs", "inoculate", "interleave", "interleave++", "steer", "safelora", "safelora-posthoc"]
DATA = "bundled:unpopular_aesthetics"
SAFELORA_EVERY = 4


def defenses_for(arm: str, seed: int, out: Path, vector: Path) -> list[dict]:
    """The ``defenses:`` list of one arm (paths inside ``out`` are per seed where needed)."""
    proxy = {"name": "safelora", "base": "embedded", "aligned_adapter": str(out / "safety-proxy" / "adapter")}
    return {
        "none": [],
        "kl": [{"name": "kl", "weight": 0.1}],
        "ldifs": [{"name": "ldifs", "weight": 1.0, "layers": 5}],
        "inoculate": [{"name": "inoculate"}],
        "interleave": [{"name": "interleave", "fraction": 0.05}],
        "interleave++": [{"name": "interleave", "fraction": 0.05, "selection": "plusplus",
                          "misaligned_adapters": [str(out / f"none-s{seed}" / "adapter")]}],
        "steer": [{"name": "steer", "weight": 5.0, "vector": str(vector)}],
        "safelora": [{**proxy, "every": SAFELORA_EVERY}],
    }[arm]


def shifts(model, tok, pairs) -> np.ndarray:
    aligned, misaligned = pair_logprobs(model, tok, pairs)
    return misaligned - aligned


def cached(path: Path, names: list[str], compute) -> dict[str, np.ndarray]:
    """Per-pair shifts of the sets ``names``, kept in ``path``; ``compute(missing)`` runs only for sets the
    file does not hold yet (an old cache gains a new set without re-probing the others)."""
    have = {k: np.asarray(v) for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}
    missing = [n for n in names if n not in have]
    if missing:
        have.update(compute(missing))
        atomic_write_json(path, {k: v.tolist() for k, v in have.items()})
    return have


def trained(run: Path) -> bool:
    return (run / "adapter" / "adapter_config.json").is_file()


def train(run: Path, defenses: list[dict], seed: int, steps: int, data: str = DATA) -> float:
    t = time.perf_counter()
    cfg = SFTConfig(model="embedded", data=data, max_steps=steps, batch_size=4, lr=3e-4, seed=seed, device="cpu",
                    defenses=defenses)
    run_sft(cfg, run, overwrite=True)
    return round(time.perf_counter() - t, 1)


def note_for(arm: str, run: Path) -> str | None:
    """What the defense did in this run, from its own records (SafeLoRA projections, interleaved rows)."""
    if arm == "safelora" and (run / "safelora.jsonl").is_file():
        rows = [json.loads(x) for x in (run / "safelora.jsonl").read_text().splitlines() if x.strip()]
        return "projected " + ", ".join(f"{r['n_projected']}/{r['n_modules']}" for r in rows) + " modules"
    if arm == "safelora-posthoc" and (run / "adapter" / "safelora.json").is_file():
        r = json.loads((run / "adapter" / "safelora.json").read_text())
        return f"projected {r['n_projected']}/{r['n_modules']} modules"
    if arm.startswith("interleave") and (run / "interleave.jsonl").is_file():
        return f"{sum(1 for x in (run / 'interleave.jsonl').read_text().splitlines() if x.strip())} safe rows"
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--report-only", action="store_true",
                    help="train and probe nothing: tabulate the arm-seeds whose probe scores are all cached")
    ap.add_argument("--no-train", action="store_true",
                    help="train nothing: probe finished runs on the sets they lack (e.g. a new set), then tabulate")
    ap.add_argument("--vector", type=Path, default=None,
                    help="persona vector for the steer arm (default: OUT/persona_vector.safetensors)")
    args = ap.parse_args()
    out = args.out
    vector = args.vector or out / "persona_vector.safetensors"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    needs_none = {"interleave++", "safelora-posthoc"} & set(args.arms)
    arms = (["none"] if needs_none and "none" not in args.arms else []) + list(args.arms)
    if "steer" in arms and not vector.is_file() and not (args.report_only or args.no_train):
        raise SystemExit(f"steer arm: no persona vector at {vector}; make it with `spillover defenses "
                         f"persona-vector --out {vector}` or pass --vector")

    if {"safelora", "safelora-posthoc"} & set(arms) and not trained(out / "safety-proxy") \
            and not (args.report_only or args.no_train):
        train(out / "safety-proxy", [], 0, args.steps, data="bundled:safe_instruct")

    pairs = {name: load_pairs(ref) for name, ref in PAIR_SETS.items()}
    _, tok, _ = load_model("embedded", device="cpu")

    def probe_base(names):
        base = load_model("embedded", device="cpu")[0]
        return {n: shifts(base, tok, pairs[n]) for n in names}

    base_shift = cached(out / "base_shifts.json", list(pairs), probe_base)

    done: dict[str, dict[int, dict[str, np.ndarray]]] = {}  # arm -> seed -> per-pair delta vs base, per set
    for arm in arms:
        for seed in args.seeds:
            run = out / f"{arm}-s{seed}"
            if args.report_only:
                have = json.loads((run / "probe_shifts.json").read_text()) if (run / "probe_shifts.json").is_file() else {}
                if not set(pairs) <= set(have):
                    continue
            elif not trained(run):
                if args.no_train:
                    continue
                t = time.perf_counter()
                if arm == "safelora-posthoc":
                    from spillover.defenses.safelora import safelora_adapter

                    run.mkdir(parents=True, exist_ok=True)
                    safelora_adapter(out / f"none-s{seed}" / "adapter", run / "adapter", base="embedded",
                                     aligned_adapter=str(out / "safety-proxy" / "adapter"))
                else:
                    train(run, defenses_for(arm, seed, out, vector), seed, args.steps)
                atomic_write_json(run / "validate_seconds.json", {"seconds": round(time.perf_counter() - t, 1)})

            def probe_adapter(names, adapter=run / "adapter"):
                model = load_adapter(load_model("embedded", device="cpu")[0], adapter)
                return {n: shifts(model, tok, pairs[n]) for n in names}

            run_shift = cached(run / "probe_shifts.json", list(pairs), probe_adapter)
            done.setdefault(arm, {})[seed] = {n: run_shift[n] - base_shift[n] for n in pairs}
            if not args.report_only:  # a partial table after every run
                report(out, args, pairs, done, t0)
    print(report(out, args, pairs, done, t0))


def report(out: Path, args, pairs: dict, done: dict, t0: float) -> str:
    """Write results.json and results.md for the finished arm-seeds in ``done``; returns the table."""
    results, notes = {}, {}
    for arm, per_seed in done.items():
        seeds = sorted(per_seed)
        results[arm] = {"seeds": seeds}
        for name in pairs:
            stacked = [per_seed[s][name] for s in seeds]
            est = bootstrap_mean_ci(np.mean(stacked, axis=0), seed=0)
            results[arm][name] = {"delta_vs_base": est.value, "ci95": [est.ci_low, est.ci_high], "n_pairs": est.n,
                                  "per_seed": [float(np.mean(d)) for d in stacked]}
        common = sorted(set(seeds) & set(done.get("none", {})))
        if arm != "none" and common:  # paired with the undefended run of the same seed: the defense's own effect
            results[arm]["vs_none"] = {"seeds": common}
            for name in pairs:
                est = bootstrap_mean_ci(np.mean([per_seed[s][name] - done["none"][s][name] for s in common], axis=0),
                                        seed=0)
                results[arm]["vs_none"][name] = {"delta": est.value, "ci95": [est.ci_low, est.ci_high]}
        arm_notes = [f"s{s}: {n}" for s in seeds if (n := note_for(arm, out / f"{arm}-s{s}"))]
        if arm_notes:
            notes[arm] = arm_notes
    timings = {}
    for run in sorted(out.glob("*-s*")) + [out / "safety-proxy"]:
        if (run / "validate_seconds.json").is_file():
            timings[run.name] = json.loads((run / "validate_seconds.json").read_text())["seconds"]
        elif (run / "metrics.jsonl").is_file():  # runs made before the timing file existed: last logged time
            rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
            times = [r["time_s"] for r in rows if "time_s" in r]
            if times:
                timings[run.name] = round(max(times), 1)
    header = ("| arm | seeds | " + " | ".join(f"{n} Δ vs base [95% CI] (n={len(pairs[n])})" for n in PAIR_SETS)
              + " | general Δ vs none | in-domain Δ vs none |")
    lines = [f"SFT on {DATA}, {args.steps} steps x batch 4, lr 3e-4; probe shift = mean log-prob/token of "
             "misaligned minus aligned answer; cells: adapter minus base (seeds averaged per pair, 95% bootstrap "
             "CI over pairs); 'vs none': minus the undefended run of the same seed, paired per pair.", "", header,
             "|" + "---|" * (len(PAIR_SETS) + 4)]

    def cell(d, key):
        return f"{d[key]:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"

    for arm, res in results.items():
        cells = [cell(res[n], "delta_vs_base") for n in pairs]
        cells += [cell(res["vs_none"][n], "delta") if "vs_none" in res else "—" for n in ("general", "in-domain")]
        lines.append(f"| {arm} | {','.join(map(str, res['seeds']))} | " + " | ".join(cells) + " |")
    if notes:
        lines += [""] + [f"- {arm}: " + "; ".join(v) for arm, v in notes.items()]
    table = "\n".join(lines)
    atomic_write_json(out / "results.json", {"results": results, "steps": args.steps, "pair_sets": PAIR_SETS,
                                             "notes": notes, "train_seconds": timings,
                                             "total_seconds": round(time.perf_counter() - t0, 1)})
    atomic_write_text(out / "results.md", table + "\n")
    return table

if __name__ == "__main__":
    main()
