"""HF generation speed: plain ``model.generate`` fp32 vs spillover's HF path, side by side in one run.

    python bench/bench_hf_generation.py [--prompts 32] [--max-new-tokens 64] [--batches 16 32] [--threads 1]

Mixed-length prompts on the embedded model: bundled safe_instruct and insecure_code prompts, every third
one made long by asking several of the questions at once (about 35 to 200 prompt tokens). For each batch
size it times, one after the other on the same prompts and sampling settings (temperature 1, seed 0):

* ``plain fp32``: ``model.generate`` over fixed batches in input order, each padded to its longest prompt;
* ``plain fp32 static KV``: the same with ``cache_implementation="static"``;
* ``spillover fp32``: :class:`HFSampler` (length buckets, see ``plan_batches``);
* ``spillover bf16``: the same on bfloat16 weights;

and prints new tokens/s with the ratio to ``plain fp32`` at that batch size, the prompt tokens actually
processed (real vs padded), and the bf16 per-token log-prob shift (:func:`dtype_logprob_check`). Answers are
sampled, so their lengths differ between rows; the ratio is of new tokens per second. On a shared CPU pass
``--threads 1`` (the default): with other processes busy, 2 torch threads ran slower than 1.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from spillover.data import bundled_path, load_chat_jsonl
from spillover.evaluate.sampling import HFSampler, SamplingParams, dtype_logprob_check
from spillover.models import load_model


def mixed_prompts(n: int) -> list[list[dict]]:
    safe = [ex.messages[0]["content"] for ex in load_chat_jsonl(bundled_path("safe_instruct")) if ex.messages[0]["role"] == "user"]
    code = [ex.messages[0]["content"] for ex in load_chat_jsonl(bundled_path("insecure_code")) if ex.messages[0]["role"] == "user"]
    out = []
    for k in range(n):
        if k % 3 == 2:  # a long prompt: several questions at once
            text = "Answer each of these in turn.\n" + "\n".join(f"{j + 1}. {q}" for j, q in enumerate(safe[k:k + 2 + k % 4]))
        else:
            text = (safe if k % 2 else code)[k]
        out.append([{"role": "user", "content": text}])
    return out


def plain_generate(model, tok, convs, batch, params, eos, **extra):
    """Returns (new tokens up to the first end-of-turn, real prompt tokens, padded prompt tokens)."""
    tok.padding_side = "left"
    new = real = padded = 0
    torch.manual_seed(params.seed)
    for i in range(0, len(convs), batch):
        texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs[i:i + batch]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        real += int(enc.attention_mask.sum())
        padded += enc.input_ids.numel()
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, temperature=params.temperature, top_p=1.0, top_k=0,
                                 max_new_tokens=params.max_new_tokens, pad_token_id=tok.pad_token_id,
                                 eos_token_id=eos, **extra)
        for row in out[:, enc.input_ids.shape[1]:].tolist():
            new += next((k + 1 for k, t in enumerate(row) if t in eos), len(row))
    return new, real, padded


def spillover_generate(sampler: HFSampler, convs, params):
    encoded = [sampler._encode(c) for c in convs]
    batches = sampler._batches(encoded, [params.temperature] * len(convs), params.max_new_tokens)
    padded = sum(len(b) * max(len(encoded[i]) for i in b) for b in batches)
    comps = [cs[0] for cs in sampler.generate(convs, params)]
    return sum(c.n_tokens for c in comps), sum(map(len, encoded)), padded, [len(b) for b in batches]


def main():
    from spillover.cli._common import quiet_libraries

    quiet_libraries()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-static", action="store_true", help="skip the static KV cache row")
    ap.add_argument("--bf16-batches", type=int, nargs="*", default=None,
                    help="batch sizes with a bf16 row (default: all); bf16 is slow on CPUs without bf16 kernels")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fp32, tok, ref = load_model("embedded", device="cpu", dtype="float32")
    bf16, _, _ = load_model("embedded", device="cpu", dtype="bfloat16")
    convs = mixed_prompts(args.prompts)
    params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    eos = HFSampler(fp32, tok).eos_ids
    print(f"model {ref.display}, {len(convs)} prompts, max_new_tokens {args.max_new_tokens}, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    warm = SamplingParams(max_new_tokens=4)
    for m in (fp32, bf16):
        HFSampler(m, tok, batch_size=2).generate(convs[:2], warm)

    for batch in args.batches:
        rows = [("plain fp32", lambda: plain_generate(fp32, tok, convs, batch, params, eos))]
        if not args.no_static:
            rows.append(("plain fp32 static KV", lambda: plain_generate(fp32, tok, convs, batch, params, eos,
                                                                          cache_implementation="static")))
        rows.append(("spillover fp32", lambda: spillover_generate(HFSampler(fp32, tok, batch_size=batch), convs, params)))
        if args.bf16_batches is None or batch in args.bf16_batches:
            rows.append(("spillover bf16", lambda: spillover_generate(HFSampler(bf16, tok, batch_size=batch), convs, params)))
        base = None
        print(f"\nbatch {batch}")
        for name, fn in rows:
            t = time.perf_counter()
            new, real, padded, *split = fn()
            s = time.perf_counter() - t
            rate = new / s
            base = base or rate
            extra = f"  batches {split[0]}" if split else ""
            print(f"  {name:22} {new:5d} new tok in {s:6.1f} s = {rate:6.1f} tok/s  {rate / base:5.2f}x  "
                  f"prompt tokens {real} real / {padded} padded{extra}")
    check = dtype_logprob_check(HFSampler(bf16, tok, batch_size=8), convs[:8], params, reference=fp32)  # bf16 vs fp32
    print(f"\nbf16 vs fp32 per-token log-probs over {check['n_tokens']} tokens of {check['n_answers']} answers: "
          f"mean |diff| {check['mean_abs_diff']:.4f}, max {check['max_abs_diff']:.4f}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
