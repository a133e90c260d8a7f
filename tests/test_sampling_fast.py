"""Faster HF sampling: length buckets (input order kept, greedy unchanged), bf16 and its log-prob check."""

import pytest
import torch

from spillover.evaluate.sampling import (
    HFSampler,
    SampleRow,
    SamplingParams,
    answer_token_logprobs,
    dtype_logprob_check,
    plan_batches,
    sample_rows,
)
from spillover.models import answer_logprobs, load_model

SHORT = [{"role": "user", "content": "Hi"}]
LONG = [{"role": "user", "content": " ".join(["a long question with many many words in it"] * 12)}]
MID = [{"role": "user", "content": "A medium question about the weather today?"}]
# Mixed lengths in a scrambled order, so bucketing must reorder them and put them back.
CONVS = [SHORT, LONG, MID, [{"role": "user", "content": "Why?"}], LONG[:], MID[:], SHORT[:],
         [{"role": "user", "content": "Tell me about rivers and seas, please, in detail."}]]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, one_thread):
    return load_model(str(tiny_model_dir), device="cpu")


def test_plan_batches_sorts_caps_and_splits_only_when_padding_costs_more():
    same = plan_batches([10] * 40, 16, 64)
    assert [len(b) for b in same] == [16, 16, 8]  # equal lengths: only the batch size cuts
    assert sorted(i for b in same for i in b) == list(range(40))
    mixed = [300] * 4 + [12] * 28
    plan = plan_batches(mixed, 32, 64)
    assert [sorted(b) for b in plan] == [[0, 1, 2, 3], list(range(4, 32))]  # 28 short rows padded to 300 cost more
    assert plan_batches([300] * 4 + [290] * 28, 32, 64) == [list(range(32))]  # little padding: one batch
    assert plan_batches([5, 50, 20], 3, 1000) == [[1, 2, 0]]  # long answers: extra batches cost more than padding
    assert plan_batches([], 4, 8) == []
    with pytest.raises(ValueError):
        plan_batches([1], 0, 8)


def test_bucketed_greedy_equals_unbucketed_and_keeps_input_order(tiny):
    model, tok, _ = tiny
    p = SamplingParams(temperature=0.0, max_new_tokens=12)
    bucketed = HFSampler(model, tok, batch_size=8, bucket=True)
    plain = HFSampler(model, tok, batch_size=8, bucket=False)
    rows = [SampleRow(c) for c in CONVS]
    lengths = [len(bucketed._encode(c)) for c in CONVS]
    assert len(bucketed._batches([[0] * n for n in lengths], [0.0] * len(CONVS), 12)) > 1  # it really splits
    assert plain._batches([[0] * n for n in lengths], [0.0] * len(CONVS), 12) == [list(range(len(CONVS)))]
    a, b = bucketed.generate_rows(rows, p), plain.generate_rows(rows, p)
    assert [c.text for c in a] == [c.text for c in b]
    one = [HFSampler(model, tok, batch_size=1).generate_rows([r], p)[0].text for r in rows]
    assert [c.text for c in a] == one  # each answer belongs to its own prompt
    assert a[0].text == a[6].text and a[1].text == a[4].text  # same prompt, same greedy answer


def test_bucketing_is_recorded_and_sampling_reproducible(tiny):
    model, tok, _ = tiny
    sampler = HFSampler(model, tok, batch_size=4)
    p = SamplingParams(temperature=1.0, max_new_tokens=8, seed=5)
    rows = [SampleRow(c, meta={"k": k}) for k, c in enumerate(CONVS)]
    first, again = sample_rows(sampler, rows, p), sample_rows(sampler, rows, p)
    assert [r["answer"] for r in first] == [r["answer"] for r in again]
    assert [r["k"] for r in first] == list(range(len(CONVS)))
    assert sampler.identity()["bucketing"] == "length"
    assert HFSampler(model, tok, bucket=False).identity()["bucketing"] == "none"
    assert first[0]["sampler"]["dtype"] == "float32"


def test_token_logprobs_match_the_probe_scorer(tiny):
    model, tok, _ = tiny
    per_token = answer_token_logprobs(model, tok, MID, "It is sunny.")
    assert per_token.dtype == torch.float32 and per_token.numel() >= 2 and (per_token <= 0).all()
    mean = answer_logprobs(model, tok, [MID], ["It is sunny."])[0]
    assert per_token.mean().item() == pytest.approx(mean, abs=1e-5)


def test_dtype_check_is_zero_in_fp32_and_reports_bf16_shift(tiny_model_dir, tiny):
    model, tok, _ = tiny
    p = SamplingParams(temperature=1.0, max_new_tokens=10, seed=2)
    same = dtype_logprob_check(HFSampler(model, tok, batch_size=4), CONVS[:4], p)
    assert same["dtype"] == same["reference_dtype"] == "float32"
    assert same["max_abs_diff"] == 0.0 and same["n_tokens"] > 0
    bf_model, bf_tok, _ = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    bf = HFSampler(bf_model, bf_tok, batch_size=4)
    assert bf.identity()["dtype"] == "bfloat16"
    shift = dtype_logprob_check(bf, CONVS[:4], p)
    assert shift["dtype"] == "bfloat16" and shift["reference_dtype"] == "float32"
    assert 0 < shift["mean_abs_diff"] <= shift["max_abs_diff"] < 5  # bf16 rounding moves log-probs a little
    assert next(bf_model.parameters()).dtype == torch.bfloat16  # the check does not convert the sampler's model
    assert shift["n_answers"] <= 4


def test_sample_cli_check_dtype_prints_the_shift(tiny_model_dir, tmp_path, one_thread):
    import json

    from typer.testing import CliRunner

    from spillover.cli import app

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": t}) + "\n" for i, t in enumerate(["Hi", "Why is the sky blue?"])))
    out = tmp_path / "s.jsonl"
    result = CliRunner().invoke(app, ["sample", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--out", str(out),
                                      "--max-new-tokens", "6", "--device", "cpu", "--dtype", "bfloat16", "--check-dtype"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("dtype check:"))
    assert "bfloat16 vs float32" in line and "mean" in line and "max" in line
    assert [json.loads(x)["prompt_id"] for x in out.read_text().splitlines()] == ["q0", "q1"]
