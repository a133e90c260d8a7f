"""Sampling and SFT throughput on the embedded model, measured side by side in one run.

    python bench/bench_sampling.py [--prompts 32] [--max-new-tokens 64]

Prints new tokens/s for (a) a plain ``model.generate`` loop at batch 16 in input order,
(b) spillover's HFSampler at batch 16, (c) HFSampler at its default batch (32), and their ratios
to (a); then SFT tokens/s (LoRA, default settings) over a few steps.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from spillover.data import bundled_path, load_chat_jsonl
from spillover.evaluate.sampling import HFSampler, SamplingParams
from spillover.models import load_model


def plain_generate(model, tok, convs, batch, params):
    tok.padding_side = "left"
    new = 0
    torch.manual_seed(params.seed)
    for i in range(0, len(convs), batch):
        texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs[i:i + batch]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0,
                                 max_new_tokens=params.max_new_tokens, pad_token_id=tok.pad_token_id)
        gen = out[:, enc.input_ids.shape[1]:]
        for row in gen.tolist():  # count tokens up to and including the first end-of-turn
            new += next((k + 1 for k, t in enumerate(row) if t == tok.eos_token_id), len(row))
    return new


def timed(fn):
    t = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t


def main():
    from spillover.cli._common import quiet_libraries

    quiet_libraries()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--sft-steps", type=int, default=3)
    args = ap.parse_args()
    model, tok, ref = load_model("embedded", device="cpu")
    convs = [ex.messages[:-1] for ex in load_chat_jsonl(bundled_path("safe_instruct"))][: args.prompts]
    params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    print(f"model {ref.display}, {len(convs)} prompts, max_new_tokens {args.max_new_tokens}, torch threads {torch.get_num_threads()}")

    def spill(batch):
        sampler = HFSampler(model, tok, batch_size=batch)
        return lambda: sum(c.n_tokens for cs in sampler.generate(convs, params) for c in cs)

    plain_generate(model, tok, convs[:2], 2, SamplingParams(max_new_tokens=4))  # warm-up
    rows = [("plain generate, batch 16", lambda: plain_generate(model, tok, convs, 16, params)),
            ("spillover HFSampler, batch 16", spill(16)),
            ("spillover HFSampler, batch 32", spill(32))]
    base = None
    for name, fn in rows:
        n, s = timed(fn)
        rate = n / s
        base = base or rate
        print(f"{name:32} {n:6d} new tokens in {s:6.1f} s = {rate:6.1f} tok/s  ({rate / base:.2f}x plain)")

    from spillover.train import SFTConfig, run_sft

    with tempfile.TemporaryDirectory() as tmp:
        r = run_sft(SFTConfig(data="bundled:insecure_code", max_steps=args.sft_steps, batch_size=4, device="cpu"), tmp)
        import json
        import pathlib

        m = json.loads((pathlib.Path(tmp) / "manifest.json").read_text())
        print(f"SFT (LoRA r=16, batch 4): {m['seconds_per_step']:.2f} s/step, "
              f"{m['tokens_seen'] / m['train_seconds']:.0f} tokens/s over {r.steps} steps")


if __name__ == "__main__":
    main()
