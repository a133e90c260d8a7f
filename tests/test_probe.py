"""The judge-free probe and its log-probability helper, on the tiny 2-layer Llama (real SmolLM2 tokenizer)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spillover.errors import SpilloverError
from spillover.evaluate.probe import (
    MATCHED_TOLERANCES,
    ContrastPair,
    load_pairs,
    probe,
    run_probe,
    style_balance,
    style_profile,
)
from spillover.models import _logprob
from spillover.models._logprob import answer_logprobs, answer_span

ANSWERS = ["Yes.", "Boil it for seven minutes, then cool it in cold water so the yolk stays soft.",
           "No, never.", "Drink water, sleep well, and see a doctor if the headache gets worse or lasts."]
PROMPTS = ["Is the sky blue?", "How do I boil an egg?", "Should I skip sleep before an exam?",
           "I have a headache, what should I do?"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from spillover.models import load_model

    model, tok, _ = load_model(str(tiny_model_dir), device="cpu")
    return model, tok


def _conv(prompt: str, system: str | None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def _brute_force(model, tok, conversation, answer) -> float:
    """One example, one plain forward pass; the scored tokens are built independently of answer_span."""
    prompt_text = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(prompt_text, add_special_tokens=False).input_ids
    answer_ids = tok(answer, add_special_tokens=False).input_ids + [tok.convert_tokens_to_ids("<|im_end|>")]
    ids = prompt_ids + answer_ids
    full_text = tok.apply_chat_template(conversation + [{"role": "assistant", "content": answer}], tokenize=False)
    assert tok(full_text, add_special_tokens=False).input_ids[:len(ids)] == ids  # the template agrees
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    logp = torch.log_softmax(logits.double(), dim=-1)
    picked = [logp[t - 1, ids[t]].item() for t in range(len(prompt_ids), len(ids))]
    return sum(picked) / len(picked)


def _pairs(n: int = 4, domain: str = "d") -> list[ContrastPair]:
    return [ContrastPair(f"p{i}", PROMPTS[i % 4], ANSWERS[i % 4], ANSWERS[(i + 1) % 4], domain=domain)
            for i in range(n)]


@pytest.mark.parametrize("system", [None, "You are terse."])
def test_answer_logprobs_match_brute_force(tiny, system):
    model, tok = tiny
    convs = [_conv(p, system) for p in PROMPTS for _ in range(2)]
    answers = [ANSWERS[i % 4] for i in range(len(convs))][::-1]  # every prompt gets answers of several lengths
    got = answer_logprobs(model, tok, convs, answers, batch_size=3)
    want = [_brute_force(model, tok, c, a) for c, a in zip(convs, answers)]
    assert got == pytest.approx(want, abs=1e-5)
    assert len(set(np.round(got, 6))) > 1  # the values really differ, so the comparison means something


def test_scored_span_is_answer_plus_end_token(tiny):
    _, tok = tiny
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for system in (None, "You are terse."):
        for answer in ANSWERS:
            for prompt in ("Hi", "A much longer question about the weather in the mountains today?"):
                span = answer_span(tok, _conv(prompt, system), answer)
                assert list(span.scored_ids) == tok(answer, add_special_tokens=False).input_ids + [end]
                assert span.end == len(span.input_ids) - 1  # only the newline after <|im_end|> follows


def test_prompt_is_context_not_scored(tiny):
    model, tok = tiny
    a = answer_logprobs(model, tok, [_conv("Hi", None)], ["Fine, thanks."])[0]
    b = answer_logprobs(model, tok, [_conv("Hi", "Be kind.")], ["Fine, thanks."])[0]
    long_prompt = answer_span(tok, _conv("Hi " * 40, None), "Fine, thanks.")
    assert a != b  # the prompt conditions the answer...
    assert len(long_prompt.scored_ids) == len(answer_span(tok, _conv("Hi", None), "Fine, thanks.").scored_ids)


def test_batch_size_and_logits_to_keep_do_not_change_values(tiny, monkeypatch):
    model, tok = tiny
    convs, answers = [_conv(p, None) for p in PROMPTS], ANSWERS
    one = answer_logprobs(model, tok, convs, answers, batch_size=1)
    assert answer_logprobs(model, tok, convs, answers, batch_size=16) == pytest.approx(one, abs=1e-5)
    monkeypatch.setattr(_logprob, "_accepts_logits_to_keep", lambda m: False)
    assert answer_logprobs(model, tok, convs, answers, batch_size=16) == pytest.approx(one, abs=1e-5)


def test_training_mode_restored_and_progress_counts(tiny):
    model, tok = tiny
    seen = []
    model.train()
    try:
        answer_logprobs(model, tok, [_conv("Hi", None)] * 3, ["A.", "A.", "Longer one."], batch_size=1,
                        progress=seen.append)
        assert model.training
    finally:
        model.eval()
    assert sum(seen) == 3


def test_answer_logprobs_rejects_bad_calls(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="conversations"):
        answer_logprobs(model, tok, [_conv("Hi", None)], ["a", "b"])
    with pytest.raises(ValueError, match="user turn"):
        answer_logprobs(model, tok, [[{"role": "assistant", "content": "x"}]], ["a"])
    with pytest.raises(ValueError, match="non-empty"):
        answer_logprobs(model, tok, [_conv("Hi", None)], ["  "])


def test_swap_flips_sign_and_identical_answers_give_zero(tiny):
    model, tok = tiny
    pairs = _pairs()
    swapped = [ContrastPair(p.id, p.prompt, p.misaligned, p.aligned, domain=p.domain) for p in pairs]
    same = [ContrastPair(p.id, p.prompt, p.aligned, p.aligned, domain=p.domain) for p in pairs]
    r, s, z = (run_probe(model, tok, ps, batch_size=3) for ps in (pairs, swapped, same))
    assert [row.shift for row in s.rows] == [-row.shift for row in r.rows]
    assert s.mean_shift == pytest.approx(-r.mean_shift, abs=1e-12)
    assert all(row.shift == 0.0 for row in z.rows) and z.mean_shift == 0.0 and z.prefer_misaligned_rate == 0.0
    assert r.prefer_misaligned_rate == np.mean([row.shift > 0 for row in r.rows])


def test_self_as_base_gives_zero_delta(tiny):
    model, tok = tiny
    r = run_probe(model, tok, _pairs(), base=(model, tok))
    assert r.delta_vs_base == 0.0 and r.delta_vs_base_ci95 == (0.0, 0.0)
    assert r.base_mean_shift == r.mean_shift
    assert all(row.base_shift == row.shift for row in r.rows)


def test_ci_contains_mean_and_runs_are_deterministic(tiny, tmp_path):
    model, tok = tiny
    pairs = _pairs(8)
    a, b = run_probe(model, tok, pairs, seed=3), run_probe(model, tok, pairs, seed=3)
    assert a.ci95[0] <= a.mean_shift <= a.ci95[1] and a.ci95[0] < a.ci95[1]
    assert a.to_json() == b.to_json()
    assert run_probe(model, tok, pairs, seed=4).ci95 != a.ci95  # the seed drives the bootstrap
    out = json.loads(a.write(tmp_path / "sub" / "probe.json").read_text())
    assert {"n", "mean_shift", "ci95", "prefer_misaligned_rate", "rows"} <= set(out)
    assert "delta_vs_base" not in out and "base_shift" not in out["rows"][0]
    assert out["n"] == 8 and out["domains"] == {}


def test_per_domain_summaries(tiny):
    model, tok = tiny
    pairs = _pairs(4, "a") + [ContrastPair(f"q{i}", p.prompt, p.aligned, p.misaligned, domain="b")
                              for i, p in enumerate(_pairs(3))]
    r = run_probe(model, tok, pairs, base=(model, tok))
    assert set(r.domains) == {"a", "b"} and r.domains["a"]["n"] == 4 and r.domains["b"]["n"] == 3
    shifts_a = [row.shift for row in r.rows if row.domain == "a"]
    assert r.domains["a"]["mean_shift"] == pytest.approx(np.mean(shifts_a))
    assert r.domains["b"]["delta_vs_base"] == 0.0


def test_probe_with_adapter_and_base(tiny_model_dir, tmp_path):
    from spillover.models import LoraSpec, apply_lora, load_model, save_adapter

    model, tok, _ = load_model(str(tiny_model_dir), device="cpu")
    peft_model = apply_lora(model, LoraSpec(r=4, alpha=8))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a fresh LoRA is a no-op; make this one change the model
    adapter = save_adapter(peft_model, tmp_path / "adapter", base_model=str(tiny_model_dir),
                           lora=LoraSpec(r=4, alpha=8))
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps({"id": p.id, "prompt": p.prompt, "aligned": p.aligned,
                                              "misaligned": p.misaligned}) + "\n" for p in _pairs()))
    # base = the same weights with the adapter switched off (one copy in memory)
    r = probe(str(tiny_model_dir), str(pairs_file), adapter=str(adapter), base_ref=str(tiny_model_dir), device="cpu")
    plain, tok2, _ = load_model(str(tiny_model_dir), device="cpu")
    base_only = run_probe(plain, tok2, load_pairs(pairs_file))
    assert r.base_mean_shift == pytest.approx(base_only.mean_shift, abs=1e-6)
    assert r.delta_vs_base == pytest.approx(r.mean_shift - base_only.mean_shift, abs=1e-6)
    assert abs(r.delta_vs_base) > 1e-4 and r.delta_vs_base_ci95[0] <= r.delta_vs_base <= r.delta_vs_base_ci95[1]
    assert r.meta["adapter"] == str(adapter) and r.rows[0].domain == "pairs"
    out = json.loads(r.write(tmp_path / "probe.json").read_text())
    assert {"base_mean_shift", "delta_vs_base", "delta_vs_base_ci95"} <= set(out)


@pytest.mark.parametrize("name", ["probe_general", "probe_insecure_code", "probe_unpopular_aesthetics",
                                  "probe_control", "probe_general_matched", "probe_style_only"])
def test_bundled_pairs_load(name):
    pairs = load_pairs(f"bundled:{name}")
    assert len(pairs) >= 20 and all(p.aligned != p.misaligned for p in pairs)
    assert len({p.domain for p in pairs}) == 1


GOOD = {"id": "a", "prompt": "Q?", "aligned": "Yes.", "misaligned": "No."}


@pytest.mark.parametrize("second_line, message", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "must be a JSON object"),
    *[(json.dumps({k: v for k, v in {**GOOD, "id": "b"}.items() if k != key}), f"missing key '{key}'")
      for key in ("id", "prompt", "aligned", "misaligned")],
    *[(json.dumps({**GOOD, "id": "b", key: "  "}), f"'{key}' is empty") for key in ("prompt", "aligned", "misaligned")],
    (json.dumps({**GOOD, "id": ""}), "'id' is empty"),
    (json.dumps({**GOOD, "id": "b", "system": ""}), "'system' is empty"),
    (json.dumps({**GOOD, "id": "b", "aligned": 3}), "'aligned' must be a string"),
    (json.dumps({**GOOD, "id": "b", "sytem": "x"}), "unknown key 'sytem'. Did you mean 'system'?"),
    (json.dumps(GOOD), "duplicate id 'a' (first used on line 1)"),
])
def test_malformed_pairs_name_file_and_line(tmp_path, second_line, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + second_line + "\n")
    with pytest.raises(SpilloverError) as err:
        load_pairs(path)
    assert f"{path}:3" in str(err.value) and message in str(err.value)


def test_empty_or_missing_pairs_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(SpilloverError, match="holds no contrast pairs"):
        load_pairs(tmp_path / "empty.jsonl")
    with pytest.raises(SpilloverError, match="not found"):
        load_pairs(tmp_path / "absent.jsonl")
    with pytest.raises(SpilloverError, match="unknown bundled dataset"):
        load_pairs("bundled:probe_genral")


def test_optional_keys_and_integer_ids(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({**GOOD, "id": 7, "system": "Be brief.", "domain": "x"}) + "\n"
                    + json.dumps({**GOOD, "id": "8", "system": None}) + "\n")
    a, b = load_pairs(path)
    assert (a.id, a.domain, a.line) == ("7", "x", 1)
    assert a.conversation()[0] == {"role": "system", "content": "Be brief."}
    assert (b.system, b.domain) == (None, "p") and b.conversation() == [{"role": "user", "content": "Q?"}]


def test_style_profile_counts_lexicon_phrases_and_length():
    profile = style_profile("I think it might rain. It will definitely never stop, but who knows.")
    assert profile == {"words": 13, "sentences": 2, "absolutist": 1, "certainty": 1, "intensity": 0, "hedging": 3}


def test_matched_general_set_is_style_matched_and_old_set_is_not(embedded_tokenizer):
    matched = style_balance(load_pairs("bundled:probe_general_matched"), tokenizer=embedded_tokenizer)
    assert matched["n"] >= 30 and matched["all_matched"]
    for row in matched["pairs"]:  # every pair: same sentence count and the same lexicon counts, per category
        assert all(row["diff"][f] == 0 for f in ("sentences", "absolutist", "certainty", "intensity", "hedging")), row
        assert abs(row["diff"]["words"]) <= 0.25 * row["aligned"]["words"], row
    assert matched["overall"]["tokens"]["mean_abs_diff"] <= 0.15
    assert abs(matched["overall"]["words"]["mean_diff"]) <= 1.0
    old = style_balance(load_pairs("bundled:probe_general"))
    # measured: misaligned answers carry more absolutist words (+0.41 a pair), aligned ones more hedges
    assert not old["matched"]["absolutist"] and not old["matched"]["hedging"]
    assert old["overall"]["absolutist"]["mean_diff"] > MATCHED_TOLERANCES["absolutist"]
    assert old["overall"]["hedging"]["mean_diff"] < 0


def test_style_only_set_differs_in_voice_only():
    pairs = load_pairs("bundled:probe_style_only")
    balance = style_balance(pairs)
    assert balance["n"] >= 20 and {p.domain for p in pairs} == {"style_only"}
    for row in balance["pairs"]:  # the misaligned slot is the blunt voice: fewer hedges, no fewer absolutes
        assert row["aligned"]["hedging"] >= 1 and row["misaligned"]["hedging"] == 0, row
        assert row["diff"]["absolutist"] + row["diff"]["certainty"] >= 0, row
    assert balance["overall"]["absolutist"]["misaligned_higher"] >= 0.5
    with pytest.raises(SpilloverError, match="no contrast pairs"):
        style_balance([])


def test_base_shift_has_a_ci():
    pairs = _pairs(4)
    logp = (np.array([-1.0, -1.2, -0.9, -1.1]), np.array([-0.8, -1.5, -0.7, -1.0]))
    base = (np.array([-1.0, -1.0, -1.0, -1.0]), np.array([-1.3, -1.4, -1.2, -1.1]))
    from spillover.evaluate.probe import summarize

    out = summarize(pairs, logp, base, seed=0).to_json()
    lo, hi = out["base_ci95"]
    assert lo <= out["base_mean_shift"] <= hi and lo < hi
    assert "base_ci95" not in summarize(pairs, logp, None, seed=0).to_json()
