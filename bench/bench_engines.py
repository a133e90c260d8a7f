"""Sampling engines side by side: HF ``generate`` fp32 vs the vLLM engine process (fp32, bf16), base model
and a merged adapter, with engine start reported separately.

    python bench/bench_engines.py [--prompts 64] [--max-new-tokens 48] [--batches 16 32 64] [--adapter-batch 32]
        [--dtypes float32 bfloat16] [--compiled]

The prompts are bench_hf_generation's mixed-length set (bundled prompts, every third one long). Per batch
size, on the same prompts and settings (temperature 1, seed 0): ``hf fp32`` is plain ``model.generate``
over fixed batches in input order (what spillover did before length bucketing); ``spillover hf fp32`` is
:class:`HFSampler` (length buckets); ``vllm fp32``/``vllm bf16`` send the same batches to one engine
process per dtype (started once; its start time, model load included, is printed on its own line).
Ratios are of new tokens per second against ``hf fp32`` at that batch size. The adapter rows compare HF +
PEFT (unmerged, in this process) with vLLM on the merged folder (merge time included in its start). Each
vLLM engine's per-token log-probs are checked against HF fp32 (+ PEFT) on 8 prompts
(:func:`engine_logprob_check`). Run it on an otherwise idle machine (``HEAVY_EXCLUSIVE=1 /tmp/heavy.sh``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from bench_hf_generation import mixed_prompts, plain_generate  # noqa: E402

from spillover.evaluate.engine import VLLMSampler, engine_logprob_check  # noqa: E402
from spillover.evaluate.sampling import HFSampler, SampleRow, SamplingParams  # noqa: E402
from spillover.models import LoraSpec, apply_lora, load_adapter, load_model, save_adapter  # noqa: E402


def random_adapter(out: Path, seed: int = 0) -> Path:
    """A rank-8 LoRA on the embedded model with random non-zero B (so it moves the distribution)."""
    model, _, _ = load_model("embedded", device="cpu", dtype="float32")
    peft = apply_lora(model, LoraSpec(r=8, alpha=16))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return save_adapter(peft, out, base_model="embedded")


def engine_rows(sampler: VLLMSampler, convs, batch: int, params: SamplingParams) -> int:
    new = 0
    for i in range(0, len(convs), batch):
        rows = [SampleRow(c, 0) for c in convs[i:i + batch]]
        new += sum(c.n_tokens for c in sampler.generate_rows(rows, params))
    return new


def timed(fn):
    t = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t


def main():
    from spillover.cli._common import quiet_libraries

    quiet_libraries()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--adapter-batch", type=int, default=32, help="batch size of the adapter rows (0: skip them)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16"], default=["float32", "bfloat16"],
                    help="engine dtypes to run (bfloat16 is only worth timing on a CPU with bf16 kernels: "
                    "AVX512-BF16 or AMX)")
    ap.add_argument("--compiled", action="store_true", help="also time each dtype's engine with compiled graphs "
                    "(torch.compile; CUDA graphs on GPUs): its start is printed on its own line")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    convs = mixed_prompts(args.prompts)
    params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    fp32, tok, ref = load_model("embedded", device="cpu", dtype="float32")
    eos = HFSampler(fp32, tok).eos_ids
    print(f"model {ref.display}, {len(convs)} prompts, max_new_tokens {args.max_new_tokens}, torch threads "
          f"{torch.get_num_threads()}, OMP_NUM_THREADS {os.environ.get('OMP_NUM_THREADS')}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    HFSampler(fp32, tok, batch_size=2).generate(convs[:2], SamplingParams(max_new_tokens=4))  # warm-up

    results: dict[tuple[str, int], float] = {}
    for batch in args.batches:
        (new, _, _), s = timed(lambda: plain_generate(fp32, tok, convs, batch, params, eos))
        results[("hf fp32", batch)] = new / s
        sampler = HFSampler(fp32, tok, batch_size=batch)
        comps, s = timed(lambda: [cs[0] for cs in sampler.generate(convs, params)])
        results[("spillover hf fp32", batch)] = sum(c.n_tokens for c in comps) / s

    checks = {}
    names = []
    for dtype in args.dtypes:
        for compiled in (False, True) if args.compiled else (False,):
            name = f"vllm {'fp32' if dtype == 'float32' else 'bf16'}{' compiled' if compiled else ''}"
            names.append(name)
            engine, start = timed(lambda: VLLMSampler("embedded", dtype=dtype, batch_size=max(args.batches),
                                                      compiled=compiled))
            with engine:
                print(f"{name} engine start (process, import, model load{', compile' if compiled else ''}): {start:.1f} s "
                      f"(engine reports {engine.info.get('start_seconds')} s inside the worker)")
                engine_rows(engine, convs[:4], 4, SamplingParams(max_new_tokens=4))  # warm-up
                for batch in args.batches:
                    new, s = timed(lambda: engine_rows(engine, convs, batch, params))
                    results[(name, batch)] = new / s
                checks[f"{name} vs hf fp32"] = engine_logprob_check(engine, fp32, convs[:8], params)

    for batch in args.batches:
        base = results[("hf fp32", batch)]
        print(f"\nbatch {batch}")
        for name in ("hf fp32", "spillover hf fp32", *names):
            rate = results[(name, batch)]
            print(f"  {name:20} {rate:7.1f} new tok/s  {rate / base:5.2f}x")

    if args.adapter_batch:
        b = args.adapter_batch
        sub = convs[:max(b, 32)]
        with tempfile.TemporaryDirectory() as tmp:
            adapter = random_adapter(Path(tmp) / "adapter")
            peft = load_adapter(load_model("embedded", device="cpu", dtype="float32")[0], adapter)
            peft.eval()
            (new, _, _), s = timed(lambda: plain_generate(peft, tok, sub, b, params, eos))
            hf_rate = new / s
            engine, start = timed(lambda: VLLMSampler("embedded", str(adapter), dtype="float32", batch_size=b))
            with engine:
                new, s = timed(lambda: engine_rows(engine, sub, b, params))
                checks["vllm fp32 merged adapter vs hf fp32 + peft"] = engine_logprob_check(engine, peft, convs[:8], params)
            print(f"\nadapter, batch {b}, {len(sub)} prompts\n  hf fp32 + peft       {hf_rate:7.1f} new tok/s  1.00x\n"
                  f"  vllm fp32 merged     {new / s:7.1f} new tok/s  {new / s / hf_rate:5.2f}x   "
                  f"(merge + engine start {start:.1f} s)")

    print("\nper-token log-probs of the engine's own answers vs HF (teacher-forced):")
    for name, c in checks.items():
        print(f"  {name:44} {c['n_tokens']:5d} tokens  mean |diff| {c['mean_abs_diff']:.2e}  max {c['max_abs_diff']:.2e}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
