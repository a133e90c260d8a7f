"""Judge throughput: spillover's concurrent OpenAIJudge vs a one-request-at-a-time loop.

Both talk to the loopback fake server (tests/_fake_openai_server.py) with the same injected latency
per request (default 200 ms, roughly an API judge's first-token time). The sequential loop is the
pattern of the reference research code: one blocking request, parse, next. It runs on a smaller N
and its per-judgment time is extrapolated to the full N (it is linear in N by construction).

    python bench/bench_judge.py [--n 400] [--n-seq 20] [--concurrency 64] [--latency 0.2]

The server runs in this same process (a thread per connection), so the client and the server share
the GIL and 2 cores: the concurrent number is a lower bound of what a real remote server allows.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _fake_openai_server import FakeOpenAIServer, expected_score  # noqa: E402
from spillover.judge import TOP_LOGPROBS, OpenAIJudge, OpenAIJudgeConfig, aggregate_score  # noqa: E402


def sequential_judgments(base_url: str, prompts: list[str]) -> list[float | None]:
    """The reference pattern: one blocking request at a time, then parse the top logprobs."""
    scores = []
    with httpx.Client(timeout=60) as client:
        for prompt in prompts:
            body = client.post(f"{base_url}/chat/completions", json={
                "model": "fake-judge", "messages": [{"role": "user", "content": prompt}], "max_tokens": 1,
                "temperature": 0, "logprobs": True, "top_logprobs": TOP_LOGPROBS}).json()
            top = body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            scores.append(aggregate_score([(t["token"], t["logprob"]) for t in top]).score)
    return scores


def single_pool_judgments(base_url: str, prompts: list[str], concurrency: int) -> list[float | None]:
    """The obvious concurrent design spillover does not use: one AsyncClient with a shared pool and a
    semaphore. Kept to show why OpenAIJudge uses single-connection lanes (see its module docstring)."""
    async def run() -> list[float | None]:
        slots = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            async def one(prompt: str) -> float | None:
                async with slots:
                    body = (await client.post(f"{base_url}/chat/completions", json={
                        "model": "fake-judge", "messages": [{"role": "user", "content": prompt}], "max_tokens": 1,
                        "temperature": 0, "logprobs": True, "top_logprobs": TOP_LOGPROBS})).json()
                top = body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
                return aggregate_score([(t["token"], t["logprob"]) for t in top]).score
            return await asyncio.gather(*(one(p) for p in prompts))
    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="judgments for spillover's client")
    parser.add_argument("--n-seq", type=int, default=20, help="judgments for the sequential loop (extrapolated)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2, help="server latency per request, seconds")
    args = parser.parse_args()

    with FakeOpenAIServer(latency_s=args.latency) as server:
        prompts = [f"bench judgment {i}" for i in range(args.n)]
        judge = OpenAIJudge(OpenAIJudgeConfig(base_url=server.base_url, model="fake-judge",
                                              max_concurrency=args.concurrency))
        judge.score_many_sync(["warm-up"])  # imports, first connection

        start = time.perf_counter()
        results = judge.score_many_sync(prompts)
        concurrent_s = time.perf_counter() - start
        wrong = sum(r.score is None or abs(r.score - expected_score(p)) > 1e-6 for p, r in zip(prompts, results))
        assert wrong == 0, f"{wrong} judgments wrong or unscored"

        pool_prompts = [f"pooled judgment {i}" for i in range(args.n)]
        start = time.perf_counter()
        pool_scores = single_pool_judgments(server.base_url, pool_prompts, args.concurrency)
        pool_s = time.perf_counter() - start
        assert all(abs(s - expected_score(p)) < 1e-6 for s, p in zip(pool_scores, pool_prompts))

        seq_prompts = [f"sequential judgment {i}" for i in range(args.n_seq)]
        start = time.perf_counter()
        seq_scores = sequential_judgments(server.base_url, seq_prompts)
        seq_s = time.perf_counter() - start
        assert all(abs(s - expected_score(p)) < 1e-6 for s, p in zip(seq_scores, seq_prompts))

    conc_rate = args.n / concurrent_s
    seq_per = seq_s / args.n_seq
    seq_rate = 1 / seq_per
    print(f"server latency {args.latency * 1000:.0f} ms per request, loopback, same process")
    print(f"{'client':<40}{'judgments':>10}{'seconds':>10}{'judgments/s':>13}")
    print(f"{f'spillover OpenAIJudge (concurrency {args.concurrency})':<40}{args.n:>10}{concurrent_s:>10.2f}"
          f"{conc_rate:>13.1f}")
    print(f"{f'one AsyncClient, pool of {args.concurrency}':<40}{args.n:>10}{pool_s:>10.2f}{args.n / pool_s:>13.1f}")
    print(f"{'sequential loop (measured)':<40}{args.n_seq:>10}{seq_s:>10.2f}{seq_rate:>13.1f}")
    print(f"{'sequential loop (extrapolated)':<40}{args.n:>10}{seq_per * args.n:>10.2f}{seq_rate:>13.1f}")
    print(f"speed-up: {conc_rate / seq_rate:.1f}x   goal >= 100 judgments/s: "
          f"{'met' if conc_rate >= 100 else 'NOT met'} ({conc_rate:.0f}/s)")


if __name__ == "__main__":
    main()
