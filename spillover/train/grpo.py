"""LoRA GRPO on TRL's GRPOTrainer: spillover rewards, defenses plugged in, one run directory.

Layout of ``out``: as SFT's (``config.yaml``, ``manifest.json``, ``metrics.jsonl``, ``adapter/``) plus
``completions.jsonl``: at logging steps that are multiples of ``log_completions_every``, a sample of the
last generation batch, one line per completion with its prompt, text, reasoning (``<think>`` text) and
answer, the weighted total reward, the advantage, each function's reward and its sub-scores
(``score_details``; for graders the status, reason and judgment of the one grading that was used).

``metrics.jsonl`` rows carry TRL's GRPO metrics (``reward``, ``reward_std``, ``rewards/<name>/mean|std``,
``completions/mean_length``..., ``kl`` when beta > 0, ``step_time``) plus ``time/generation_s`` and
``time/reward/<name>_s``. Prompts longer than ``max_prompt_length`` are an error (TRL 1.16 has no
prompt limit, and cutting a chat prompt silently would train on a different question).

Rollouts on CPU run with the LoRA adapter merged into the base weights (``merge_rollout_adapter``, see
:func:`merged_adapter`): the same completions, the base weights put back bit-exactly before the loss.
``rollout_dtype: bfloat16`` samples them from a bf16 copy of those weights (:func:`cast_weights`): faster where
bf16 matmuls are native (GPU, AVX512-BF16/AMX CPUs; slower on AVX2-only CPUs), slightly off-policy; the loss
still runs on the exact weights in their own dtype.

Importance-sampling correction for the bf16 rollouts: none. TRL 1.16 corrects a sampler/trainer mismatch only
on its vLLM path (``vllm_importance_sampling_correction``: the ratio of the trainer's to the sampler's per-token
probabilities, truncated), which needs the sampler's per-token log-probs; its HF ``generate`` call returns none,
and the ratio is computed inside ``_generate_and_score_completions`` behind ``use_vllm``. Adding it would mean
a second bf16 forward over the completions and overriding that method's body; the mismatch it would correct
is what ``bench/bench_grpo.py --rollouts`` reports (mean |delta log-prob| of the sampled tokens).

vLLM rollouts (``rollout_engine: vllm``, CUDA only): TRL's own integration (``use_vllm``, colocate or server
mode; :func:`vllm_trl_args`), with TRL's importance-sampling correction on and pinned. Checked before anything
loads (:func:`check_rollout_engine`): a CUDA device and vLLM 0.22.0-0.31.0 importable in this process. Spillover's
HF-only rollout hooks are config errors there (rollout_dtype, merge_rollout_adapter: on, defenses with forward
hooks); the weight copy into vLLM goes through :func:`merged_adapter` (:meth:`_GRPOTrainer._sync_vllm_weights`),
so the base weights stay bit-exact across steps (TRL's PEFT path adds and subtracts the adapter in place); and
with ``top_p < 1`` vLLM's nucleus-renormalised log-probs are put back on the full vocabulary before TRL's
importance ratio uses them (:meth:`_GRPOTrainer._on_full_support`, TRL 1.16 compares the two as they are).

Accepted trade-off: the timing and sample hooks override private TRL methods (``_generate``,
``_generate_single_turn``) and read ``_logs``/``_metrics``/``_last_loaded_step``; they are pinned to TRL 1.16's
GRPOTrainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import json
import logging
import math
import time
import warnings
from pathlib import Path

import torch
from datasets import Dataset
from trl import GRPOConfig as TRLGRPOConfig
from trl import GRPOTrainer

from spillover._io import atomic_write_text, sha256_file, sha256_json
from spillover._run import environment_info, now_iso, prepare_run_dir, update_manifest
from spillover.config import dump_yaml
from spillover.data import ChatExample, load_chat_jsonl, require_prompts, resolve_data_path
from spillover.defenses import SOURCE_COLUMN, TASK_SOURCE
from spillover.errors import SpilloverError
from spillover.models import pick_device, pick_dtype
from spillover.rewards import Reward, RubricGrader, completion_text, prompt_text, run_sync, split_reasoning
from spillover.train._checkpoint import CHECKPOINT_MINUTES, resume_point
from spillover.train._defended import DefendedTrainerMixin, defense_records, setup_defenses
from spillover.train._grpo_config import GRPOConfig
from spillover.train.sft import TrainResult, _trl_args, finish_trainer_setup, prepare_policy, train_and_save

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- prompts
def load_grpo_prompts(path: str | Path, *, strip_qwen3: bool = False) -> list[ChatExample]:
    """Prompt conversations ending in a user turn; a final assistant turn (a prompt/completion file's
    completion, or an SFT conversation's answer) is dropped."""
    examples = [ex if ex.messages[-1]["role"] != "assistant" else dataclasses.replace(ex, messages=ex.messages[:-1])
                for ex in load_chat_jsonl(path, strip_qwen3=strip_qwen3)]
    for ex in examples:
        if not ex.messages:
            raise SpilloverError("conversation holds only an assistant turn", where=ex.where,
                                 fix="give each prompt the user message to answer")
    require_prompts(examples)
    return examples


def with_system_prompt(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """``system_prompt`` first; a conversation's own system message follows it after a blank line."""
    if not system_prompt:
        return list(messages)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{system_prompt}\n\n{messages[0]['content']}"}, *messages[1:]]
    return [{"role": "system", "content": system_prompt}, *messages]


def check_prompt_lengths(examples: list[ChatExample], rows: list[dict], tokenizer, max_tokens: int | None) -> None:
    """Every prompt, as TRL will tokenize it (chat template, generation prompt), fits ``max_tokens``."""
    if max_tokens is None:
        return
    ids = tokenizer.apply_chat_template([r["prompt"] for r in rows], add_generation_prompt=True, tokenize=True,
                                        return_dict=True)["input_ids"]
    too_long = [(ex, len(i)) for ex, i in zip(examples, ids, strict=True) if len(i) > max_tokens]
    if too_long:
        shown = "; ".join(f"{ex.where} ({n} tokens)" for ex, n in too_long[:3])
        more = f" and {len(too_long) - 3} more" if len(too_long) > 3 else ""
        raise SpilloverError(f"{len(too_long)} prompt(s) exceed max_prompt_length = {max_tokens} tokens: {shown}{more}",
                             fix="raise max_prompt_length (null = no limit), or shorten or remove those prompts")


# ---------------------------------------------------------------- rewards
def score_with_details(reward, prompts: list, completions: list, **kwargs) -> list[dict]:
    """``{"reward": float | None, ...sub-scores}`` per completion from one scoring pass (a grader's judge is
    called once per completion, as in training)."""
    if isinstance(reward, RubricGrader) and type(reward).__call__ is RubricGrader.__call__:
        outcomes = run_sync(lambda: reward.grade_batch(prompts, completions))
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and outcomes:  # the shares RubricGrader.__call__ logs
            for status in ("failed", "gated"):
                log_metric(f"{reward.name}/{status}", sum(o.status == status for o in outcomes) / len(outcomes))
        return [dataclasses.asdict(o) for o in outcomes]
    if isinstance(reward, Reward) and type(reward).__call__ is Reward.__call__:
        prompts = [None] * len(completions) if prompts is None else prompts
        details = [reward.score_details(p, c) for p, c in zip(prompts, completions, strict=True)]
        return [{**d, "reward": float(d["reward"])} for d in details]
    return [{"reward": r} for r in reward(prompts=prompts, completions=completions, **kwargs)]


class ScoredReward:
    """A reward as TRL calls it; keeps the last call's per-completion details and logs its own time."""

    def __init__(self, reward):
        self.reward = reward
        self.__name__ = getattr(reward, "name", None) or getattr(reward, "__name__", type(reward).__name__)
        self.last_details: list[dict] = []

    def __call__(self, prompts, completions, **kwargs) -> list[float | None]:
        t0 = time.perf_counter()
        self.last_details = score_with_details(self.reward, prompts, completions, **kwargs)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            log_metric(f"time/reward/{self.__name__}_s", time.perf_counter() - t0)
        return [d["reward"] for d in self.last_details]


def build_rewards(cfg: GRPOConfig, grade=None) -> list[ScoredReward]:
    """Every configured reward, with ``grade`` given to those that take it; a grader without one is an error."""
    rewards = [ref.build(grade=grade) for ref in cfg.rewards]
    names = [getattr(r, "name", "") for r in rewards]
    if len(set(names)) != len(names):
        raise SpilloverError(f"a reward is listed twice: {names}", fix="list each reward once (use its weight to scale it)")
    for r in rewards:
        if isinstance(r, RubricGrader) and r.grade is None:
            raise SpilloverError(f"reward {r.name!r} grades with an LLM judge, but no judge was given", where="rewards",
                                 fix="pass grade=<async judge call> (e.g. OpenAIJudge(...).complete_json) to run_grpo, "
                                     "or configure a judge for `spillover train grpo`")
    return [ScoredReward(r) for r in rewards]


class RoutedReward:
    """Scores only the completions whose prompt came from ``source`` (``spillover_source`` column) and
    returns None for the others (TRL then leaves them to the other reward functions). Task rewards are
    routed to "task" rows, a defense's reward to its own extra prompts."""

    def __init__(self, reward, source: str, name: str | None = None):
        self.reward, self.source = reward, source
        self.__name__ = name or getattr(reward, "__name__", type(reward).__name__)
        self.last_details: list[dict] = []

    def __call__(self, prompts, completions, **kwargs) -> list[float | None]:
        n = len(completions)
        sources = kwargs.get(SOURCE_COLUMN) or [TASK_SOURCE] * n
        idx = [i for i, s in enumerate(sources) if s == self.source]
        out: list[float | None] = [None] * n
        self.last_details = [{} for _ in range(n)]
        if not idx:
            return out
        pick = lambda v: [v[i] for i in idx] if isinstance(v, list) and len(v) == n else v  # noqa: E731
        sub = self.reward(pick(prompts), pick(completions), **{k: pick(v) for k, v in kwargs.items()})
        details = getattr(self.reward, "last_details", None) or [{} for _ in idx]
        for j, i in enumerate(idx):
            out[i] = sub[j]
            self.last_details[i] = details[j] if j < len(details) else {}
        return out


class DefenseReward:
    """A defense's own reward (:meth:`~spillover.defenses.Defense.reward`) as TRL calls it."""

    def __init__(self, defense):
        self.defense, self.__name__ = defense, f"defense/{defense.name}"

    def __call__(self, prompts, completions, **kwargs):
        return self.defense.reward(prompts, completions, **kwargs)


# ---------------------------------------------------------------- merged rollouts
@contextlib.contextmanager
def merged_adapter(model):
    """Generate with the active LoRA adapter folded into the base weights, then put back the very same base
    weight tensors (bit-exact: merging writes into new tensors, the originals are only set aside).

    An unmerged LoRA linear runs three matmuls per call; at rollout batch sizes on CPU a decode step is
    dispatch-bound, so folding the adapter in makes generation markedly faster. Layers whose adapters are
    disabled or already merged are left alone; the frozen init-adapter reference (not active) is never merged.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    saved = []
    try:
        with torch.no_grad():
            for module in model.modules():
                if not isinstance(module, BaseTunerLayer) or module.disable_adapters or module.merged:
                    continue
                names = [a for a in module.active_adapters if a in getattr(module, "lora_A", {})]
                if not names:
                    continue
                base = module.get_base_layer()
                bias = getattr(base, "bias", None)
                saved.append((module, base, base.weight.data, None if bias is None else bias.data,
                              list(module.merged_adapters)))
                for name in names:
                    _merge_into_new_tensor(module, base, name)
        yield model
    finally:
        for module, base, weight, bias, merged in reversed(saved):
            base.weight.data = weight
            if bias is not None:
                base.bias.data = bias
            module.merged_adapters = merged


def _merge_into_new_tensor(module, base, name: str) -> None:
    """``base.weight`` := a new tensor ``W + scale * B @ A`` (PEFT's own merge adds into ``W`` in place)."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    if name in getattr(module, "lora_variant", {}) or getattr(module, "lora_bias", {}).get(name):
        module.merge(safe_merge=True, adapter_names=[name])  # DoRA, LoRA bias: PEFT's merge into a copy
        return
    w = base.weight
    a, b = module.lora_A[name].weight, module.lora_B[name].weight
    if isinstance(module, LoraLinear) and not module.fan_in_fan_out and a.dtype == b.dtype == w.dtype == torch.float32:
        base.weight.data = torch.addmm(w.data, b, a, alpha=module.scaling[name])  # one fused pass
    else:
        base.weight.data = w.data + module.get_delta_weight(name)
    module.merged_adapters.append(name)


@contextlib.contextmanager
def cast_weights(model, dtype: torch.dtype | None):
    """Generate with every floating-point parameter replaced by a ``dtype`` copy, then put the very same tensors
    back (bit-exact, same storage: the originals are only set aside). Buffers (rotary frequencies...) keep their
    dtype, as in a model loaded in ``dtype``. ``dtype`` None: nothing is cast.

    Entered inside :func:`merged_adapter`, the copy is of the merged weights (the LoRA matrices are not used
    then); unmerged, the LoRA matrices are cast too. Costs one more copy of the weights in ``dtype`` meanwhile.
    """
    saved = []
    try:
        if dtype is not None:
            with torch.no_grad():
                for p in model.parameters():  # tied weights are one parameter: cast once
                    if p.is_floating_point() and p.dtype != dtype:
                        saved.append((p, p.data))
                        p.data = p.data.to(dtype)
        yield model
    finally:
        for p, data in reversed(saved):
            p.data = data


#: ``rollout_dtype`` setting -> the dtype rollouts are sampled in (None: the weights as they are).
ROLLOUT_DTYPES = {"model": None, "bfloat16": torch.bfloat16}


def rollout_dtype(setting: str, device) -> torch.dtype | None:
    """The dtype ``rollout_dtype`` casts the rollout weights to on ``device``, or None."""
    dtype = ROLLOUT_DTYPES[setting]
    device = torch.device(device)
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SpilloverError("rollout_dtype: bfloat16 needs a GPU with bfloat16 support", where="rollout_dtype",
                             fix="set rollout_dtype: model on this GPU")
    return dtype


def cpu_has_bf16_kernels() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); without, bf16 matmuls are emulated."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def merge_rollouts(setting: str, device) -> bool:
    """Whether ``merge_rollout_adapter`` (auto | on | off) merges on ``device``: auto merges on CPU only."""
    return setting == "on" or (setting == "auto" and torch.device(device).type == "cpu")


# ---------------------------------------------------------------- vLLM rollouts
#: The vLLM versions TRL 1.16 supports (``trl.import_utils.is_vllm_available`` warns outside them), inclusive.
VLLM_SUPPORTED = ("0.22.0", "0.31.0")
VLLM_PIP = f'pip install "vllm>={VLLM_SUPPORTED[0]},<={VLLM_SUPPORTED[1]}"'
#: TRL's importance-sampling correction of vLLM rollouts, pinned (TRL 1.16's defaults): each completion's loss is
#: weighted by its trainer/sampler probability ratio (a product over its tokens), and masked out above 3.
VLLM_IMPORTANCE_SAMPLING = {"vllm_importance_sampling_correction": True,
                            "vllm_importance_sampling_mode": "sequence_mask",
                            "vllm_importance_sampling_clip_max": 3.0}


def installed_vllm_version() -> str | None:
    """The version of the vLLM this process would import; None if there is none, "unknown" without metadata."""
    if importlib.util.find_spec("vllm") is None:
        return None
    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:  # e.g. a build installed under another distribution name
        return "unknown"


def vllm_version_supported(version: str) -> bool:
    """Whether TRL 1.16 supports this vLLM version (local labels like +cu129 ignored, as TRL does)."""
    from packaging.version import InvalidVersion, Version

    try:
        base = Version(Version(version).base_version)
    except InvalidVersion:
        return False
    return Version(VLLM_SUPPORTED[0]) <= base <= Version(VLLM_SUPPORTED[1])


def check_rollout_engine(cfg: GRPOConfig, device) -> None:
    """``rollout_engine: vllm`` can run here: a CUDA training device and a supported vLLM importable in this
    process (colocate runs it here; server mode sends the weights to the server over vLLM's NCCL transfer from
    here). Raises a SpilloverError naming the fix; ``hf`` always passes."""
    if cfg.rollout_engine != "vllm":
        return
    device = torch.device(device)
    server = cfg.vllm_mode == "server"
    if device.type != "cuda":
        raise SpilloverError(f"rollout_engine: vllm needs a CUDA GPU for training, but the device is {device.type}",
                             where="rollout_engine",
                             fix="set rollout_engine: hf here (CPU rollouts use spillover's HF path: vLLM's CPU build "
                                 "cannot take TRL's weight update at every step), or train on a CUDA machine")
    start = "; then start the server: `trl vllm-serve --model MODEL` (its own GPU, e.g. CUDA_VISIBLE_DEVICES=1)" \
        if server else ""
    version = installed_vllm_version()
    if version is None:
        raise SpilloverError(f"rollout_engine: vllm ({cfg.vllm_mode} mode) needs the vllm package in the training "
                             "environment, and it is not installed", where="rollout_engine",
                             fix=f"{VLLM_PIP} into this environment (the separate engine venv of `spillover engines "
                                 f"install vllm` serves evaluation only){start}; or set rollout_engine: hf")
    if not vllm_version_supported(version):
        raise SpilloverError(f"vllm {version} is installed, but TRL 1.16's vLLM integration supports "
                             f"{VLLM_SUPPORTED[0]} to {VLLM_SUPPORTED[1]} only", where="rollout_engine",
                             fix=f"{VLLM_PIP} into this environment{start}; or set rollout_engine: hf")


def vllm_trl_args(cfg: GRPOConfig) -> dict:
    """TRL GRPOConfig arguments of the rollout engine (none for hf)."""
    if cfg.rollout_engine != "vllm":
        return {}
    args = {"use_vllm": True, "vllm_mode": cfg.vllm_mode, **VLLM_IMPORTANCE_SAMPLING}
    if cfg.vllm_mode == "colocate":
        args["vllm_gpu_memory_utilization"] = cfg.vllm_gpu_memory_utilization
        if cfg.max_prompt_length is not None:  # every prompt is checked to fit: a KV cache sized to what is used
            args["vllm_max_model_length"] = cfg.max_prompt_length + cfg.max_completion_length
    elif cfg.vllm_server_url:
        args["vllm_server_base_url"] = cfg.vllm_server_url
    return args


def nucleus_log_mass(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Per position, the log of the probability mass that top-p sampling keeps (``logits`` already divided by the
    temperature): the rule of vLLM's and HF's samplers -- the least likely tokens are dropped while their summed
    probability stays at or below ``1 - top_p``; the most likely token is always kept."""
    probs = torch.softmax(logits.float(), dim=-1).sort(dim=-1).values  # ascending
    dropped = probs.cumsum(dim=-1) <= 1 - top_p
    dropped[..., -1] = False
    return probs.masked_fill(dropped, 0).sum(dim=-1).log()


def rollout_record(cfg: GRPOConfig, device) -> dict:
    """The manifest's ``rollouts`` record (``engine`` only for vllm: HF runs' record is unchanged)."""
    if cfg.rollout_engine == "vllm":
        return {"engine": "vllm", "vllm_mode": cfg.vllm_mode, "vllm_version": installed_vllm_version(),
                "dtype": "auto (vLLM: the checkpoint's)", "merged_adapter": False,
                "importance_sampling": {k.removeprefix("vllm_importance_sampling_"): v
                                        for k, v in VLLM_IMPORTANCE_SAMPLING.items()}}
    return {"merged_adapter": merge_rollouts(cfg.merge_rollout_adapter, device),  # hf: no engine key, as before
            "merge_rollout_adapter": cfg.merge_rollout_adapter}


# ---------------------------------------------------------------- trainer
class _GRPOTrainer(DefendedTrainerMixin, GRPOTrainer):
    """TRL's GRPOTrainer with spillover's defense hooks, generation timing and completions.jsonl."""

    method = "grpo"
    completions_path: Path | None = None
    completions_every = 0
    completions_samples = 4
    _completions_step = -1
    merge_rollout_adapter = False
    rollout_dtype: torch.dtype | None = None

    def _generate(self, prompts):
        t0 = time.perf_counter()
        with contextlib.ExitStack() as stack:
            policy = self.accelerator.unwrap_model(self.model)
            if self.merge_rollout_adapter:
                stack.enter_context(merged_adapter(policy))
            stack.enter_context(cast_weights(policy, self.rollout_dtype))  # after merging: a copy of the merged weights
            stack.enter_context(self.rollout_context(self.model))
            out = super()._generate(prompts)
        self._metrics["train" if self.model.training else "eval"]["time/generation_s"].append(time.perf_counter() - t0)
        return out

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        if self.use_vllm and self.state.global_step != self._last_loaded_step:  # TRL then skips its own sync
            self._sync_vllm_weights()
        completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
        if self.use_vllm and logprobs is not None and self.top_p < 1:
            logprobs = self._on_full_support(prompt_ids, completion_ids, logprobs)
        return completion_ids, logprobs

    def _on_full_support(self, prompt_ids, completion_ids, logprobs):
        """vLLM's sampled-token log-probs put on the full vocabulary, as the trainer computes its own.

        With ``top_p < 1`` vLLM returns log-probs renormalised over the nucleus it sampled from, while TRL 1.16's
        importance ratio divides by them the trainer's log-probs over the whole vocabulary (huggingface/trl#6789):
        every token's ratio then carries the kept mass (<= 1), and ``sequence_mask`` multiplies a completion's
        loss by the product over its tokens (0.9 ** 96 ~ 4e-5 for 96 tokens at top_p 0.9, the paper's setting),
        silently muting long completions. Adding the log of the kept mass, computed here from the policy's own
        logits (one no-grad forward per completion), removes that factor; what remains is the sampler/trainer
        mismatch the correction is for."""
        t0 = time.perf_counter()
        out = []
        with torch.no_grad():
            for prompt, completion, lps in zip(prompt_ids, completion_ids, logprobs, strict=True):
                if not completion:
                    out.append(lps)
                    continue
                ids = torch.tensor([list(prompt) + list(completion)], device=self.accelerator.device)
                logits = self.model(input_ids=ids, use_cache=False).logits[0, len(prompt) - 1:-1] / self.temperature
                mass = nucleus_log_mass(logits, self.top_p).tolist()
                out.append([None if lp is None else lp + m for lp, m in zip(lps, mass, strict=True)])
        self._metrics["train" if self.model.training else "eval"]["time/nucleus_mass_s"].append(
            time.perf_counter() - t0)
        return out

    def _sync_vllm_weights(self) -> None:
        """Copy the policy's weights, adapter merged, into vLLM, and put the exact base weights back.

        TRL's PEFT path merges the adapter into the base weights in place and subtracts it again afterwards:
        ``W + BA - BA`` is not ``W`` in floating point (in bf16 the frozen base drifts a little at every step).
        Inside :func:`merged_adapter` the merge writes new tensors: TRL's merge finds the layers merged and
        skips them, its unmerge subtracts from those new tensors, and the original ones are put back."""
        t0 = time.perf_counter()
        with merged_adapter(self.accelerator.unwrap_model(self.model)), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="All adapters are already merged")
            warnings.filterwarnings("ignore", message="Already unmerged")
            self.vllm_generation.sync_weights()
        self._last_loaded_step = self.state.global_step
        self._metrics["train" if self.model.training else "eval"]["time/weight_sync_s"].append(time.perf_counter() - t0)

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        self._last_sources = [x.get(SOURCE_COLUMN, TASK_SOURCE) for x in inputs]
        if any(SOURCE_COLUMN in x for x in inputs):
            out[SOURCE_COLUMN] = list(self._last_sources)
        return out

    def log(self, logs, *args, **kwargs):
        super().log(logs, *args, **kwargs)
        step = self.state.global_step
        if (self.completions_path and self.completions_every and "loss" in logs and self.model.training
                and step % self.completions_every == 0 and step != self._completions_step):
            self._completions_step = step
            self._write_completions(step)

    def completion_rows(self, step: int) -> list[dict]:
        """The first ``completions_samples`` completions of the last generation batch, with their scores."""
        prompts, completions = list(self._logs["prompt"]), list(self._logs["completion"])
        advantages = list(self._logs["advantages"])
        names, weights = self.reward_func_names, self.reward_weights.tolist()
        sources = getattr(self, "_last_sources", None)
        rows = []
        for i in range(min(self.completions_samples, len(completions))):
            text = completion_text(completions[i])
            reasoning, answer = split_reasoning(text)
            per_fn = {n: _finite(self._logs["rewards"][n][i]) for n in names}
            total = sum(w * r for w, r in zip(weights, per_fn.values()) if r is not None)
            details = {}
            for fn in self.reward_funcs:
                last = getattr(fn, "last_details", None)
                if last is not None and len(last) == len(completions):
                    details[fn.__name__] = {k: v for k, v in last[i].items() if k != "reward"}
            rows.append({"step": step, "index": i, "prompt": prompt_text(prompts[i]), "completion": text,
                         "reasoning": reasoning, "answer": answer, "reward": total,
                         "advantage": advantages[i] if i < len(advantages) else None,
                         "rewards": per_fn, "details": details,
                         "source": sources[i] if sources and i < len(sources) else TASK_SOURCE})
        return rows

    def _write_completions(self, step: int) -> None:
        with open(self.completions_path, "a", encoding="utf-8") as f:
            for row in self.completion_rows(step):
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                f.flush()


def _finite(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def build_grpo_trainer(cfg: GRPOConfig, model, tokenizer, rows: list[dict], rewards: list, output_dir: Path,
                       defenses=(), completions_path: Path | None = None) -> _GRPOTrainer:
    """A ready GRPO trainer over ``rows`` ({"prompt": messages}) with ``rewards`` weighted as configured."""
    device = pick_device(cfg.device)
    check_rollout_engine(cfg, device)
    args = TRLGRPOConfig(**_trl_args(cfg, output_dir, device, pick_dtype(cfg.dtype, device)),
                         num_generations=cfg.num_generations, beta=cfg.beta, loss_type=cfg.loss_type,
                         temperature=cfg.temperature, top_p=cfg.top_p, max_completion_length=cfg.max_completion_length,
                         reward_weights=[r.weight for r in cfg.rewards] + [1.0] * (len(rewards) - len(cfg.rewards)),
                         shuffle_dataset=True, log_completions=False, **vllm_trl_args(cfg))
    try:
        trainer = _GRPOTrainer(model=model, reward_funcs=list(rewards), args=args,
                               train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    except OSError as e:  # TRL's client gives up on an unreachable server (requests' and the builtin ConnectionError)
        if cfg.rollout_engine != "vllm" or cfg.vllm_mode != "server":
            raise
        raise SpilloverError(f"the vLLM server cannot be reached: {e}", where="vllm_server_url",
                             fix="start it first (`trl vllm-serve --model MODEL`, on its own GPU) and set "
                                 "vllm_server_url to its address") from e
    trainer._init_defenses(defenses)
    trainer.merge_rollout_adapter = cfg.rollout_engine == "hf" and merge_rollouts(cfg.merge_rollout_adapter, device)
    trainer.rollout_dtype = rollout_dtype(cfg.rollout_dtype, device)
    if trainer.rollout_dtype is torch.bfloat16 and torch.device(device).type == "cpu" and not cpu_has_bf16_kernels():
        log.warning("rollout_dtype: bfloat16 on a CPU without bf16 kernels (AVX512-BF16, AMX): rollouts will be "
                    "slower than in fp32 here (bench/bench_grpo.py --rollouts measures it)")
    if completions_path is not None:
        Path(completions_path).write_text("")
        trainer.completions_path = Path(completions_path)
        trainer.completions_every = cfg.log_completions_every
        trainer.completions_samples = cfg.log_completions_samples
    return trainer


def _judge_identity(grade) -> dict | None:
    """Who grades the ``grader:*`` rewards, for the manifest: the backend's ``judge_identity()`` (every
    spillover judge and grader has one: openai:, hf:), else the callable's own name; None without a judge."""
    import functools

    if grade is None:
        return None
    fn = grade
    while isinstance(fn, functools.partial):
        fn = fn.func
    identity = getattr(getattr(fn, "__self__", None), "judge_identity", None) or getattr(fn, "judge_identity", None)
    if callable(identity):
        return identity()
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return {"kind": "callable", "name": f"{getattr(fn, '__module__', None) or type(fn).__module__}.{name}"}


def run_grpo(cfg: GRPOConfig, out: str | Path, *, overwrite: bool = False, grade=None, resume: bool = False,
             checkpoint_minutes: float | None = CHECKPOINT_MINUTES) -> TrainResult:
    """Train a LoRA adapter with GRPO; returns where everything was written.

    ``grade`` is the async judge call ``grade(prompt, schema)`` the ``grader:*`` rewards need (e.g.
    ``OpenAIJudge(...).complete_json``); offline rewards ignore it.
    """
    check_rollout_engine(cfg, pick_device(cfg.device))  # before anything loads
    prompts_path = resolve_data_path(cfg.prompts)
    examples = load_grpo_prompts(prompts_path, strip_qwen3=cfg.strip_qwen3_markers)
    rewards = build_rewards(cfg, grade)
    model, tok, ref = prepare_policy(cfg)
    defenses = setup_defenses(cfg, model, tok, "grpo")
    for d in defenses:
        examples = d.transform_data(examples)
    require_prompts(examples)
    extra = [(d, d.extra_prompts(examples)) for d in defenses]
    extra = [(d, exs) for d, exs in extra if exs]
    for d, exs in extra:
        require_prompts(exs)
    rows = [{"prompt": with_system_prompt(ex.messages, cfg.system_prompt)} for ex in examples]
    if extra:  # mixed streams: every row says where it came from, each reward scores its own rows
        rows = [{**r, SOURCE_COLUMN: TASK_SOURCE} for r in rows]
        rows += [{"prompt": with_system_prompt(ex.messages, cfg.system_prompt), SOURCE_COLUMN: d.name}
                 for d, exs in extra for ex in exs]
        rewards = [RoutedReward(r, TASK_SOURCE) for r in rewards] + \
                  [RoutedReward(DefenseReward(d), d.name) for d, _ in extra]
        examples = examples + [ex for _, exs in extra for ex in exs]
    check_prompt_lengths(examples, rows, tok, cfg.max_prompt_length)

    run_dir = prepare_run_dir(out, overwrite=overwrite, resume=resume)
    point = resume_point(run_dir, dump_yaml(cfg)) if resume else None
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    update_manifest(run_dir, kind="train", method="grpo", status="running", started=now_iso(), model=ref.display,
                    model_path=ref.path, data=str(prompts_path), data_file_sha256=sha256_file(prompts_path),
                    data_fingerprint=sha256_json(rows), n_prompts=len(rows),
                    rewards=[r.model_dump(mode="json") for r in cfg.rewards], judge=_judge_identity(grade),
                    rollouts=rollout_record(cfg, pick_device(cfg.device)),
                    rollout_dtype="auto" if cfg.rollout_engine == "vllm" else str(
                        rollout_dtype(cfg.rollout_dtype, pick_device(cfg.device))
                        or pick_dtype(cfg.dtype, pick_device(cfg.device))).removeprefix("torch."),
                    env=environment_info(), **({"defenses": defense_records(defenses)} if defenses else {}))
    trainer = build_grpo_trainer(cfg, model, tok, rows, rewards, run_dir / ".trainer", defenses,
                                 run_dir / "completions.jsonl")
    finish_trainer_setup(trainer, defenses, run_dir, "GRPO")

    def grpo_manifest(history: list[dict], steps: int) -> dict:
        rewards_logged = [r["reward"] for r in history if r.get("reward") is not None]
        return {"final_reward": rewards_logged[-1] if rewards_logged else None,
                "completions_sampled": steps * cfg.batch_size * cfg.grad_accum}

    return train_and_save(trainer, model, defenses, run_dir, cfg, ref.display, "grpo", grpo_manifest, resume=point,
                          checkpoint_minutes=checkpoint_minutes)
