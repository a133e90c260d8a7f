"""A stand-in for the vLLM worker in tests: the same JSON-lines protocol (spillover/engines/_worker_io.py,
imported by path as the real worker does) and the same ``generate``/``reset`` ops, without vLLM.

Answers are token ids drawn from each row's own seed (greedy rows: from the prompt), mixed with a hash
of the model's weights file, so a merged adapter answers differently from its base, and the same row
gets the same answer from any engine on the same model. Every start, reset and request is appended to
``--events`` (one line each) for the tests to count.
"""

import argparse
import hashlib
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "spillover" / "engines"))

from _worker_io import open_channel, serve  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--owner", type=int, default=0)
    ap.add_argument("--max-num-seqs", type=int, default=None)
    ap.add_argument("--events", required=True)
    ap.add_argument("--ready-delay", type=float, default=0.0)
    ap.add_argument("--generate-delay", type=float, default=0.0)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    out = open_channel(args.owner)
    weights = sorted(Path(args.model).glob("*.safetensors"))
    tag = hashlib.sha256(b"".join(w.read_bytes() for w in weights)).hexdigest()[:12]

    def event(text: str) -> None:
        with open(args.events, "a") as f:
            f.write(f"{time.time():.3f} {os.getpid()} {text}\n")

    event(f"launch {args.model} {tag}")
    time.sleep(args.ready_delay)  # loading the model

    def generate(request: dict) -> dict:
        event(f"generate {len(request['prompts'])}")
        time.sleep(args.generate_delay)
        outputs = []
        for ids, p in zip(request["prompts"], request["params"]):
            key = f"{tag}:{p['seed']}" if p["temperature"] > 0 else f"{tag}:{ids}"
            rng = random.Random(key)
            tokens = [rng.randrange(300, 5000) for _ in range(p["max_tokens"])]
            outputs.append({"token_ids": tokens, "logprobs": [-1.0] * len(tokens), "finish_reason": "length"})
        return {"outputs": outputs, "seconds": 0.0}

    def reset(request: dict) -> dict:
        event("reset")
        return {"reset": True}

    event("ready")
    serve(out, {"generate": generate, "reset": reset},
          {"engine": "vllm", "version": "fake", "dtype": args.dtype, "device": "cpu", "enforce_eager": not args.compile,
           "pid": os.getpid()})


if __name__ == "__main__":
    main()
