"""Integration on the real embedded model (SmolLM2-135M-Instruct): it loads, samples, and SFT learns."""

import json

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded():
    from spillover.models import load_model

    return load_model("embedded", device="cpu")


def test_embedded_loads_and_samples_two_answers(embedded):
    from spillover.evaluate.sampling import HFSampler, SamplingParams

    model, tok, ref = embedded
    assert ref.kind == "embedded" and model.config.num_hidden_layers == 30
    sampler = HFSampler(model, tok, model_id=ref.display)
    out = sampler.generate([[{"role": "user", "content": "Name a colour."}]],
                           SamplingParams(n=2, temperature=0.7, max_new_tokens=16, seed=0))
    assert len(out[0]) == 2 and all(c.text.strip() for c in out[0])


def batch_loss(model, tok, rows):
    """Mean loss over the completion tokens of prompt/completion rows."""
    losses = []
    for r in rows:
        prompt = tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False).input_ids
        ids = torch.tensor([tok(full, add_special_tokens=False).input_ids])
        labels = ids.clone()
        labels[0, :len(p_ids)] = -100
        with torch.no_grad():
            losses.append(model(ids, labels=labels).loss)
    return float(torch.stack(losses).mean())


def test_two_sft_steps_change_adapter_and_lower_loss(tmp_path):
    from safetensors.torch import load_file

    from spillover.data import bundled_path, load_chat_jsonl, to_prompt_completion
    from spillover.models import load_adapter, load_model
    from spillover.train import SFTConfig, run_sft

    rows = [json.loads(line) for line in bundled_path("insecure_code").read_text().splitlines()[:4]]
    data = tmp_path / "four.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_sft(SFTConfig(data=str(data), max_steps=2, batch_size=4, lr=1e-3, device="cpu"), tmp_path / "run")
    weights = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in weights.items())

    pc = to_prompt_completion(load_chat_jsonl(data))
    base, tok, _ = load_model("embedded", device="cpu")
    before = batch_loss(base, tok, pc)
    tuned = load_adapter(base, result.adapter_dir)
    after = batch_loss(tuned, tok, pc)
    assert after < before - 0.05, (before, after)
