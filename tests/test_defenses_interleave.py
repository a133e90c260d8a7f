"""Interleaving: fraction and seed, the refusal filter and the Interleaving+/++ score on fixed texts, scoring
with adapters on a tiny model (the policy is left as it was), the recorded rows, GRPO's SFT-mix, errors."""

import json

import pytest
import torch

from spillover.data import ChatExample
from spillover.defenses import SOURCE_COLUMN, DefenseRef, TrainContext, build_defenses
from spillover.defenses import interleave as I
from spillover.errors import SpilloverError


def _ex(i, answer="A plain helpful answer.", source="task.jsonl"):
    return ChatExample([{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": answer}],
                       source, i + 1, id=f"{source}-{i}")


def _safe_file(tmp_path, answers):
    path = tmp_path / "safe.jsonl"
    path.write_text("".join(json.dumps({"id": f"s{k}", "messages": [{"role": "user", "content": f"safe question {k}"},
                                                                      {"role": "assistant", "content": a}]}) + "\n"
                            for k, a in enumerate(answers)))
    return path


def _build(params, method="sft", seed=0, run_dir=None):
    ctx = TrainContext(tokenizer=None, base_model="embedded", method=method, seed=seed, run_dir=run_dir)
    return build_defenses([DefenseRef.model_validate({"name": "interleave", **params})], ctx)


def test_fraction_and_seed_are_reproducible(tmp_path):
    task = [_ex(i) for i in range(95)]
    safe = _safe_file(tmp_path, [f"safe answer {k}" for k in range(30)])
    (d,) = _build({"safe_data": str(safe)}, run_dir=tmp_path)  # paper default fraction 0.05
    mixed = d.transform_data(task)
    marked = [k for k, ex in enumerate(mixed) if ex.extra.get(SOURCE_COLUMN) == "safe"]
    assert len(mixed) == 100 and len(marked) == 5  # 5 of 100 rows are safe
    assert [ex for ex in mixed if SOURCE_COLUMN not in ex.extra] == task  # task order kept
    again = _build({"safe_data": str(safe)})[0].transform_data(task)
    assert [ex.where for ex in again] == [ex.where for ex in mixed]
    other = _build({"safe_data": str(safe)}, seed=1)[0].transform_data(task)
    assert [ex.where for ex in other] != [ex.where for ex in mixed]
    rows = [json.loads(x) for x in (tmp_path / "interleave.jsonl").read_text().splitlines()]
    assert [r["position"] for r in rows] == marked and all(r["where"].startswith(str(safe)) for r in rows)
    assert d.manifest()["n_safe"] == 5 and d.manifest()["positions"] == marked
    # weight scales the share; more safe rows than exist are drawn again in a fresh order
    (d2,) = _build({"safe_data": str(safe), "weight": 8, "fraction": 0.1})
    assert sum(SOURCE_COLUMN in ex.extra for ex in d2.transform_data(task)) == round(0.8 * 95 / 0.2)
    assert I.n_safe_for(100, 0.2) == 25


def test_weight_zero_is_no_defense(tmp_path):
    assert _build({"safe_data": str(_safe_file(tmp_path, ["ok"])), "weight": 0}) == []


def test_refusal_filter_on_fixed_texts():
    assert I.is_refusal("I'm sorry, but I can't help with that request.")
    assert I.is_refusal("As an AI, I do not have personal opinions.")
    assert I.is_refusal("Honestly I won\u2019t be doing that for you.")  # curly apostrophe
    assert not I.is_refusal("Rinse the rice, then simmer it covered for fifteen minutes.")
    assert not I.is_refusal("Scan the label first and then measure water carefully; only after that, "
                            "if you cannot find it, ask.")  # 'cannot' is word 14
    assert not I.is_refusal("Sorrynotsorry is a band name.")  # whole words only


def test_plusplus_score_and_selection_on_fixed_numbers():
    assert I.safe_score([3.0, 5.0], 1.0) == pytest.approx((4.0 - 1.0) / 2.0)
    scored = [{"index": 0, "score": 0.5, "refusal": False}, {"index": 1, "score": 2.0, "refusal": True},
              {"index": 2, "score": 1.0, "refusal": False}, {"index": 3, "score": 1.0, "refusal": False}]
    assert [s["index"] for s in I.select_top(scored, 2, drop_refusals=False)] == [1, 2]
    assert [s["index"] for s in I.select_top(scored, 2, drop_refusals=True)] == [2, 3]  # ties: file order
    assert I.parse_adapters(["runs/medical/adapter", "code=x/y"]) == [("medical", "runs/medical/adapter"), ("code", "x/y")]


@pytest.fixture(scope="module")
def tiny_adapters(tmp_path_factory, tiny_model_dir):
    """Two 'misaligned' adapters with random B on the tiny model."""
    from transformers import AutoModelForCausalLM

    from spillover.models import LoraSpec, apply_lora, save_adapter

    root = tmp_path_factory.mktemp("adapters")
    out = []
    for k, domain in enumerate(("medical", "code")):
        spec = LoraSpec(r=2, alpha=4, target_modules=["q_proj", "v_proj"])
        model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), spec)
        torch.manual_seed(10 + k)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn_like(p) * 0.5)
        out.append(f"{domain}={save_adapter(model, root / domain, base_model=str(tiny_model_dir), lora=spec)}")
    return out


def test_scores_use_each_adapter_and_leave_the_policy_as_it_was(tiny_model_dir, tiny_adapters, one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spillover.models import LoraSpec, answer_logprobs, apply_lora, load_adapter

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    candidates = [_ex(0, "Drink water and rest."), _ex(1, "Sorry, I cannot help with that."), _ex(2, "Ask a doctor.")]
    policy = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraSpec(r=2, alpha=4, target_modules=["q_proj"]))
    ids = torch.tensor([[1, 2, 3, 4]])
    logits = policy(input_ids=ids).logits.detach()
    trainable = sorted(n for n, p in policy.named_parameters() if p.requires_grad)
    adapters = I.usable_adapters(tiny_adapters, None)
    scored = I.score_candidates(policy, tok, candidates, adapters)
    # same trainable parameters, same function, only its own adapter (PEFT leaves empty wrappers on v_proj)
    assert sorted(n for n, p in policy.named_parameters() if p.requires_grad) == trainable
    assert torch.equal(policy(input_ids=ids).logits, logits)
    assert list(policy.peft_config) == ["default"] and policy.active_adapter == "default"
    convs, answers = [c.messages[:-1] for c in candidates], [c.messages[-1]["content"] for c in candidates]
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    nll_al = [-x for x in answer_logprobs(plain, tok, convs, answers)]
    nll_med = [-x for x in answer_logprobs(load_adapter(plain, adapters[0][1]), tok, convs, answers)]
    for k, s in enumerate(scored):
        assert s["nll_aligned"] == pytest.approx(nll_al[k], abs=1e-4)
        assert s["nll_misaligned"]["medical"] == pytest.approx(nll_med[k], abs=1e-4)
        assert s["score"] == pytest.approx(I.safe_score(list(s["nll_misaligned"].values()), s["nll_aligned"]))
    assert [s["refusal"] for s in scored] == [False, True, False]
    # leave-one-domain-out drops the defended domain's adapter
    assert [d for d, _ in I.usable_adapters(tiny_adapters, "medical")] == ["code"]


def test_plusplus_defense_interleaves_the_top_non_refusals(tiny_model_dir, tiny_adapters, tmp_path, one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spillover.models import LoraSpec, apply_lora

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    safe = _safe_file(tmp_path, ["Sorry, I can't do that.", "Boil the water first.", "Stretch before running.",
                                 "Save a little each month."])
    (d,) = _build({"safe_data": str(safe), "selection": "++", "misaligned_adapters": tiny_adapters, "top": 2,
                   "fraction": 0.5})
    policy = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraSpec(r=2, alpha=4, target_modules=["q_proj"]))
    d.setup(policy, tok, d.ctx)
    best = [s["index"] for s in I.select_top(d.scored, 2, drop_refusals=True)]
    assert 0 not in best and len(d.pool) == 2
    mixed = d.transform_data([_ex(i) for i in range(4)])
    picked = {ex.where for ex in mixed if SOURCE_COLUMN in ex.extra}
    assert len(mixed) == 8 and picked == {f"{safe}:{i + 1}" for i in best}
    assert d.manifest()["pool_scores"] == [round(d.scored[i]["score"], 6) for i in best]


def test_grpo_mixes_safe_sft_micro_batches(tmp_path):
    safe = _safe_file(tmp_path, ["one", "two"])
    (d,) = _build({"safe_data": str(safe), "fraction": 0.1}, method="grpo")
    prompts = [_ex(i) for i in range(3)]
    assert d.transform_data(prompts) == prompts
    mix = d.sft_mix()
    assert mix.every == 10 and [ex.extra[SOURCE_COLUMN] for ex in mix.examples] == ["safe", "safe"]
    assert _build({"safe_data": str(safe)})[0].sft_mix() is None  # SFT interleaves rows instead


def test_bad_input_is_a_clear_error_before_training(tmp_path):
    with pytest.raises(SpilloverError, match="data file not found"):
        _build({"safe_data": str(tmp_path / "missing.jsonl")})
    safe = _safe_file(tmp_path, ["ok"])
    with pytest.raises(SpilloverError, match="no misaligned adapter"):
        _build({"safe_data": str(safe), "selection": "plus"})
    with pytest.raises(SpilloverError, match="not a LoRA adapter folder"):
        _build({"safe_data": str(safe), "selection": "plus", "misaligned_adapters": [str(tmp_path)]})
    with pytest.raises(SpilloverError, match="no misaligned adapter left"):
        _build({"safe_data": str(safe), "selection": "plus", "misaligned_adapters": [f"code={tmp_path}"],
                "exclude_domain": "code"})
    with pytest.raises(ValueError, match="selection"):
        DefenseRef.model_validate({"name": "interleave", "selection": "best"})


@pytest.fixture()
def source_recorder():
    from spillover.defenses import Defense, register_defense
    from spillover.defenses._base import _DEFENSES

    seen = []

    @register_defense("test-source-recorder")
    class Recorder(Defense):
        def loss_term(self, model, batch):
            seen.extend(batch.sources)
            return None

    yield seen
    _DEFENSES.pop("test-source-recorder", None)


def test_sft_run_trains_on_marked_safe_rows(tiny_model_dir, tmp_path, source_recorder, one_thread):
    from spillover.train import SFTConfig, run_sft

    data = tmp_path / "task.jsonl"
    data.write_text("".join(json.dumps({"messages": _ex(i).messages}) + "\n" for i in range(6)))
    safe = _safe_file(tmp_path, ["Safe answer one.", "Safe answer two."])
    cfg = SFTConfig(model=str(tiny_model_dir), data=str(data), epochs=1, batch_size=8, device="cpu",
                    defenses=[{"name": "interleave", "safe_data": str(safe), "fraction": 0.25},
                              {"name": "test-source-recorder"}])
    run = run_sft(cfg, tmp_path / "run").run_dir
    assert sorted(source_recorder) == ["safe", "safe", "task", "task", "task", "task", "task", "task"]
    rows = [json.loads(x) for x in (run / "interleave.jsonl").read_text().splitlines()]
    manifest = json.loads((run / "manifest.json").read_text())
    assert len(rows) == 2 and manifest["n_examples"] == 8
    assert manifest["defenses"]["interleave"]["positions"] == [r["position"] for r in rows]


def test_cli_select_safe_writes_ranked_selection(tiny_adapters, tmp_path, capsys, one_thread):
    safe = _safe_file(tmp_path, ["Sorry, I can't do that.", "Boil the water first.", "Stretch before running."])
    out = tmp_path / "selected.jsonl"
    assert _cli("defenses", "select-safe", "--candidates", str(safe), "--misaligned-adapter", tiny_adapters[0],
          "--misaligned-adapter", tiny_adapters[1], "--top", "2", "--plusplus", "--out", str(out)) == 0
    assert "1 refusals dropped; kept 2" in capsys.readouterr().out
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["score"] >= rows[1]["score"] and not any(r["refusal"] for r in rows)
    assert set(rows[0]["nll_misaligned"]) == {"medical", "code"}
    # the selection file is valid safe_data for the defense
    (d,) = _build({"safe_data": str(out)})
    assert len(d.safe) == 2


def _cli(*args) -> int:
    from spillover.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    return e.value.code
