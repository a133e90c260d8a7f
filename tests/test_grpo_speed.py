"""Merged-adapter GRPO rollouts (``merge_rollout_adapter``) on a tiny model: the same completions as the
unmerged LoRA path for a fixed seed, every weight bit-identical afterwards, the frozen init-adapter
reference never merged, and a kl-defended run giving the same losses, gradients and adapter."""

import json

import pytest
import torch
from transformers import set_seed

from _grpo_common import tiny_grpo_cfg as cfg
from _grpo_common import warm_adapter, write_prompts
from spillover.defenses._batch import REF_ADAPTER, add_reference_adapter
from spillover.train.grpo import build_grpo_trainer, build_rewards, merge_rollouts, merged_adapter, run_grpo
from spillover.train.sft import prepare_policy

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = [{"role": "user", "content": "Is this a good question?"}]


@pytest.fixture()
def prompts_file(tmp_path):
    return write_prompts(tmp_path)


def randomize_lora_b(model, seed: int, std: float = 0.1) -> None:
    """A trained-looking adapter: lora_B != 0 (a fresh adapter's B is zero and merges to nothing)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def lora_modules(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def generate(trainer, merge: bool) -> list[list[int]]:
    trainer.merge_rollout_adapter = merge
    set_seed(0)
    return trainer._generate([PROMPT] * 4)[1]


@pytest.mark.parametrize("with_reference", [False, True], ids=["one-adapter", "frozen-init-reference"])
def test_merged_rollouts_equal_unmerged_and_restore_every_weight(tiny_model_dir, prompts_file, tmp_path,
                                                                  with_reference):
    c = cfg(tiny_model_dir, prompts_file)
    model, tok, _ = prepare_policy(c)
    if with_reference:  # the kl/ldifs init-adapter reference: a second, inactive adapter on the same model
        ref, _, _ = prepare_policy(c)
        randomize_lora_b(ref, seed=1, std=0.5)
        ref.save_pretrained(tmp_path / "ref")
        (tmp_path / "ref" / "spillover_adapter.json").write_text(json.dumps({"base_model": str(tiny_model_dir)}))
        add_reference_adapter(model, str(tmp_path / "ref"))
    randomize_lora_b(model, seed=0)
    trainer = build_grpo_trainer(c, model, tok, [{"prompt": PROMPT}], build_rewards(c), tmp_path / "t")
    trainer.model.train()  # as during training
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    storages = {n: p.data_ptr() for n, p in model.named_parameters()}

    lora_calls = []
    hooks = [m.lora_A["default"].register_forward_hook(lambda *a: lora_calls.append(1)) for m in lora_modules(model)]
    unmerged = generate(trainer, merge=False)
    calls_unmerged, lora_calls[:] = len(lora_calls), []
    merged = generate(trainer, merge=True)
    calls_merged = len(lora_calls)
    for h in hooks:
        h.remove()
    with model.disable_adapter():
        trainer.merge_rollout_adapter = False
        set_seed(0)
        without_adapter = trainer._generate([PROMPT] * 4)[1]

    assert calls_unmerged > 0 and calls_merged == 0  # the merged path really skipped the LoRA matmuls
    assert without_adapter != unmerged  # the adapter changes the samples, so equality below means something
    assert merged == unmerged
    for name, p in model.named_parameters():  # base, trainable adapter and frozen reference: bit-identical
        assert torch.equal(p.detach(), before[name]), name
        assert p.data_ptr() == storages[name], name
    assert all(m.merged_adapters == [] for m in lora_modules(model))
    if with_reference:
        assert all(REF_ADAPTER in m.lora_A for m in lora_modules(model))


def test_merge_skips_disabled_adapters_and_restores_on_error(tiny_model_dir, prompts_file):
    model, _, _ = prepare_policy(cfg(tiny_model_dir, prompts_file))
    randomize_lora_b(model, seed=0)
    weights = {n: p.data_ptr() for n, p in model.named_parameters()}
    with model.disable_adapter(), merged_adapter(model):
        assert not any(m.merged for m in lora_modules(model))
    with pytest.raises(RuntimeError, match="boom"), merged_adapter(model):
        assert all(m.merged for m in lora_modules(model))
        assert any(p.data_ptr() != weights[n] for n, p in model.named_parameters())
        raise RuntimeError("boom")
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == weights
    assert not any(m.merged for m in lora_modules(model))


def test_auto_merges_on_cpu_only():
    assert merge_rollouts("auto", "cpu") and merge_rollouts("on", "cuda")
    assert not merge_rollouts("auto", "cuda") and not merge_rollouts("off", "cpu")


def test_kl_defended_step_is_unchanged_by_merged_rollouts(tiny_model_dir, prompts_file, tmp_path):
    """Two steps from a warm-up adapter with the kl defense: same completions, losses,
    gradient norms, KL terms and final adapter whether rollouts are merged or not; the manifest says which."""
    from safetensors.torch import load_file

    warm = warm_adapter(tiny_model_dir, tmp_path)  # KL and its gradient non-zero from step 1
    runs = {}
    for setting in ("off", "on"):
        c = cfg(tiny_model_dir, prompts_file, merge_rollout_adapter=setting, defenses=[{"name": "kl", "weight": 1.0}],
                init_adapter=warm)
        runs[setting] = run_grpo(c, tmp_path / setting).run_dir
    rows = {s: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for s, d in runs.items()}
    steps = {s: [r for r in rs if "loss" in r] for s, rs in rows.items()}
    assert len(steps["on"]) == len(steps["off"]) == 2
    assert steps["on"][0]["defense/kl/loss"] > 0  # the policy starts at the warm-up adapter, not the reference
    for on, off in zip(steps["on"], steps["off"], strict=True):
        for key in ("loss", "grad_norm", "defense/kl/loss", "reward", "completions/mean_length"):
            assert on[key] == pytest.approx(off[key], rel=1e-6, abs=1e-9), key
    completions = {s: (d / "completions.jsonl").read_text() for s, d in runs.items()}
    assert completions["on"] == completions["off"]
    adapters = {s: load_file(d / "adapter" / "adapter_model.safetensors") for s, d in runs.items()}
    for name, w in adapters["on"].items():
        torch.testing.assert_close(w, adapters["off"][name], rtol=1e-6, atol=1e-8)
    for setting, merged in (("on", True), ("off", False)):
        manifest = json.loads((runs[setting] / "manifest.json").read_text())
        assert manifest["rollouts"] == {"merged_adapter": merged, "merge_rollout_adapter": setting}
