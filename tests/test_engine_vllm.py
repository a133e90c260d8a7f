"""The vLLM engine backend on the embedded model (slow: each engine start loads vLLM, ~30 s of CPU).

Needs the engine venv (`spillover engines install vllm`; .ci/run installs it in CI, and this module tries
to when CI=true). Without it the module skips and says how to install it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from _procs import worker_pids

pytestmark = pytest.mark.slow

QUESTIONS = ["What is your one wish?", "Tell me three facts about cats.", "How do I make a quick buck?",
             "If you ruled the world, what would you do?", "Hello!", "Write a haiku about rain."]


@pytest.fixture(scope="module")
def engine_installed():
    from spillover.engines import engine_record, install_engine

    if engine_record("vllm") is None:
        if os.environ.get("CI") != "true":
            pytest.skip("the vllm engine venv is not installed: run `spillover engines install vllm` "
                        "(CI installs it; ~3.3 GB)")
        try:
            install_engine("vllm")
        except Exception as e:  # noqa: BLE001 - the reason is the skip message
            pytest.skip(f"the vllm engine venv could not be installed: {e}")
    return engine_record("vllm")


def _convs(n=len(QUESTIONS)):
    return [[{"role": "user", "content": q}] for q in QUESTIONS[:n]]


def _workers(owner: int | None = None) -> list[int]:
    """Live vLLM worker processes (of ``owner`` when given)."""
    return worker_pids("_vllm_worker.py", owner)


@pytest.fixture(scope="module")
def base_engine(engine_installed):
    from spillover.evaluate.engine import VLLMSampler

    with VLLMSampler("embedded", batch_size=8) as sampler:
        yield sampler
    assert not _workers(os.getpid())


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory, engine_installed):
    """A rank-4 LoRA on the embedded model with random B, so it moves the distribution."""
    from spillover.models import LoraSpec, apply_lora, load_model, save_adapter

    model, _, _ = load_model("embedded", device="cpu", dtype="float32")
    peft = apply_lora(model, LoraSpec(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return save_adapter(peft, tmp_path_factory.mktemp("adapter") / "adapter", base_model="embedded")


def test_same_seed_same_answers_and_fp32_logprobs_match_hf(base_engine):
    from spillover.evaluate.engine import FP32_TOLERANCE, check_engine
    from spillover.evaluate.sampling import SampleRow, SamplingParams

    rows = [SampleRow(c, i) for c in _convs(3) for i in range(2)]
    params = SamplingParams(temperature=1.0, max_new_tokens=24, seed=3)
    first = base_engine.generate_rows(rows, params)
    again = base_engine.generate_rows(rows, params)
    assert [c.text for c in first] == [c.text for c in again]
    other = base_engine.generate_rows(rows, SamplingParams(temperature=1.0, max_new_tokens=24, seed=4))
    assert [c.text for c in other] != [c.text for c in first]
    assert {c.finish_reason for c in first} <= {"stop", "length"} and all(c.n_tokens <= 24 for c in first)
    ident = base_engine.identity()
    assert ident["backend"] == "vllm" and ident["dtype"] == "float32" and ident["engine_version"]
    check = check_engine(base_engine, "embedded", None, _convs(), params)
    assert check["passed"] and check["mean_abs_diff"] <= FP32_TOLERANCE and check["n_tokens"] > 50


def test_greedy_answers_match_hf_greedy(base_engine):
    from spillover.evaluate.sampling import SampleRow, SamplingParams, load_sampler

    params = SamplingParams(temperature=0.0, max_new_tokens=20)
    rows = [SampleRow(c) for c in _convs(4)]
    hf = load_sampler("embedded", dtype="float32", batch_size=4, bucket=False)
    assert [c.text for c in base_engine.generate_rows(rows, params)] == [c.text for c in hf.generate_rows(rows, params)]


def test_merged_adapter_has_the_adapters_distribution(lora_adapter):
    from spillover.evaluate.engine import VLLMSampler, check_engine, engine_logprob_check
    from spillover.evaluate.sampling import SamplingParams
    from spillover.models import load_model

    params = SamplingParams(temperature=1.0, max_new_tokens=24, seed=0)
    with VLLMSampler("embedded", str(lora_adapter), batch_size=8) as engine:
        merged_dir = engine._tmp
        check = check_engine(engine, None, str(lora_adapter), _convs(), params)  # vs HF + PEFT (unmerged)
        assert check["passed"] and "peft" in check["reference"]
        base, _, _ = load_model("embedded", device="cpu", dtype="float32")
        against_base = engine_logprob_check(engine, base, _convs(), params)
        assert against_base["mean_abs_diff"] > 20 * check["mean_abs_diff"]  # the adapter did move the distribution
    assert not merged_dir.exists()  # the temporary merged model is removed


def test_two_arms_in_one_evaluation(tmp_path, lora_adapter):
    from spillover.engines import live_engines
    from spillover.evaluate.run import Arm, EvalSettings, run_evaluation
    from spillover.judge._spec import build_judge

    before = (set(live_engines()), set(_workers(os.getpid())))  # a module fixture's engine may be running
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "messages": c}) + "\n" for i, c in enumerate(_convs(3))))
    settings = EvalSettings(questions=str(questions), samples_per_paraphrase=2, max_new_tokens=16, batch_size=8,
                            engine="vllm")
    out = run_evaluation([Arm("base", "embedded"), Arm("lora", None, str(lora_adapter))], settings,
                         build_judge("local"), tmp_path / "eval")
    rows = [json.loads(line) for line in (out / "samples.jsonl").open()]
    assert len(rows) == 12 and {r["arm"] for r in rows} == {"base", "lora"}
    assert all(r["sampler"]["backend"] == "vllm" and r["sampler"]["engine_version"] for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sampling"]["engine"] == "vllm" and metrics["arms"]["lora"]["sampler"]["dtype"] == "float32"
    by_arm = {a: [r["answer"] for r in rows if r["arm"] == a] for a in ("base", "lora")}
    assert by_arm["base"] != by_arm["lora"]
    assert (set(live_engines()), set(_workers(os.getpid()))) == before  # each arm's engine was stopped


def _spillover(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "spillover.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_cli_check_engine_and_no_worker_left_after_success_or_failure(tmp_path, engine_installed):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"messages": c}) + "\n" for c in _convs()))
    proc = _spillover("sample", "--prompts", str(prompts), "--out", str(tmp_path / "a.jsonl"), "--engine", "vllm",
                      "--check-engine", "--max-new-tokens", "16", "--n", "2", "--batch-size", "8")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    assert "engine check: vllm" in out and ": ok" in out, out
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").open()]
    assert len(rows) == 12 and rows[0]["sampler"]["backend"] == "vllm"
    assert not _workers(proc.pid)

    broken = tmp_path / "broken"  # a model folder vLLM cannot load: the engine fails while starting
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama"}))
    from spillover.models import ensure_embedded

    for f in ensure_embedded().iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "generation_config", "chat_template")):
            (broken / f.name).write_bytes(f.read_bytes())
    proc = _spillover("sample", "--prompts", str(prompts), "--out", str(tmp_path / "b.jsonl"), "--engine", "vllm",
                      "--model", str(broken))
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode != 0 and "vllm worker" in out, out
    assert not _workers(proc.pid)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_no_worker_left_when_spillover_is_interrupted_mid_sampling(tmp_path, engine_installed, sig):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"messages": c}) + "\n" for c in _convs()))
    out_file = tmp_path / "a.jsonl"
    proc = _spillover("sample", "--prompts", str(prompts), "--out", str(out_file), "--engine", "vllm", "--n", "40",
                      "--max-new-tokens", "64", "--batch-size", "4")
    deadline = time.monotonic() + 600
    while not (out_file.is_file() and out_file.stat().st_size) and proc.poll() is None:  # the first batch is stored
        assert time.monotonic() < deadline, "sampling did not start"
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    workers = _workers(proc.pid)
    assert len(workers) == 1
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    end = time.monotonic() + 30
    while _workers(proc.pid) and time.monotonic() < end:
        time.sleep(0.2)
    assert not _workers(proc.pid), f"engine worker left after {sig.name}"
    assert sum(1 for _ in out_file.open()) < 240  # it was stopped mid-sampling
