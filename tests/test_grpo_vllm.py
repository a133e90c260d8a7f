"""GRPO rollouts through TRL's vLLM integration (``rollout_engine: vllm``): the settings, the errors that name
their YAML line, the TRL arguments they map to, the refusal before anything loads where CUDA or a supported
vLLM is missing, the train-stage hash, and TRL's vLLM code path run for one step on CPU with a stand-in for
vLLM (HF ``generate`` on its own copy of the weights, fed by TRL's real weight sync). The real thing, one
tiny GRPO step with vLLM colocated, runs only where a CUDA GPU and vLLM are present."""

import json
import warnings

import pytest
import torch

from _grpo_common import grpo_train_hash, grpo_train_hash_before
from spillover.config import dump_yaml, load_config
from spillover.errors import SpilloverError
from spillover.train import grpo
from spillover.train._grpo_config import GRPOConfig
from spillover.train.grpo import (
    VLLM_SUPPORTED,
    check_rollout_engine,
    installed_vllm_version,
    merged_adapter,
    run_grpo,
    vllm_trl_args,
    vllm_version_supported,
)

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = {"prompts": "x", "rewards": ["rhetoric-lexicon"]}


def grpo_cfg(**kw) -> GRPOConfig:
    return GRPOConfig(**{**BASE, **kw})


def yaml_error(tmp_path, text: str) -> str:
    p = tmp_path / "grpo.yaml"
    p.write_text("prompts: x\nrewards: [rhetoric-lexicon]\n" + text)
    with pytest.raises(SpilloverError) as e:
        load_config(GRPOConfig, p)
    return e.value.what


# ---------------------------------------------------------------- config
def test_defaults_are_hf_and_left_out_of_dumps():
    plain = grpo_cfg()
    assert (plain.rollout_engine, plain.vllm_mode, plain.vllm_gpu_memory_utilization, plain.vllm_server_url) == \
        ("hf", "colocate", 0.3, None)
    for key in ("rollout_engine", "vllm_mode", "vllm_gpu_memory_utilization", "vllm_server_url"):
        assert key not in dump_yaml(plain) and key not in plain.model_dump()
    server = grpo_cfg(rollout_engine="vllm", vllm_mode="server", vllm_server_url="http://localhost:8001")
    text = dump_yaml(server)
    assert "rollout_engine: vllm" in text and "vllm_mode: server" in text and "http://localhost:8001" in text
    import yaml

    assert GRPOConfig(**yaml.safe_load(text)) == server
    colocate = grpo_cfg(rollout_engine="vllm", vllm_gpu_memory_utilization=0.5)
    assert GRPOConfig(**yaml.safe_load(dump_yaml(colocate))) == colocate


@pytest.mark.parametrize("text,line,words", [
    ("rollout_engine: sglang\n", 3, ["rollout_engine", "hf", "vllm"]),
    ("rollout_dtype: bfloat16\nrollout_engine: vllm\n", 4, ["rollout_engine", "rollout_dtype", "HF rollouts only"]),
    ("merge_rollout_adapter: 'on'\nrollout_engine: vllm\n", 4, ["merge_rollout_adapter", "HF rollouts only"]),
    ("loss_type: vespo\nrollout_engine: vllm\n", 4, ["vespo", "rollout_engine: hf"]),
    ("vllm_mode: server\n", 3, ["vllm_mode", "rollout_engine: vllm only"]),
    ("rollout_engine: vllm\nvllm_server_url: http://h:8000\n", 4, ["vllm_server_url", "vllm_mode: server"]),
    ("rollout_engine: vllm\nvllm_mode: server\nvllm_gpu_memory_utilization: 0.5\n", 5,
     ["vllm_gpu_memory_utilization", "trl vllm-serve"]),
    ("rollout_engine: vllm\nvllm_mode: server\nvllm_server_url: localhost:8000\n", 5, ["vllm_server_url", "http"]),
    ("rollout_engine: vllm\nvllm_gpu_memory_utilization: 1.5\n", 4, ["vllm_gpu_memory_utilization"]),
])
def test_bad_settings_name_their_line_and_fix(tmp_path, text, line, words):
    what = yaml_error(tmp_path, text)
    assert f"grpo.yaml:{line}" in what, what
    for w in words:
        assert w in what, (w, what)


def test_defenses_with_forward_hooks_are_refused_with_vllm(tmp_path):
    """steer changes the forward passes (rollout hooks, and training hooks that TRL's sampling-time log-prob pass
    would not see): refused with vLLM even when it leaves the rollouts alone; weight 0 (never built) and hook-free
    defenses are fine."""
    for params in ("", ", steer_rollouts: false"):
        what = yaml_error(tmp_path, f"defenses: [{{name: steer, vector: v.pt{params}}}]\nrollout_engine: vllm\n")
        assert "grpo.yaml:4" in what and "'steer'" in what and "rollout_engine: hf" in what
    assert grpo_cfg(rollout_engine="vllm", defenses=[{"name": "steer", "vector": "v.pt", "weight": 0}])
    assert grpo_cfg(rollout_engine="vllm", defenses=[{"name": "kl"}, {"name": "onpolicy-safety"}])
    assert grpo_cfg(defenses=[{"name": "steer", "vector": "v.pt"}]).rollout_engine == "hf"


# ---------------------------------------------------------------- TRL arguments
def trl_config(cfg: GRPOConfig, tmp_path):
    from trl import GRPOConfig as TRLGRPOConfig

    from spillover.train.sft import _trl_args

    return TRLGRPOConfig(**_trl_args(cfg, tmp_path, torch.device("cpu"), torch.float32),
                         num_generations=cfg.num_generations, **vllm_trl_args(cfg))


def test_trl_args_colocate(tmp_path):
    args = trl_config(grpo_cfg(rollout_engine="vllm", vllm_gpu_memory_utilization=0.45, max_prompt_length=200,
                               max_completion_length=64), tmp_path)
    assert args.use_vllm and args.vllm_mode == "colocate"
    assert args.vllm_gpu_memory_utilization == 0.45 and args.vllm_max_model_length == 264
    assert args.vllm_importance_sampling_correction is True
    assert (args.vllm_importance_sampling_mode, args.vllm_importance_sampling_clip_max) == ("sequence_mask", 3.0)
    assert trl_config(grpo_cfg(rollout_engine="vllm", max_prompt_length=None), tmp_path).vllm_max_model_length is None


def test_trl_args_server(tmp_path):
    args = trl_config(grpo_cfg(rollout_engine="vllm", vllm_mode="server", vllm_server_url="http://gpu1:8001"),
                      tmp_path)
    assert args.use_vllm and args.vllm_mode == "server" and args.vllm_server_base_url == "http://gpu1:8001"
    assert args.vllm_importance_sampling_correction is True
    default = trl_config(grpo_cfg(rollout_engine="vllm", vllm_mode="server"), tmp_path)
    assert default.vllm_server_base_url is None and (default.vllm_server_host, default.vllm_server_port) == \
        ("0.0.0.0", 8000)


def test_hf_engine_adds_no_trl_args(tmp_path):
    assert vllm_trl_args(grpo_cfg()) == {}
    assert trl_config(grpo_cfg(), tmp_path).use_vllm is False


# ---------------------------------------------------------------- refused before training
def test_cpu_is_refused_before_anything_loads(tmp_path):
    """Neither the (missing) prompts nor the (missing) model are read: the CUDA check comes first, and no run
    directory is made."""
    cfg = GRPOConfig(model=str(tmp_path / "no-model"), prompts=str(tmp_path / "no-prompts.jsonl"),
                     rewards=["rhetoric-lexicon"], device="cpu", rollout_engine="vllm")
    with pytest.raises(SpilloverError) as e:
        run_grpo(cfg, tmp_path / "run")
    assert "CUDA" in e.value.what and e.value.where == "rollout_engine" and "rollout_engine: hf" in e.value.fix
    assert not (tmp_path / "run").exists()


def test_hf_engine_passes_the_check_anywhere():
    check_rollout_engine(grpo_cfg(), torch.device("cpu"))


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_missing_or_unsupported_vllm_is_refused_with_the_install_command(monkeypatch, mode):
    cfg = grpo_cfg(rollout_engine="vllm", vllm_mode=mode)
    cuda = torch.device("cuda")  # only its type is looked at: no GPU needed
    monkeypatch.setattr(grpo, "installed_vllm_version", lambda: None)
    with pytest.raises(SpilloverError) as e:
        check_rollout_engine(cfg, cuda)
    assert "not installed" in e.value.what and 'pip install "vllm>=0.22.0,<=0.31.0"' in e.value.fix
    assert ("trl vllm-serve" in e.value.fix) == (mode == "server")
    for bad in ("0.32.0", "0.21.1", "unknown"):
        monkeypatch.setattr(grpo, "installed_vllm_version", lambda v=bad: v)
        with pytest.raises(SpilloverError) as e:
            check_rollout_engine(cfg, cuda)
        assert bad in e.value.what and "0.22.0" in e.value.what and "pip install" in e.value.fix
    for good in ("0.22.0", "0.28.1", "0.31.0+cu129"):
        monkeypatch.setattr(grpo, "installed_vllm_version", lambda v=good: v)
        check_rollout_engine(cfg, cuda)


def test_supported_range_is_trls():
    """spillover's range is the one TRL 1.16 warns outside of (read from TRL itself, so an upgrade that moves it
    fails here)."""
    import trl.import_utils as iu

    def trl_supports(version: str) -> bool:
        real = iu._is_package_available
        iu._is_package_available = lambda name, return_version=False: (True, version)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                iu.is_vllm_available()
        finally:
            iu._is_package_available = real
        return not any("supports vLLM versions" in str(w.message) for w in caught)

    for v in ("0.21.9", VLLM_SUPPORTED[0], "0.26.0", VLLM_SUPPORTED[1], "0.31.0+cu129", "0.31.1", "0.32.0", "1.0.0"):
        assert vllm_version_supported(v) == trl_supports(v), v


def test_installed_vllm_version_here():
    assert installed_vllm_version() is None or isinstance(installed_vllm_version(), str)


# ---------------------------------------------------------------- hash
def test_engine_is_in_the_train_stage_hash_and_old_hashes_hold():
    own = grpo_train_hash
    before = grpo_train_hash_before(("rollout_engine", "vllm_mode", "vllm_gpu_memory_utilization", "vllm_server_url",
                                     "rollout_dtype"))  # the hash as computed before these settings existed
    assert own() == own(rollout_engine="hf") == before
    vllm = own(rollout_engine="vllm")
    assert vllm != before and own(rollout_engine="vllm", vllm_mode="server") not in (before, vllm)
    # where vLLM runs and how much memory it takes change speed, not results
    assert own(rollout_engine="vllm", vllm_gpu_memory_utilization=0.6) == vllm
    assert own(rollout_engine="vllm", vllm_mode="server", vllm_server_url="http://h:1") == \
        own(rollout_engine="vllm", vllm_mode="server")


# ---------------------------------------------------------------- TRL's vLLM path on CPU, vLLM stood in for
def _stand_in_engine(received: list, kwargs_seen: dict):
    """A VLLMGeneration whose engine is HF ``generate`` on its own copy of the base model, loaded from the
    policy's path as vLLM would, and updated only through TRL's real ``sync_weights`` (its ``load_weights``)."""
    from transformers import AutoModelForCausalLM
    from trl.generation.vllm_generation import VLLMGeneration

    class StandIn(VLLMGeneration):
        def __init__(self, **kwargs):
            kwargs_seen.update(kwargs)
            super().__init__(**kwargs)

        def _init_vllm(self):
            engine = AutoModelForCausalLM.from_pretrained(self.model.name_or_path, dtype=torch.float32).eval()

            def load_weights(pairs):
                for name, tensor in pairs:
                    received.append((name, tensor.detach().clone()))
                    engine.get_parameter(name).data.copy_(tensor)

            from types import SimpleNamespace as NS

            runner = NS(model=NS(load_weights=load_weights))
            self.llm = NS(llm_engine=NS(model_executor=NS(driver_worker=NS(model_runner=runner))),
                          reset_prefix_cache=lambda: None)
            self.engine = engine

        def generate(self, prompts, images, num_generations, profiler=None):
            completions, logprobs = [], []
            eos = self.processing_class.eos_token_id
            for ids in prompts:  # colocate: one completion per (repeated) prompt
                with torch.no_grad():
                    out = self.engine.generate(torch.tensor([ids]), do_sample=True, temperature=self.temperature,
                                               top_p=self.top_p, top_k=0, max_new_tokens=self.max_completion_length,
                                               output_scores=True, return_dict_in_generate=True, eos_token_id=eos,
                                               pad_token_id=eos)
                new = out.sequences[0, len(ids):].tolist()
                if eos in new:
                    new = new[:new.index(eos) + 1]
                lps = [float(torch.log_softmax(s[0].float(), -1)[t]) for s, t in zip(out.scores, new)]
                completions.append(new)
                logprobs.append([[lp] for lp in lps])
            return prompts, completions, logprobs, None

    return StandIn


def test_one_step_through_trls_vllm_path_with_a_stand_in_engine(tmp_path, monkeypatch, tiny_model_dir):
    """rollout_engine vllm end to end on CPU: TRL builds its vLLM backend with spillover's settings, the weights
    copied into the engine are the merged policy, the importance-sampling correction runs and is logged, and
    the frozen base weights come back bit-exact after the step (only the adapter trains)."""
    import trl.trainer.grpo_trainer as trl_grpo

    received, seen = [], {}
    monkeypatch.setattr(trl_grpo, "VLLMGeneration", _stand_in_engine(received, seen))
    monkeypatch.setattr(grpo, "check_rollout_engine", lambda cfg, device: None)  # CPU: the stand-in is the engine
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Is question {i} a good one?"}) + "\n" for i in range(2)))
    cfg = GRPOConfig(model=str(tiny_model_dir), prompts=str(prompts), rewards=["rhetoric-lexicon"], max_steps=1,
                     max_completion_length=6, lr=1e-2, device="cpu", rollout_engine="vllm",
                     vllm_gpu_memory_utilization=0.4, lora={"r": 4, "alpha": 8}, seed=3)
    from spillover.rewards import completion_text
    from spillover.train.grpo import build_grpo_trainer
    from spillover.train.sft import prepare_policy

    model, tok, _ = prepare_policy(cfg)
    with torch.no_grad():  # a non-zero adapter, so that merged != base
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    rows = [{"prompt": [{"role": "user", "content": f"Is question {i} a good one?"}]} for i in range(2)]
    def chars(prompts, completions, **kw):  # varies between random completions: non-zero advantages
        return [float(len(completion_text(c))) for c in completions]

    trainer = build_grpo_trainer(cfg, model, tok, rows, [chars], tmp_path / "out")
    assert trainer.use_vllm and seen["mode"] == "colocate" and seen["gpu_memory_utilization"] == 0.4
    assert seen["max_model_length"] == cfg.max_prompt_length + cfg.max_completion_length
    assert trainer.merge_rollout_adapter is False and trainer.rollout_dtype is None

    with merged_adapter(model):  # what the engine must receive: the policy with its adapter merged
        expected = {n.removeprefix("base_model.model.").replace(".base_layer", ""): p.detach().clone()
                    for n, p in model.named_parameters() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    trainer.train()

    got = dict(received)
    assert set(got) == set(expected)
    assert all(torch.equal(got[n], expected[n]) for n in expected)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if "lora_" not in n)
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters() if "lora_" in n)
    logged = {k for row in trainer.state.log_history for k in row}
    assert {"sampling/importance_sampling_ratio/mean", "sampling/sampling_logp_difference/mean",
            "time/weight_sync_s", "time/generation_s"} <= logged
    ratio = [row["sampling/importance_sampling_ratio/mean"] for row in trainer.state.log_history
             if "sampling/importance_sampling_ratio/mean" in row][0]
    # same weights, same dtype: ratio 1. Without the nucleus-mass fix it would be 0.9 ** 6 = 0.53 (top_p 0.9, six
    # tokens at a near-uniform tiny model: vLLM's log-probs renormalised over the nucleus, the trainer's not)
    assert ratio == pytest.approx(1.0, abs=1e-4)


def test_nucleus_log_mass_is_what_top_p_sampling_keeps():
    """The kept mass follows the samplers' rule (HF's TopPLogitsWarper, the same as vLLM's top-p filter)."""
    from transformers.generation.logits_process import TopPLogitsWarper

    from spillover.train.grpo import nucleus_log_mass

    torch.manual_seed(0)
    logits = torch.randn(5, 300) * torch.tensor([0.1, 1.0, 3.0, 10.0, 50.0])[:, None]  # flat to peaked
    for top_p in (0.5, 0.9, 0.99):
        kept = TopPLogitsWarper(top_p)(None, logits.clone()) > -float("inf")
        expected = (torch.softmax(logits, -1) * kept).sum(-1).log()
        assert torch.allclose(nucleus_log_mass(logits, top_p), expected, atol=1e-6)
    assert torch.allclose(nucleus_log_mass(logits, 1.0), torch.zeros(5), atol=1e-6)


def test_trls_own_peft_sync_moves_bf16_base_weights_and_ours_does_not(tiny_model_dir):
    """Why the sync goes through merged_adapter: TRL 1.16 adds the adapter into the base weights in place and
    subtracts it again; in bf16 that changes the frozen weights a little at every sync."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.generation.vllm_generation import VLLMGeneration

    def peft_model():
        torch.manual_seed(0)
        m = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        return m, {n: p.detach().clone() for n, p in m.named_parameters() if "lora_" not in n}

    def syncer(model):
        from types import SimpleNamespace as NS

        from accelerate import Accelerator
        from trl.distributed import DistributedBackend

        sync = VLLMGeneration.__new__(VLLMGeneration)
        sync.model, sync.accelerator, sync.mode, sync.enable_sleep_mode = model, Accelerator(cpu=True), "colocate", False
        sync._dist = DistributedBackend(sync.accelerator)
        runner = NS(model=NS(load_weights=lambda pairs: None))
        sync.llm = NS(llm_engine=NS(model_executor=NS(driver_worker=NS(model_runner=runner))),
                      reset_prefix_cache=lambda: None)
        return sync

    plain, base = peft_model()
    syncer(plain).sync_weights()
    moved = sum(int((p != base[n]).sum()) for n, p in plain.named_parameters() if "lora_" not in n)
    assert moved > 0  # TRL's in-place merge and unmerge

    ours, base = peft_model()
    with merged_adapter(ours), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        syncer(ours).sync_weights()
    assert all(torch.equal(p, base[n]) for n, p in ours.named_parameters() if "lora_" not in n)
    assert not any(m.merged for m in ours.modules() if hasattr(m, "merged_adapters"))


# ---------------------------------------------------------------- the real thing (CUDA + vLLM only)
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available() or installed_vllm_version() is None
                    or not vllm_version_supported(installed_vllm_version() or ""),
                    reason=f"needs a CUDA GPU and vLLM {VLLM_SUPPORTED[0]}-{VLLM_SUPPORTED[1]} in this environment")
def test_one_real_grpo_step_with_vllm_colocated(tmp_path, embedded_tokenizer):
    from tests.conftest import build_tiny_model

    model_dir = build_tiny_model(embedded_tokenizer, tmp_path / "tiny", hidden_size=64, intermediate_size=128,
                                 num_attention_heads=2, num_key_value_heads=2)  # head size 32: vLLM kernels take it
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Is question {i} a good one?"}) + "\n" for i in range(4)))
    cfg = GRPOConfig(model=str(model_dir), prompts=str(prompts), rewards=["rhetoric-lexicon"], max_steps=2,
                     max_completion_length=16, device="cuda", rollout_engine="vllm", vllm_gpu_memory_utilization=0.2)
    result = run_grpo(cfg, tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["rollouts"]["engine"] == "vllm"
    assert manifest["rollouts"]["vllm_version"] == installed_vllm_version() and result.steps == 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ratios = [r["sampling/importance_sampling_ratio/mean"] for r in rows if "sampling/importance_sampling_ratio/mean" in r]
    print("importance-sampling ratio per step:", ratios)
    # on the full vocabulary the ratio is the engine/trainer mismatch only; without the nucleus fix it would sit
    # near 0.9 ** 16 = 0.19 on this near-uniform model (top_p 0.9, 16 tokens)
    assert ratios and all(0.6 < x < 1.5 for x in ratios)
    assert any("time/weight_sync_s" in r for r in rows) and any("time/nucleus_mass_s" in r for r in rows)
    assert (result.adapter_dir / "adapter_config.json").exists()
