"""Interface v2 and the loss defenses (kl, ldifs) on a tiny Llama: the batch view, the layer convention,
one shared reference pass, KL = 0 at the start, gradients reach the LoRA weights, GA invariance."""


import pytest
import torch

from spillover.defenses import DefenseBatch, DefenseRef, TrainContext, build_defenses, list_defenses
from spillover.defenses._batch import Capture, decoder_parts
from spillover.defenses.kl import token_kl
from spillover.defenses.ldifs import feature_layers
from spillover.models import LoraSpec, apply_lora

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def peft_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return apply_lora(model, LoraSpec(r=4, alpha=8))


def sft_inputs(n=2, t=7):
    torch.manual_seed(1)
    ids = torch.randint(5, 200, (n, t))
    labels = ids.clone()
    labels[:, :3] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def grpo_inputs():
    torch.manual_seed(2)
    return {"prompt_ids": torch.randint(5, 200, (2, 4)), "prompt_mask": torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]),
            "completion_ids": torch.randint(5, 200, (2, 3)), "completion_mask": torch.tensor([[1, 1, 0], [1, 1, 1]]),
            "advantages": torch.zeros(2)}


def nudge_lora(model, scale=0.5):
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(scale * torch.randn_like(p))


def lora_grad_norm(model):
    return sum(float(p.grad.norm()) for n, p in model.named_parameters() if "lora" in n and p.grad is not None)


def policy_pass(model, batch):
    """What the trainer does: its own forward under the capture; the batch then reuses it."""
    with Capture(model) as cap:
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    batch.attach_capture(cap)


def defenses(*refs):
    return build_defenses([DefenseRef.model_validate(r) for r in refs], TrainContext(None, "tiny", "sft"))


# ---------------------------------------------------------------- the batch view
def test_batch_view_sft_and_grpo(peft_model):
    sft = DefenseBatch(peft_model, sft_inputs(), "sft")
    assert sft.trained_mask.tolist() == [[0, 0, 0, 1, 1, 1, 1]] * 2 and sft.sources == ["task", "task"]
    grpo = DefenseBatch(peft_model, grpo_inputs(), "grpo", sources=["task", "safe"])
    assert grpo.input_ids.shape == (2, 7)
    assert grpo.trained_mask.tolist() == [[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1, 1]]
    assert grpo.attention_mask[0, 0] == 0 and grpo.rows("safe").tolist() == [False, True]
    assert "advantages" in grpo and sorted(grpo)[0] == "advantages"  # still a mapping of the raw inputs


def test_hidden_state_convention_matches_transformers(peft_model):
    """hidden[l] = output of layers[l - 1] (hidden[0] = embeddings), as output_hidden_states except the last,
    which transformers returns after the final norm."""
    batch = DefenseBatch(peft_model, sft_inputs(), "sft")
    with torch.no_grad():
        hf = peft_model(input_ids=batch.input_ids, output_hidden_states=True).hidden_states
        policy_pass(peft_model, batch)
    L = len(decoder_parts(peft_model)[2])
    assert len(hf) == L + 1
    for layer in range(L):
        assert torch.allclose(batch.policy.hidden(layer), hf[layer], atol=1e-6)
    norm = decoder_parts(peft_model)[3]
    assert torch.allclose(norm(batch.policy.hidden(L)), hf[L], atol=1e-5)
    assert feature_layers(L + 1, 5) == [0, 1, 2] and feature_layers(31, 5) == [0, 8, 15, 22, 30]


def test_policy_logits_are_the_trained_positions(peft_model):
    batch = DefenseBatch(peft_model, sft_inputs(), "sft")
    with torch.no_grad():
        full = peft_model(input_ids=batch.input_ids).logits
        policy_pass(peft_model, batch)
    assert torch.allclose(batch.policy.logits(), full[:, 2:-1].reshape(-1, full.shape[-1]), atol=1e-5)
    assert batch.token_rows().tolist() == [0] * 4 + [1] * 4


# ---------------------------------------------------------------- kl and ldifs
def test_kl_is_zero_at_start_and_has_a_gradient_after_a_step(peft_model):
    (kl,) = defenses({"name": "kl"})
    batch = DefenseBatch(peft_model, sft_inputs(), "sft")
    policy_pass(peft_model, batch)
    assert float(kl.loss_term(peft_model, batch)) == pytest.approx(0.0, abs=1e-6)  # LoRA B starts at zero
    nudge_lora(peft_model)  # stands in for an optimizer step
    batch = DefenseBatch(peft_model, sft_inputs(), "sft")
    policy_pass(peft_model, batch)
    term = kl.loss_term(peft_model, batch)
    assert float(term) > 1e-4
    term.backward()
    assert lora_grad_norm(peft_model) > 0


def test_kl_matches_a_hand_computation():
    p, q = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    pp, qq = p.softmax(-1), q.softmax(-1)
    assert float(token_kl(p, q)) == pytest.approx(float((pp * (pp / qq).log()).sum()), rel=1e-6)


def test_kl_stored_gradient_equals_autograd_through_the_softmax():
    from spillover.defenses.kl import _checkpointed_kl, _KLWithStoredGradient, chunked_kl

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=True)
    for p in head.parameters():
        p.requires_grad_(False)
    hp0, hr = torch.randn(13, 8), torch.randn(13, 8)
    weights = torch.rand(13)  # a non-uniform upstream gradient per token

    def value_and_grad(fn):
        hp = hp0.clone().requires_grad_(True)
        v = fn(hp)
        (v * weights).sum().backward()
        return v.detach(), hp.grad

    exact_v, exact_g = value_and_grad(lambda hp: token_kl(head(hp), head(hr)))
    orig = _KLWithStoredGradient.apply
    fast_v, fast_g = value_and_grad(lambda hp: chunked_kl(hp, hr, head, head, chunk=5))
    assert torch.allclose(fast_v, exact_v, atol=1e-6) and torch.allclose(fast_g, exact_g, atol=1e-6)
    assert float(exact_g.abs().max()) > 1e-3
    # a trained head takes the checkpointed path, which also gives the head's own gradient
    head.weight.requires_grad_(True)
    _KLWithStoredGradient.apply = staticmethod(lambda *a: pytest.fail("stored-gradient path used with a trained head"))
    try:
        hp = hp0.clone().requires_grad_(True)
        chunked_kl(hp, hr, head, head, chunk=5).sum().backward()
    finally:
        _KLWithStoredGradient.apply = orig
    assert head.weight.grad is not None and float(head.weight.grad.abs().max()) > 0
    slow_v = _checkpointed_kl(hp0, hr, head, head, 5)
    assert torch.allclose(slow_v, exact_v, atol=1e-6)


def test_kl_gradient_is_exactly_zero_where_the_policy_is_the_reference():
    """Autograd through two log-softmaxes leaves rounding noise at p = q, and Adam turns any non-zero gradient
    into a full-size step: a KL-defended run on a zero-variance reward used to move its adapter off the base."""
    from spillover.defenses.kl import chunked_kl

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=False).requires_grad_(False)
    hp = (torch.randn(20, 16) * 4).requires_grad_(True)
    chunked_kl(hp, hp.detach(), head, head, chunk=8).sum().backward()
    assert torch.count_nonzero(hp.grad) == 0


def test_selective_kl_acts_on_safe_rows_only(peft_model):
    (kl,) = defenses({"name": "kl", "only_safe": True})
    nudge_lora(peft_model)
    none_safe = DefenseBatch(peft_model, sft_inputs(), "sft", sources=["task", "task"])
    assert float(kl.loss_term(peft_model, none_safe)) == 0.0
    one_safe = DefenseBatch(peft_model, sft_inputs(), "sft", sources=["task", "safe"])
    both = DefenseBatch(peft_model, sft_inputs(), "sft")
    (full,) = defenses({"name": "kl"})
    per_row = token_kl(both.policy.logits(), both.reference.logits()).view(2, -1).mean(-1)
    assert float(kl.loss_term(peft_model, one_safe)) == pytest.approx(float(per_row[1]), rel=1e-5)
    assert float(full.loss_term(peft_model, both)) == pytest.approx(float(per_row.mean()), rel=1e-5)


def test_ldifs_has_a_gradient_on_lora_weights(peft_model):
    (ldifs,) = defenses({"name": "ldifs"})
    ldifs.setup(peft_model, None, None)
    nudge_lora(peft_model)
    batch = DefenseBatch(peft_model, grpo_inputs(), "grpo")
    policy_pass(peft_model, batch)
    term = ldifs.loss_term(peft_model, batch)
    assert float(term) > 0
    term.backward()
    assert lora_grad_norm(peft_model) > 0


def test_kl_and_ldifs_share_one_reference_pass_and_reuse_the_policy_pass(peft_model):
    kl, ldifs = defenses({"name": "kl"}, {"name": "ldifs"})
    ldifs.setup(peft_model, None, None)
    batch = DefenseBatch(peft_model, sft_inputs(), "sft")
    policy_pass(peft_model, batch)
    kl.loss_term(peft_model, batch)
    ldifs.loss_term(peft_model, batch)
    assert batch.forward_passes == {"policy": 0, "reference": 1}


def test_weight_zero_builds_no_defense():
    for name, cls in list_defenses().items():
        required = {k for k, f in cls.Params.model_fields.items() if f.is_required()}
        if required:  # those need inputs (a vector file...); weight 0 still drops them before they are read
            continue
        assert defenses({"name": name, "weight": 0}) == [], name


def test_init_adapter_reference_is_a_frozen_second_adapter(peft_model, tiny_model_dir, tmp_path):
    """Continuing a warm-up adapter: KL to the frozen warm-up copy is 0 at the start (KL to the base is not),
    the copy lives on the same model without gradients, and the trainable adapter keeps its flags."""
    from transformers import AutoModelForCausalLM

    from spillover.defenses._batch import REF_ADAPTER, add_reference_adapter
    from spillover.models import load_adapter

    nudge_lora(peft_model)
    peft_model.save_pretrained(tmp_path / "warmup")
    model = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "warmup", trainable=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    add_reference_adapter(model, str(tmp_path / "warmup"))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    assert any(f".{REF_ADAPTER}." in n for n, _ in model.named_parameters())
    (to_init,), (to_base,) = defenses({"name": "kl", "reference": "init-adapter"}), defenses({"name": "kl"})
    batch = DefenseBatch(model, sft_inputs(), "sft")
    policy_pass(model, batch)
    batch.reference_name = "init-adapter"
    assert float(to_init.loss_term(model, batch)) == pytest.approx(0.0, abs=1e-6)
    batch.reference_name = "base"
    assert float(to_base.loss_term(model, batch)) > 1e-4
    assert model.active_adapter == "default"


def test_init_adapter_reference_without_init_adapter_fails_before_training(peft_model, tiny_model_dir):
    from spillover.errors import SpilloverError
    from spillover.train import SFTConfig
    from spillover.train._defended import setup_defenses

    cfg = SFTConfig(model=str(tiny_model_dir), data="x.jsonl", defenses=[{"name": "ldifs", "reference": "init-adapter"}])
    with pytest.raises(SpilloverError, match="no init_adapter is set") as err:
        setup_defenses(cfg, peft_model, None, "sft")
    assert "reference: base" in str(err.value)
