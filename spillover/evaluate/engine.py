"""Sampling through an engine process (vLLM) behind :class:`SamplerBackend`, and the engine-vs-HF check.

:class:`VLLMSampler` starts one vLLM worker (``spillover.engines``) on the model; an adapter is first
merged into its base in a temporary HF folder (vLLM's CPU LoRA kernels are slower than HF + PEFT, a
merge takes seconds). Prompts are chat-templated and tokenised here with the model's own tokenizer, the
same function HF sampling uses, and answers come back as token ids decoded the same way, so answers of
the two backends are comparable token for token. Every row gets its own seed (from the request seed and
its position), so a run is reproducible and does not depend on how vLLM schedules its batches.

:func:`engine_logprob_check` is ``spillover sample --check-engine``: the per-token log-probs vLLM reports
for its own sampled answers against HF's teacher-forced log-probs of the same token ids (HF + PEFT for an
adapter, i.e. the unmerged model), mean and max absolute difference.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from spillover.errors import SpilloverError
from spillover.evaluate.sampling import (
    Completion,
    SamplerBackend,
    SampleRow,
    SamplingParams,
    _batch_seed,
    decode_completion,
    encode_prompt,
    params_dict,
    stop_ids,
    with_system,
)

#: ``--check-engine`` fails when the fp32 engine's per-token log-probs differ from HF's by more than this
#: (mean absolute difference over all answer tokens); other dtypes are reported only.
FP32_TOLERANCE = 1e-3


@dataclass
class EngineCompletion:
    completion: Completion
    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]


def engine_dtype(dtype: str | None, device: str) -> str:
    """vLLM dtype name for spillover's ``--dtype``: auto is float32 on CPU (as HF sampling) and bfloat16 on CUDA."""
    from spillover.models._device import DTYPES

    if dtype in (None, "auto"):
        return "float32" if device == "cpu" else "bfloat16"
    if dtype not in DTYPES:
        raise SpilloverError(f"unknown dtype {dtype!r}", fix=f"use auto or one of {', '.join(DTYPES)}")
    return str(DTYPES[dtype]).removeprefix("torch.")


class VLLMSampler(SamplerBackend):
    """Sampling with a vLLM worker process; a context manager (``close`` stops the worker)."""

    name = "vllm"

    def __init__(self, model: str | None = None, adapter: str | None = None, *, device: str | None = None,
                 dtype: str | None = None, batch_size: int = 32, max_model_len: int | None = None):
        from transformers import GenerationConfig

        from spillover.engines import require_engine, start_vllm
        from spillover.models import load_tokenizer, merge_adapter, resolve_model
        from spillover.models._load import check_adapter_base

        record = require_engine("vllm")  # before any merging: a missing engine fails fast
        if device not in (None, "auto") and not str(device).startswith(record.get("device", "cpu")):
            raise SpilloverError(f"--device {device} asked for, but the vllm engine is the {record.get('device')} build",
                                 fix="drop --device (the engine uses its own device), or use --engine hf")
        if adapter:
            model = check_adapter_base(adapter, model)
        ref = resolve_model(model)
        self.tok = load_tokenizer(ref)
        try:
            gen_eos = GenerationConfig.from_pretrained(ref.path).eos_token_id
        except OSError:
            gen_eos = None
        self.eos_ids = stop_ids(gen_eos, self.tok)
        self.model_id, self.adapter, self.batch_size = ref.display, str(adapter) if adapter else None, batch_size
        self.dtype = engine_dtype(dtype, record.get("device", "cpu"))
        self._tmp: Path | None = None
        self.engine = None
        try:
            folder = ref.path
            if adapter:
                from spillover.engines import engine_dir

                root = engine_dir("vllm") / "merged"
                root.mkdir(parents=True, exist_ok=True)
                self._tmp = Path(tempfile.mkdtemp(prefix="merged-", dir=root))
                folder = str(merge_adapter(model, adapter, self._tmp / "model"))
            self.engine = start_vllm(folder, dtype=self.dtype, max_num_seqs=batch_size, max_model_len=max_model_len)
        except BaseException:
            self.close()
            raise
        self.info = dict(self.engine.info)

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def identity(self) -> dict:
        return {"backend": self.name, "model": self.model_id, "adapter": self.adapter, "batch_size": self.batch_size,
                "dtype": self.info.get("dtype", self.dtype), "device": self.info.get("device"),
                "bucketing": "engine", "engine": "vllm", "engine_version": self.info.get("version"),
                "enforce_eager": self.info.get("enforce_eager")}

    # ------------------------------------------------------------ sampling
    def generate_rows(self, rows, params, progress=None):
        return [c.completion for c in self.generate_detailed(rows, params, progress)]

    def generate_detailed(self, rows: Sequence[SampleRow], params: SamplingParams,
                          progress=None) -> list[EngineCompletion]:
        """Completions with their prompt ids, answer token ids and the engine's per-token log-probs."""
        if self.engine is None:
            raise SpilloverError("this vllm sampler was closed", fix="create a new sampler")
        prompts = [encode_prompt(self.tok, with_system(r.messages, params.system_prompt)) for r in rows]
        wire = [{"temperature": params.temperature if r.temperature is None else r.temperature, "top_p": params.top_p,
                 "max_tokens": params.max_new_tokens, "seed": _batch_seed(params.seed, f"row:{i}") & 0x7FFFFFFF,
                 "stop_token_ids": self.eos_ids} for i, r in enumerate(rows)]
        results = []
        for start in range(0, len(rows), 4 * self.batch_size):  # a few batches per request: progress moves
            reply = self.engine.request({"op": "generate", "prompts": prompts[start:start + 4 * self.batch_size],
                                         "params": wire[start:start + 4 * self.batch_size]})
            for k, out in enumerate(reply["outputs"]):
                ids = out["token_ids"]
                if out["finish_reason"] == "stop" and not any(t in self.eos_ids for t in ids):
                    ids = ids + [self.eos_ids[0]]  # a stop the engine did not echo: count it as HF does
                results.append(EngineCompletion(decode_completion(self.tok, self.eos_ids, ids), prompts[start + k],
                                                out["token_ids"], out["logprobs"]))
            if progress:
                progress(len(reply["outputs"]))
        return results


# ---------------------------------------------------------------- engine vs HF
def teacher_forced_logprobs(model, prompt_ids: list[int], answer_ids: list[int]) -> torch.Tensor:
    """Per-token log-probs (float32, CPU) of ``answer_ids`` after ``prompt_ids`` under an HF model."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + answer_ids], device=device)
    with torch.inference_mode():
        logits = model(input_ids=ids, use_cache=False).logits[0, len(prompt_ids) - 1:-1].float()
    return logits.log_softmax(-1).gather(-1, ids[0, len(prompt_ids):, None])[:, 0].cpu()


def engine_logprob_check(engine: VLLMSampler, hf_model, conversations: Sequence[list[dict]],
                         params: SamplingParams) -> dict:
    """Sample one answer per conversation with the engine, then score its token ids under ``hf_model``
    (teacher-forced). Returns mean/max absolute per-token differences and whether the fp32 tolerance
    holds (``passed`` is None for other dtypes: reported only)."""
    params = SamplingParams(**{**params_dict(params), "n": 1})
    outs = engine.generate_detailed([SampleRow(c) for c in conversations], params)
    diffs, ours, refs = [], [], []
    for out in outs:
        if not out.token_ids:
            continue
        theirs = torch.tensor(out.logprobs[:len(out.token_ids)], dtype=torch.float32)
        hf = teacher_forced_logprobs(hf_model, out.prompt_ids, out.token_ids[:len(theirs)])
        diffs.append((theirs - hf).abs())
        ours.append(theirs)
        refs.append(hf)
    if not diffs:
        raise SpilloverError("the engine returned no answer tokens to compare", fix="raise max_new_tokens")
    d = torch.cat(diffs)
    mean = d.mean().item()
    passed = mean <= FP32_TOLERANCE if engine.identity()["dtype"] == "float32" else None
    return {"engine": "vllm", "engine_version": engine.info.get("version"), "dtype": engine.identity()["dtype"],
            "reference": f"hf {str(next(hf_model.parameters()).dtype).removeprefix('torch.')}"
                         + (" + peft adapter" if engine.adapter else ""),
            "n_answers": len(diffs), "n_tokens": int(d.numel()), "mean_abs_diff": mean, "max_abs_diff": d.max().item(),
            "mean_logprob": torch.cat(ours).mean().item(), "reference_mean_logprob": torch.cat(refs).mean().item(),
            "tolerance": FP32_TOLERANCE, "passed": passed}


def check_engine(engine: VLLMSampler, model: str | None, adapter: str | None, conversations: Sequence[list[dict]],
                 params: SamplingParams) -> dict:
    """``--check-engine``: :func:`engine_logprob_check` against HF in float32 (base + PEFT adapter, unmerged);
    a float32 engine beyond :data:`FP32_TOLERANCE` is an error."""
    from spillover.evaluate.sampling import load_sampler

    reference = load_sampler(model, adapter, device="cpu", dtype="float32", engine="hf")
    result = engine_logprob_check(engine, reference.model, conversations, params)
    del reference
    if result["passed"] is False:
        raise SpilloverError(
            f"the vllm engine's float32 log-probs differ from HF's by {result['mean_abs_diff']:.2e} per token on average "
            f"(max {result['max_abs_diff']:.2e}; tolerance {FP32_TOLERANCE:g}) over {result['n_tokens']} tokens",
            fix="sample with --engine hf, or reinstall the engine (`spillover engines install vllm --force`)")
    return result


def format_check(c: dict) -> str:
    verdict = {True: "ok", False: "FAILED", None: "reported only (not float32)"}[c["passed"]]
    return (f"engine check: vllm {c['engine_version']} {c['dtype']} vs {c['reference']} over {c['n_tokens']} tokens of "
            f"{c['n_answers']} answers: per-token log-prob |diff| mean {c['mean_abs_diff']:.2e}, max {c['max_abs_diff']:.2e} "
            f"(tolerance {c['tolerance']:g} in float32): {verdict}")
