"""LDIFS memory path: the reference pass keeps only the hidden states a defense declared (plus the final
norm), with LDIFS's value and gradient unchanged, KL still served, and an undeclared request still correct."""

import pytest
import torch

from spillover.defenses import DefenseBatch, DefenseRef, TrainContext, build_defenses
from spillover.defenses._batch import Capture, keep_reference_hidden, reference_keys
from spillover.models import LoraSpec, apply_lora

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def deep_model_dir(tmp_path_factory, embedded_tokenizer):
    """8 layers: 9 hidden states, of which LDIFS (K = 5) compares 0, 2, 4, 6, 8."""
    from conftest import build_tiny_model

    return build_tiny_model(embedded_tokenizer, tmp_path_factory.mktemp("tiny-llama-8"), num_hidden_layers=8)


def make_model(model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), LoraSpec(r=4, alpha=8))
    torch.manual_seed(3)
    with torch.no_grad():  # a policy that differs from the reference
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.5 * torch.randn_like(p))
    return model


def sft_batch(model):
    torch.manual_seed(1)
    ids = torch.randint(5, 200, (2, 9))
    labels = ids.clone()
    labels[:, :4] = -100
    batch = DefenseBatch(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}, "sft")
    with Capture(model) as cap:  # the trainer's own pass
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    batch.attach_capture(cap)
    return batch


def build(*refs):
    return build_defenses([DefenseRef.model_validate(r) for r in refs], TrainContext(None, "tiny", "sft"))


def ldifs_value_and_grads(model, declare: bool):
    (ldifs,) = build({"name": "ldifs"})
    if declare:
        ldifs.setup(model, None, None)
    else:  # the pre-change path: every hidden state kept
        from spillover.defenses._batch import n_layers
        from spillover.defenses.ldifs import feature_layers

        ldifs.layer_ids = feature_layers(n_layers(model) + 1, ldifs.params.layers)
    model.zero_grad()
    batch = sft_batch(model)
    term = ldifs.loss_term(model, batch)
    term.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(term.detach()), grads, batch, ldifs.layer_ids


def test_reference_pass_keeps_only_declared_layers_and_ldifs_is_unchanged(deep_model_dir):
    full_value, full_grads, full_batch, layers = ldifs_value_and_grads(make_model(deep_model_dir), declare=False)
    assert reference_keys(full_batch.model) is None
    model = make_model(deep_model_dir)
    value, grads, batch, _ = ldifs_value_and_grads(model, declare=True)
    assert layers == [0, 2, 4, 6, 8] and reference_keys(model) == frozenset(layers) | {"norm"}
    assert set(batch.reference_captures["base"].calls[0]) == set(layers) | {"norm"}  # K + 1 tensors
    assert len(full_batch.reference_captures["base"].calls[0]) == 10  # before: all 9 hidden states + norm
    assert value == full_value
    assert value > 0 and set(grads) == set(full_grads) and any("lora" in n for n in grads)
    for n, g in grads.items():
        assert torch.equal(g, full_grads[n]), n
    assert batch.forward_passes == {"policy": 0, "reference": 1}


def test_kl_is_served_and_an_undeclared_layer_falls_back_to_a_full_pass(deep_model_dir):
    model = make_model(deep_model_dir)
    kl, ldifs = build({"name": "kl"}, {"name": "ldifs"})
    ldifs.setup(model, None, None)
    batch = sft_batch(model)
    kl_declared = float(kl.loss_term(model, batch))
    ldifs.loss_term(model, batch)
    assert batch.forward_passes["reference"] == 1
    undeclared = 3
    got = batch.reference.hidden(undeclared)
    assert batch.forward_passes["reference"] == 2  # one more pass, keeping everything
    with torch.no_grad(), model.disable_adapter(), Capture(model) as cap:
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert torch.allclose(got, cap.get(undeclared), atol=1e-6)
    assert torch.allclose(batch.reference.hidden(ldifs.layer_ids[1]), cap.get(ldifs.layer_ids[1]), atol=1e-6)
    fresh = make_model(deep_model_dir)  # KL on a model without declarations: same value
    assert float(kl.loss_term(fresh, sft_batch(fresh))) == pytest.approx(kl_declared, rel=1e-6)


def test_declarations_add_up(deep_model_dir):
    model = make_model(deep_model_dir)
    keep_reference_hidden(model, [1, 3])
    keep_reference_hidden(model, [3, 5])
    assert reference_keys(model) == frozenset({1, 3, 5, "norm"})


def test_kl_declares_that_it_reads_only_the_final_norm(deep_model_dir):
    (kl,) = build({"name": "kl"})
    undeclared = make_model(deep_model_dir)
    before = float(kl.loss_term(undeclared, sft_batch(undeclared)))
    model = make_model(deep_model_dir)
    kl.setup(model, None, None)
    batch = sft_batch(model)
    assert reference_keys(model) == frozenset({"norm"})
    assert float(kl.loss_term(model, batch)) == before and before > 0
    assert set(batch.reference_captures["base"].calls[0]) == {"norm"}  # was: all 9 hidden states + norm
