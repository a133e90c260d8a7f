"""vLLM engine worker, run by the engine venv's python (not imported by spillover).

    python _vllm_worker.py --model DIR --dtype float32 --owner PID [--max-model-len N] [--max-num-seqs N]

Loads ``vllm.LLM`` once and answers JSON-line requests (see ``_worker_io``):

``{"op": "generate", "prompts": [[token ids]...], "params": [{"temperature", "top_p", "max_tokens", "seed",
"stop_token_ids"}...]}`` -> ``{"outputs": [{"token_ids", "logprobs", "finish_reason"}...], "seconds"}``

``{"op": "reset"}`` -> ``{"reset": true}``: empties the prefix cache (an engine reused by another stage).

Prompts arrive as token ids (spillover applies the chat template with its own tokenizer, exactly as for
HF sampling) and answers leave as token ids with the log-prob of each sampled token under the raw model
distribution (vLLM's default ``logprobs_mode="raw_logprobs"``: before temperature and top-p), which is
what spillover's teacher-forced HF log-probs measure too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _worker_io import open_channel, serve  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--owner", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--max-num-seqs", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="CUDA graphs / torch.compile (slower start)")
    args = ap.parse_args()
    out = open_channel(args.owner)

    start = time.time()
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    extra = {k: v for k, v in (("max_model_len", args.max_model_len), ("max_num_seqs", args.max_num_seqs))
             if v is not None}
    llm = LLM(model=args.model, dtype=args.dtype, seed=args.seed, enforce_eager=not args.compile,
              skip_tokenizer_init=True, **extra)
    config = llm.llm_engine.model_config
    try:
        from vllm.platforms import current_platform

        device = str(current_platform.device_type)
    except Exception:  # noqa: BLE001 - only informative
        device = "unknown"

    def generate(request: dict) -> dict:
        t0 = time.time()
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in request["prompts"]]
        params = [SamplingParams(temperature=p["temperature"], top_p=p["top_p"], top_k=0, max_tokens=p["max_tokens"],
                                 seed=p["seed"], stop_token_ids=p["stop_token_ids"], logprobs=0, detokenize=False)
                  for p in request["params"]]
        results = llm.generate(prompts, params, use_tqdm=False)
        outputs = []
        for r in results:
            c = r.outputs[0]
            ids = list(c.token_ids)
            lps = [step[t].logprob for step, t in zip(c.logprobs or [], ids)] if c.logprobs is not None else []
            outputs.append({"token_ids": ids, "logprobs": lps, "finish_reason": c.finish_reason})
        return {"outputs": outputs, "seconds": time.time() - t0}

    def reset(request: dict) -> dict:
        """Forget cached prompt prefixes: an engine handed to another stage answers as a fresh one would
        (prefix caching is on in vLLM, also on CPU, and a cache hit computes a prompt's KV in another
        batch shape than a miss)."""
        return {"reset": bool(llm.reset_prefix_cache())}

    serve(out, {"generate": generate, "reset": reset},
          {"engine": "vllm", "version": vllm.__version__, "dtype": str(config.dtype).removeprefix("torch."),
           "device": device, "max_model_len": config.max_model_len, "enforce_eager": not args.compile,
           "start_seconds": round(time.time() - start, 2), "pid": os.getpid()})


if __name__ == "__main__":
    main()
