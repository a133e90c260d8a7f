"""The loss defenses inside real SFT and GRPO runs on a tiny model: gradient-accumulation invariance with
KL, LDIFS reduces feature drift, each defense runs under GRPO, metrics and manifest records."""

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from spillover.train import SFTConfig, run_sft
from spillover.train._defended import DefendedTrainerMixin

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = [{"messages": [{"role": "user", "content": f"Question {w}?"}, {"role": "assistant", "content": f"Answer {w} now."}]}
        for w in ("one", "two", "three", "four", "five", "six", "seven", "eight")]


@pytest.fixture()
def data_file(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return p


def sft(tiny_model_dir, data_file, **kw):
    base = dict(model=str(tiny_model_dir), data=str(data_file), max_steps=2, batch_size=4, lr=3e-2, device="cpu")
    return SFTConfig(**{**base, **kw})


def adapter(result):
    return load_file(result.adapter_dir / "adapter_model.safetensors")


def metrics(result):
    return [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]


def test_kl_is_invariant_to_gradient_accumulation(tiny_model_dir, data_file, tmp_path):
    """Step 2 carries a non-zero KL gradient; batch 4 x 1 and 2 x 2 must give the same adapter."""
    kl = [{"name": "kl", "weight": 50.0}]
    a = run_sft(sft(tiny_model_dir, data_file, defenses=kl), tmp_path / "a")
    b = run_sft(sft(tiny_model_dir, data_file, batch_size=2, grad_accum=2, defenses=kl), tmp_path / "b")
    plain = run_sft(sft(tiny_model_dir, data_file), tmp_path / "plain")
    wa, wb, wp = adapter(a), adapter(b), adapter(plain)
    # float32 summation order differs between 4 x 1 and 2 x 2 and Adam amplifies it to ~1e-5; a KL term not
    # divided by the window moves the adapter by ~2e-2, and the KL term itself by ~3e-2 (measured)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)
    assert not all(torch.allclose(wa[k], wp[k], atol=1e-3) for k in wa)  # the KL term did act
    steps = [r for r in metrics(a) if "loss" in r]
    assert steps[0]["defense/kl/loss"] == pytest.approx(0.0, abs=1e-6) and steps[1]["defense/kl/loss"] > 0
    manifest = json.loads((a.run_dir / "manifest.json").read_text())
    assert manifest["defenses"]["kl"]["params"] == {"weight": 50.0, "only_safe": False, "reference": "base"}


def test_window_is_the_one_in_effect():
    """A short last window (transformers' current_gradient_accumulation_steps) divides the terms, not args'."""
    fake = SimpleNamespace(loss_is_scaled_for_ga=None, model_accepts_loss_kwargs=True, compute_loss_func=None,
                           current_gradient_accumulation_steps=1, args=SimpleNamespace(gradient_accumulation_steps=4))
    training = SimpleNamespace(training=True)
    assert DefendedTrainerMixin._ga_window(fake, training, num_items_in_batch=10) == 1
    fake.current_gradient_accumulation_steps = 4
    assert DefendedTrainerMixin._ga_window(fake, training, num_items_in_batch=10) == 4
    assert DefendedTrainerMixin._ga_window(fake, training, num_items_in_batch=None) == 1  # transformers divides itself


def test_ldifs_reduces_feature_drift(tiny_model_dir, data_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spillover.defenses import DefenseBatch
    from spillover.defenses.ldifs import feature_distance, feature_layers
    from spillover.models import load_adapter

    runs = {name: run_sft(sft(tiny_model_dir, data_file, max_steps=4, lr=3e-3, defenses=d), tmp_path / name)
            for name, d in (("plain", []), ("ldifs", [{"name": "ldifs", "weight": 20.0}]))}
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok(["Question one? Answer one now.", "Something else entirely here."], return_tensors="pt", padding=True)
    drift = {}
    for name, result in runs.items():
        model = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir), result.adapter_dir)
        batch = DefenseBatch(model, {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]}, "sft")
        layers = feature_layers(3, 5)
        with torch.no_grad():
            drift[name] = float(feature_distance([batch.policy.hidden(i) for i in layers],
                                                 [batch.reference.hidden(i) for i in layers], batch.attention_mask))
    assert 0 < drift["ldifs"] < 0.5 * drift["plain"]
    assert all("defense/ldifs/loss" in r for r in metrics(runs["ldifs"]) if "loss" in r)


# ---------------------------------------------------------------- rows marked by a defense reach the loss
@pytest.fixture()
def marking_defense():
    from spillover.defenses import SOURCE_COLUMN, Defense, register_defense
    from spillover.defenses._base import _DEFENSES

    class MarkHalf(Defense):
        def transform_data(self, examples):
            import dataclasses

            return [dataclasses.replace(ex, extra={**ex.extra, SOURCE_COLUMN: "safe"}) if i % 2 else ex
                    for i, ex in enumerate(examples)]

    register_defense("test-mark-half")(MarkHalf)
    yield
    _DEFENSES.pop("test-mark-half", None)


def test_marked_safe_rows_reach_selective_kl_in_sft(tiny_model_dir, data_file, tmp_path, marking_defense):
    result = run_sft(sft(tiny_model_dir, data_file, max_steps=2, batch_size=8,
                         defenses=["test-mark-half", {"name": "kl", "only_safe": True}]), tmp_path / "r")
    rows = [r for r in metrics(result) if "loss" in r]
    safe_tokens = [r["defense/kl/safe_tokens"] for r in rows]
    assert all(0 < n for n in safe_tokens)  # 4 of the 8 rows of each batch are safe
    assert rows[1]["defense/kl/loss"] > 0
