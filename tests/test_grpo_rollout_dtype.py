"""bf16 GRPO rollouts (``rollout_dtype``) on a tiny model: generation really runs on bf16 weights, the exact
weights come back afterwards, the training step given the same completions is bit-identical to one with
model-dtype rollouts (loss, KL defense and update stay fp32), and the setting's place in configs and hashes."""

import json

import pytest
import torch
from transformers import set_seed

from _grpo_common import grpo_train_hash, grpo_train_hash_before, warm_adapter, write_prompts
from _grpo_common import tiny_grpo_cfg as cfg
from spillover.config import dump_yaml, load_config
from spillover.errors import SpilloverError
from spillover.train._grpo_config import OMITTED_AT_DEFAULT, GRPOConfig
from spillover.train.grpo import _GRPOTrainer, build_grpo_trainer, build_rewards, cast_weights, run_grpo
from spillover.train.sft import prepare_policy

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = [{"role": "user", "content": "Is this a good question?"}]


@pytest.fixture()
def prompts_file(tmp_path):
    return write_prompts(tmp_path)


# ---------------------------------------------------------------- config
def test_rollout_dtype_setting_validates_and_names_its_line(tmp_path):
    assert GRPOConfig(prompts="x", rewards=["rhetoric-lexicon"]).rollout_dtype == "model"
    assert GRPOConfig(prompts="x", rewards=["rhetoric-lexicon"], rollout_dtype="bfloat16").rollout_dtype == "bfloat16"
    p = tmp_path / "grpo.yaml"
    p.write_text("prompts: x\nrewards: [rhetoric-lexicon]\nrollout_dtype: float16\n")
    with pytest.raises(SpilloverError) as e:
        load_config(GRPOConfig, p)
    assert "grpo.yaml:3" in e.value.what and "rollout_dtype" in e.value.what and "bfloat16" in e.value.what


def test_default_rollout_dtype_is_left_out_of_config_dumps():
    """config.yaml of a run that predates the setting equals today's dump (so --resume accepts it); a
    non-default value is written and round-trips."""
    plain = GRPOConfig(prompts="x", rewards=["rhetoric-lexicon"])
    assert "rollout_dtype" not in dump_yaml(plain) and "rollout_dtype" not in plain.model_dump()
    bf16 = plain.model_copy(update={"rollout_dtype": "bfloat16"})
    assert "rollout_dtype: bfloat16" in dump_yaml(bf16)
    import yaml

    assert GRPOConfig(**yaml.safe_load(dump_yaml(bf16))) == bf16
    assert GRPOConfig(**yaml.safe_load(dump_yaml(plain))) == plain


def test_rollout_dtype_is_in_the_train_stage_hash_and_old_hashes_hold():
    own = grpo_train_hash
    before = grpo_train_hash_before(OMITTED_AT_DEFAULT)  # rollout_dtype and every setting added after it
    assert own() == own(rollout_dtype="model") == before
    assert own(rollout_dtype="bfloat16") != before  # it changes the samples, so it must redo training
    from spillover.experiment.spec import ExperimentConfig
    from spillover.experiment.stages import train_own

    sft = ExperimentConfig.model_validate({"arms": [{"name": "s", "train": {"method": "sft", "data": "bundled:insecure_code"}}]})
    assert train_own(sft, sft.arm("s"), 0)  # SFT recipes (no such key) hash as before too


# ---------------------------------------------------------------- weights during and after generation
def lora_modules(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged"])
def test_bf16_rollouts_run_on_bf16_weights_and_restore_the_exact_weights(tiny_model_dir, prompts_file, tmp_path,
                                                                         merge, monkeypatch, caplog):
    import spillover.train.grpo as grpo

    monkeypatch.setattr(grpo, "cpu_has_bf16_kernels", lambda: not merge)  # the warning, one way and the other
    c = cfg(tiny_model_dir, prompts_file, rollout_dtype="bfloat16")
    model, tok, _ = prepare_policy(c)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter (B != 0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    trainer = build_grpo_trainer(c, model, tok, [{"prompt": PROMPT}], build_rewards(c), tmp_path / "t")
    assert trainer.rollout_dtype is torch.bfloat16
    warned = [r.getMessage() for r in caplog.records if "without bf16 kernels" in r.getMessage()]
    assert len(warned) == (1 if merge else 0)
    trainer.merge_rollout_adapter = merge
    trainer.model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    storages = {n: p.data_ptr() for n, p in model.named_parameters()}
    buffers = {n: b.dtype for n, b in model.named_buffers()}

    seen = []  # (weight dtype, input dtype) of every adapted linear's base layer during generation
    hooks = [m.get_base_layer().register_forward_hook(
        lambda mod, args, out: seen.append((mod.weight.dtype, args[0].dtype, out.dtype))) for m in lora_modules(model)]
    head = []
    hooks.append(model.get_output_embeddings().register_forward_hook(lambda mod, args, out: head.append(mod.weight.dtype)))
    set_seed(0)
    try:
        completions = trainer._generate([PROMPT] * 4)[1]
    finally:
        for h in hooks:
            h.remove()

    assert len(completions) == 4 and all(completions)
    assert seen and all(s == (torch.bfloat16,) * 3 for s in seen)
    assert head and set(head) == {torch.bfloat16}  # the tied embedding / LM head too
    for name, p in model.named_parameters():
        assert p.dtype == before[name].dtype == torch.float32, name
        assert torch.equal(p.detach(), before[name]), name
        assert p.data_ptr() == storages[name], name
    assert {n: b.dtype for n, b in model.named_buffers()} == buffers
    assert all(m.merged_adapters == [] for m in lora_modules(model))


def test_cast_weights_restores_on_error_and_none_casts_nothing(tiny_model_dir, prompts_file):
    model, _, _ = prepare_policy(cfg(tiny_model_dir, prompts_file))
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    with cast_weights(model, None):
        assert {n: p.data_ptr() for n, p in model.named_parameters()} == ptrs
    with pytest.raises(RuntimeError, match="boom"), cast_weights(model, torch.bfloat16):
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        raise RuntimeError("boom")
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == ptrs
    assert {p.dtype for p in model.parameters()} == {torch.float32}


# ---------------------------------------------------------------- a full step
def test_training_step_is_bit_identical_to_model_dtype_rollouts_given_the_same_completions(
        tiny_model_dir, prompts_file, tmp_path, monkeypatch):
    """Two kl-defended steps with bf16 rollouts, then the same run with model-dtype (fp32) rollouts replaying
    the bf16 run's completions: same losses, gradient norms, KL terms and a bit-identical adapter. So only the
    sampling saw bf16 weights; the manifest records the rollout dtype."""
    from safetensors.torch import load_file

    original = _GRPOTrainer._generate_single_turn
    recorded, replay, weight_dtypes = [], [], {"bfloat16": set(), "model": set()}

    def generate(self, *args, **kwargs):
        setting = "bfloat16" if self.rollout_dtype is not None else "model"
        weight_dtypes[setting] |= {p.dtype for p in self.accelerator.unwrap_model(self.model).parameters()}
        if setting == "model":  # the same completions, and the random state sampling left behind (TRL
            out, rng = replay.pop(0)  # shuffles the generation batch with it)
            torch.set_rng_state(rng)
            return out
        out = original(self, *args, **kwargs)
        recorded.append((out, torch.get_rng_state()))
        return out

    monkeypatch.setattr(_GRPOTrainer, "_generate_single_turn", generate)
    warm = warm_adapter(tiny_model_dir, tmp_path)  # KL and its gradient non-zero from step 1
    runs = {}
    for setting in ("bfloat16", "model"):
        replay[:] = list(recorded)
        c = cfg(tiny_model_dir, prompts_file, rollout_dtype=setting, defenses=[{"name": "kl", "weight": 1.0}],
                init_adapter=warm)
        runs[setting] = run_grpo(c, tmp_path / setting).run_dir
    assert len(recorded) == 2 and not replay
    assert weight_dtypes == {"bfloat16": {torch.bfloat16}, "model": {torch.float32}}

    rows = {s: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for s, d in runs.items()}
    steps = {s: [r for r in rs if "loss" in r] for s, rs in rows.items()}
    assert len(steps["bfloat16"]) == len(steps["model"]) == 2
    assert steps["bfloat16"][0]["defense/kl/loss"] > 0  # the policy starts at the warm-up adapter, not the base
    for a, b in zip(steps["bfloat16"], steps["model"], strict=True):
        for key in ("loss", "grad_norm", "defense/kl/loss", "reward", "completions/mean_length"):
            assert a[key] == b[key], key
    adapters = {s: load_file(d / "adapter" / "adapter_model.safetensors") for s, d in runs.items()}
    assert adapters["bfloat16"].keys() == adapters["model"].keys()
    for name, w in adapters["bfloat16"].items():
        assert w.dtype == torch.float32 and torch.equal(w, adapters["model"][name]), name
    assert any(w.abs().sum() > 0 for n, w in adapters["model"].items() if "lora_B" in n)  # training moved it
    manifests = {s: json.loads((d / "manifest.json").read_text()) for s, d in runs.items()}
    assert manifests["bfloat16"]["rollout_dtype"] == "bfloat16" and manifests["model"]["rollout_dtype"] == "float32"
    assert "rollout_dtype: bfloat16" in (runs["bfloat16"] / "config.yaml").read_text()
    assert "rollout_dtype" not in (runs["model"] / "config.yaml").read_text()
