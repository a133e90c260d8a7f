"""Experiment sampling on the vLLM engine three ways, side by side on the same units: an engine per unit
(each unit run on its own, as before engines were pooled), one engine per merged model (the run's
EnginePool, no prefetch), and the pool starting the next unit's engine while this unit is judged and
probed (``prefetch_engine: true``).

    python bench/bench_engine_pool.py [--seeds 0 1] [--samples 4] [--max-new-tokens 48] [--judge local] [--probe P]

Arms: ``base`` and ``tuned`` (a random LoRA on the embedded model, ``init_from``: nothing trains), the
bundled general questions (first paraphrase, ``--samples`` answers each), the judge given and the bundled
probe; units run base/0, base/1, tuned/0, tuned/1. Each way runs the experiment in its own folder (the
base model's probe is computed before the clock starts, once per folder, and not timed). Printed per way:
wall time of the units, its ratio to ``per unit``, engine starts, each unit's wait for its engine (from
the sample markers), and whether its answers equal the ``per unit`` ones (they must). Needs the engine
venv (``spillover engines install vllm``). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engines import random_adapter  # noqa: E402  (the same random LoRA as the engine benchmark)

from spillover.experiment.executors import LocalExecutor
from spillover.experiment.results import load_experiment, read_marker, unit_dir
from spillover.experiment.runner import Unit, prepare
from spillover.experiment.spec import ExperimentConfig
from spillover.experiment.stages import run_base_probe, run_unit


def config(args, adapter: Path, prefetch: bool | None) -> ExperimentConfig:
    sampling = {"engine": "vllm", "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    if prefetch is not None:
        sampling["prefetch_engine"] = prefetch
    return ExperimentConfig.model_validate({
        "name": "bench-engine-pool", "model": "embedded", "device": "cpu", "seeds": args.seeds,
        "arms": [{"name": "base"}, {"name": "tuned", "init_from": str(adapter)}],
        "evaluation": {"general": {"file": "bundled:general_questions", "max_paraphrases": 1,
                                   "samples_per_paraphrase": args.samples},
                       "judges": [args.judge], "probe": [] if args.probe == "none" else [args.probe],
                       "sampling": sampling}})


def run_way(name: str, cfg: ExperimentConfig, out: Path) -> dict:
    prepare(cfg, out)
    run_base_probe(out)  # once per folder, before the clock
    units = [Unit(a.name, s) for a in cfg.all_arms() for s in cfg.seeds]
    t0 = time.perf_counter()
    if name == "per unit":
        for u in units:  # no session: each unit starts and stops its own engine
            run_unit(out, u.arm, u.seed)
    else:
        failures = LocalExecutor().run_units(out, units)
        if failures:
            raise SystemExit(f"{name}: {failures}")
    seconds = time.perf_counter() - t0
    starts = {f"{u.arm}/{u.seed}": read_marker(unit_dir(out, u.arm, u.seed), "sample").model_extra.get("engine_start")
              for u in units}
    res = load_experiment(out)
    answers = {f"{a}/{s}": [(r.sample_id, r.answer) for r in u.samples] for (a, s), u in res.units.items()}
    return {"seconds": seconds, "starts": starts, "answers": answers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--samples", type=int, default=4, help="answers per general question (24 questions)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--judge", default="local", help="judge spec (local: the activation judge, CPU work to overlap)")
    ap.add_argument("--probe", default="bundled:probe_general", help="probe pairs scored per unit, or none")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-engine-pool-"))
    adapter = random_adapter(root / "adapter")
    ways = {"per unit": None, "pool": False, "pool + prefetch": True}
    results = {}
    for name, prefetch in ways.items():
        results[name] = run_way(name, config(args, adapter, prefetch), root / name.replace(" ", "_").replace("+", "p"))
        print(f"{name}: {results[name]['seconds']:.1f} s", file=sys.stderr, flush=True)
    ref = results["per unit"]
    print(f"\n{len(args.seeds) * 2} units (base, tuned x seeds {args.seeds}), {24 * args.samples} answers each, "
          f"{args.max_new_tokens} new tokens, judge {args.judge}")
    print(f"{'way':<17} {'seconds':>8} {'vs per unit':>11} {'starts':>6}  waits (s) per unit        same answers")
    for name, r in results.items():
        starts = sum(1 for s in r["starts"].values() if s and s["how"] != "reused")
        waits = " ".join(f"{u}:{s['how'][0]}{s['waited_seconds']:.0f}" if s and "waited_seconds" in s else f"{u}:-"
                         for u, s in r["starts"].items())
        print(f"{name:<17} {r['seconds']:8.1f} {ref['seconds'] / r['seconds']:10.2f}x {starts:6d}  {waits:<26} "
              f"{r['answers'] == ref['answers']}")
    print(json.dumps({k: {"seconds": round(v["seconds"], 1), "starts": v["starts"]} for k, v in results.items()}))


if __name__ == "__main__":
    main()
