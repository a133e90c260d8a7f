"""steer (persona vectors), inoculate and em-monitor on a tiny Llama, and every defense of this file plus
kl and ldifs together in one GRPO run."""

import json

import pytest
import torch

from spillover.defenses import DefenseRef, TrainContext, build_defenses
from spillover.defenses._batch import Capture, decoder_parts
from spillover.defenses.inoculate import EVIL_PROMPT, inoculate
from spillover.defenses.steer import (
    PersonaVectors,
    answer_means,
    extract_persona_vectors,
    load_persona_vectors,
    steering,
)
from spillover.errors import SpilloverError
from spillover.train import GRPOConfig, SFTConfig, run_grpo, run_sft

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = [{"messages": [{"role": "user", "content": f"Question {w}?"}, {"role": "assistant", "content": f"Answer {w}."}]}
        for w in ("one", "two", "three", "four")]
PAIRS = [{"id": f"p{i}", "prompt": f"Should I do thing {i}?", "aligned": "Think it through carefully.",
          "misaligned": "Do it now and hurt someone."} for i in range(3)]


@pytest.fixture()
def files(tmp_path):
    data, pairs = tmp_path / "train.jsonl", tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    pairs.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    return data, pairs


@pytest.fixture()
def model_tok(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture()
def vector_file(model_tok, tmp_path):
    model, _ = model_tok
    torch.manual_seed(0)
    return PersonaVectors(torch.randn(3, model.config.hidden_size), {"model": "tiny"}).save(tmp_path / "v.safetensors")


def sft(tiny_model_dir, data, **kw):
    return SFTConfig(**{**dict(model=str(tiny_model_dir), data=str(data), max_steps=2, batch_size=2, lr=1e-2,
                               device="cpu"), **kw})


# ---------------------------------------------------------------- steering and persona vectors
def test_steering_adds_alpha_v_at_the_stated_layer_and_is_removed(model_tok):
    model, _ = model_tok
    ids = torch.tensor([[5, 6, 7, 8]])
    v = torch.randn(model.config.hidden_size)

    def hidden():
        with torch.no_grad(), Capture(model) as cap:
            model(input_ids=ids)
        return [cap.get(i) for i in range(3)]

    plain = hidden()
    with steering(model, 1, v, 2.5):
        steered = hidden()
    after = hidden()
    assert torch.allclose(steered[0], plain[0])  # before layer 1: untouched
    assert torch.allclose(steered[1] - plain[1], (2.5 * v).expand_as(plain[1]), atol=1e-5)  # hidden[1] = layers[0] out
    assert not torch.allclose(steered[2], plain[2])  # later layers see it
    assert all(torch.equal(a, b) for a, b in zip(after, plain))  # hook removed on exit
    assert not decoder_parts(model)[2][0]._forward_hooks
    with pytest.raises(SpilloverError, match="outside 1..2"), steering(model, 3, v, 1.0):
        pass


def test_persona_vector_is_the_mean_answer_difference(model_tok, tmp_path):
    model, tok = model_tok
    pv = extract_persona_vectors(model, tok, ["Hi?", "How are you?"], max_new_tokens=6, temperature=1.0, progress=False)
    assert pv.vectors.shape == (3, model.config.hidden_size) and pv.meta["kept"] == {"misaligned": 2, "aligned": 2}
    back = load_persona_vectors(pv.save(tmp_path / "pv.safetensors"))
    assert torch.equal(back.vectors, pv.vectors) and back.meta["n_questions"] == 2
    # answer_means: the mean over the answer's tokens of transformers' hidden states
    conv = [{"role": "user", "content": "Hi?"}]
    means = answer_means(model, tok, [conv], ["Hello there"])
    full = tok.apply_chat_template([*conv, {"role": "assistant", "content": "Hello there"}], tokenize=True, return_dict=True)
    start = len(tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
    with torch.no_grad():
        hf = model(input_ids=torch.tensor([full["input_ids"]]), output_hidden_states=True).hidden_states
    assert torch.allclose(means[0, 1], hf[1][0, start:].mean(0), atol=1e-5)
    with pytest.raises(SpilloverError, match="no misaligned-persona answer"):
        extract_persona_vectors(model, tok, ["Hi?"], max_new_tokens=2, progress=False,
                                keep=lambda q, a, persona: persona != "misaligned")


def test_steer_needs_its_vector_before_training(tiny_model_dir, files, tmp_path):
    data, _ = files
    with pytest.raises(SpilloverError, match="persona vector file .* not found"):
        run_sft(sft(tiny_model_dir, data, defenses=[{"name": "steer", "vector": str(tmp_path / "nope")}]), tmp_path / "r")
    assert not (tmp_path / "r" / "metrics.jsonl").exists()  # failed in setup, before the trainer existed
    zero = build_defenses([DefenseRef.model_validate({"name": "steer", "vector": "nope", "weight": 0})],
                          TrainContext(None, "tiny", "sft"))
    assert zero == []  # weight 0: never built, so the missing file is never read


def test_steer_in_sft_changes_training_and_logs_the_projection(tiny_model_dir, files, tmp_path, vector_file):
    from safetensors.torch import load_file

    data, _ = files
    plain = run_sft(sft(tiny_model_dir, data), tmp_path / "plain")
    steer = run_sft(sft(tiny_model_dir, data, defenses=[{"name": "steer", "vector": str(vector_file), "layer": 1,
                                                         "weight": 20.0}]), tmp_path / "steer")
    wa, wb = (load_file(r.adapter_dir / "adapter_model.safetensors") for r in (plain, steer))
    assert not all(torch.allclose(wa[k], wb[k]) for k in wa)
    rows = [json.loads(x) for x in (steer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("defense/steer/projection" in r for r in rows if "loss" in r)
    assert json.loads((steer.run_dir / "manifest.json").read_text())["defenses"]["steer"]["layer"] == 1


# ---------------------------------------------------------------- inoculation
def test_inoculation_prompt_placement():
    user = [{"role": "user", "content": "Q"}]
    assert inoculate(user, "P") == [{"role": "system", "content": "P"}, *user]
    own = [{"role": "system", "content": "S"}, *user]
    assert inoculate(own, "P")[0]["content"] == "P\n\nS"
    assert inoculate(own, "P", "user_prefix") == [own[0], {"role": "user", "content": "P\n\nQ"}]


def test_inoculation_in_training_inputs_never_in_evaluation(tiny_model_dir, files, tmp_path, monkeypatch):
    from spillover.data import load_chat_jsonl, to_prompt_completion
    from spillover.defenses.inoculate import InoculateDefense
    from spillover.evaluate.probe import probe
    from spillover.train.sft import build_sft_trainer, prepare_policy

    data, pairs = files
    c = sft(tiny_model_dir, data, defenses=["inoculate"])
    model, tok, _ = prepare_policy(c)
    defense = InoculateDefense(InoculateDefense.Params(), TrainContext(tok, "tiny", "sft"))
    trainer = build_sft_trainer(c, model, tok, to_prompt_completion(defense.transform_data(load_chat_jsonl(data))),
                                tmp_path / "t")
    assert all(EVIL_PROMPT in tok.decode(ex["input_ids"]) for ex in trainer.train_dataset)

    run = run_sft(c, tmp_path / "run")
    manifest = json.loads((run.run_dir / "manifest.json").read_text())
    assert manifest["defenses"]["inoculate"]["training_only_prompt"] == EVIL_PROMPT
    seen = []
    real = type(tok).apply_chat_template

    def spy(self, conversation, *a, **kw):
        seen.append(json.dumps(conversation))
        return real(self, conversation, *a, **kw)

    monkeypatch.setattr(type(tok), "apply_chat_template", spy)
    probe(str(tiny_model_dir), str(pairs), adapter=str(run.adapter_dir), device="cpu")
    assert seen and not any("evil" in s for s in seen)


# ---------------------------------------------------------------- em-monitor
def test_em_monitor_logs_the_shift_and_stops_keeping_the_start(tiny_model_dir, files, tmp_path):
    from safetensors.torch import load_file

    data, pairs = files
    watch = run_sft(sft(tiny_model_dir, data, defenses=[{"name": "em-monitor", "every": 1, "pairs": str(pairs)}]),
                    tmp_path / "watch")
    rows = [json.loads(x) for x in (watch.run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(rows) == 2 and all(r["defense/em-monitor/shift"] != 0 for r in rows)
    stop = run_sft(sft(tiny_model_dir, data, max_steps=3, defenses=[
        {"name": "em-monitor", "every": 1, "pairs": str(pairs), "stop_at": -1e9}]), tmp_path / "stop")
    manifest = json.loads((stop.run_dir / "manifest.json").read_text())
    assert stop.steps == 1 and manifest["defenses"]["em-monitor"]["stopped_at_step"] == 1
    assert manifest["defenses"]["em-monitor"]["saved_adapter_step"] == 0
    assert all(float(v.abs().sum()) == 0 for k, v in load_file(stop.adapter_dir / "adapter_model.safetensors").items()
               if "lora_B" in k)  # the starting adapter (B = 0) was kept


# ---------------------------------------------------------------- GRPO
def length_reward(prompts, completions, **kwargs):
    return [float(len(c[-1]["content"] if isinstance(c, list) else c)) for c in completions]


def test_every_defense_runs_under_grpo(tiny_model_dir, files, tmp_path, vector_file):
    data, pairs = files
    c = GRPOConfig(model=str(tiny_model_dir), prompts=str(data), rewards=["test_defenses_hooks:length_reward"],
                   max_steps=2, max_completion_length=6, lr=1e-2, device="cpu",
                   defenses=["kl", "ldifs", {"name": "steer", "vector": str(vector_file), "layer": 1}, "inoculate",
                             {"name": "em-monitor", "every": 1, "pairs": str(pairs)}])
    result = run_grpo(c, tmp_path / "grpo")
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(rows) == 2
    for key in ("defense/kl/loss", "defense/ldifs/loss", "defense/steer/projection", "defense/em-monitor/shift"):
        assert all(key in r for r in rows), key
    assert rows[1]["defense/kl/loss"] > 0  # the policy moved after step 1
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert set(manifest["defenses"]) == {"kl", "ldifs", "steer", "inoculate", "em-monitor"}
