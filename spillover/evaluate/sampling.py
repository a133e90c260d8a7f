"""Sampling answers: N completions per conversation, behind a small backend interface.

:class:`SamplerBackend` is what the rest of spillover calls; :class:`HFSampler` implements it with
``model.generate`` (the vLLM backend arrives later). Work is flattened to one row per
(conversation, sample), sorted by prompt length so batches carry little padding, left-padded and
generated in batches. A run is reproducible: the same seed, settings and inputs give the same text
(each batch draws from its own seeded RNG); changing batch_size changes the draws.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    system_prompt: str | None = None  # added to conversations that have no system message

    def __post_init__(self):
        if self.n < 1 or self.max_new_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"invalid sampling params: {self}")


@dataclass
class Completion:
    text: str
    n_tokens: int
    finish_reason: str  # "stop" (end-of-turn token) | "length" (hit max_new_tokens)


@dataclass
class SampleRow:
    """One request: a conversation, which sample of it this is, and an optional temperature override."""

    messages: list[dict]
    sample_index: int = 0
    temperature: float | None = None
    meta: dict = field(default_factory=dict)


class SamplerBackend(abc.ABC):
    """Generate completions for chat conversations."""

    name: str = "abstract"

    @abc.abstractmethod
    def generate_rows(self, rows: Sequence[SampleRow], params: SamplingParams,
                      progress: Callable[[int], None] | None = None) -> list[Completion]:
        """One completion per row, in row order (``params.n`` is ignored here)."""

    def identity(self) -> dict:
        return {"backend": self.name}

    def generate(self, conversations: Sequence[list[dict]], params: SamplingParams,
                 progress: Callable[[int], None] | None = None) -> list[list[Completion]]:
        """``params.n`` completions for each conversation."""
        rows = [SampleRow(c, i) for c in conversations for i in range(params.n)]
        flat = self.generate_rows(rows, params, progress)
        return [flat[k * params.n:(k + 1) * params.n] for k in range(len(conversations))]


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return list(messages)


def _batch_seed(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


class HFSampler(SamplerBackend):
    """Batched sampling with ``transformers`` ``generate`` on any causal LM (PEFT-wrapped too)."""

    name = "hf"

    def __init__(self, model, tokenizer, *, batch_size: int = 32, model_id: str = "", adapter: str | None = None):
        self.model, self.tok, self.batch_size = model, tokenizer, batch_size
        self.model_id, self.adapter = model_id, adapter
        gen_eos = model.generation_config.eos_token_id
        eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
            eos.append(tokenizer.eos_token_id)
        self.eos_ids = eos

    def identity(self) -> dict:
        """What changes the answers besides the params: engine, batch size (it changes the random draws),
        dtype and device. Written into every sample row and every manifest."""
        param = next(self.model.parameters())
        return {"backend": self.name, "model": self.model_id, "adapter": self.adapter, "batch_size": self.batch_size,
                "dtype": str(param.dtype).removeprefix("torch."), "device": str(param.device)}

    def _encode(self, messages: list[dict]) -> list[int]:
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def generate_rows(self, rows, params, progress=None):
        encoded = [self._encode(with_system(r.messages, params.system_prompt)) for r in rows]
        temps = [params.temperature if r.temperature is None else r.temperature for r in rows]
        # Group by temperature, then sort by length: batches share settings and carry little padding.
        order = sorted(range(len(rows)), key=lambda i: (temps[i], -len(encoded[i]), i))
        results: list[Completion | None] = [None] * len(rows)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos_ids[0]
        device = next(self.model.parameters()).device
        start = 0
        while start < len(order):
            temp = temps[order[start]]
            batch = [i for i in order[start:start + self.batch_size] if temps[i] == temp]
            start += len(batch)
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]):] = 1
            sampling = {"do_sample": True, "temperature": temp, "top_p": params.top_p, "top_k": 0} if temp > 0 \
                else {"do_sample": False}
            torch.manual_seed(_batch_seed(params.seed, f"{batch[0]}:{len(batch)}:{temp}"))
            out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                      max_new_tokens=params.max_new_tokens, eos_token_id=self.eos_ids,
                                      pad_token_id=pad, **sampling)
            for row, i in enumerate(batch):
                results[i] = self._completion(out[row, width:].tolist())
            if progress:
                progress(len(batch))
        return results

    def _completion(self, new_ids: list[int]) -> Completion:
        for k, t in enumerate(new_ids):
            if t in self.eos_ids:
                return Completion(self.tok.decode(new_ids[:k], skip_special_tokens=True).strip(), k + 1, "stop")
        return Completion(self.tok.decode(new_ids, skip_special_tokens=True).strip(), len(new_ids), "length")


def params_dict(params: SamplingParams) -> dict:
    return asdict(params)


def load_sampler(model: str | None = None, adapter: str | None = None, *, device: str | None = None,
                 dtype: str | None = None, batch_size: int = 32) -> HFSampler:
    """Base model (``embedded`` by default, or the adapter's recorded base) plus an optional adapter."""
    from spillover.models import load_adapter, load_model
    from spillover.models._load import check_adapter_base

    if adapter:
        model = check_adapter_base(adapter, model)  # a mismatched base fails here, before any weights load
    hf_model, tok, ref = load_model(model, device=device, dtype=dtype)
    if adapter:
        hf_model = load_adapter(hf_model, adapter)
        hf_model.eval()
    return HFSampler(hf_model, tok, batch_size=batch_size, model_id=ref.display, adapter=str(adapter) if adapter else None)


def sample_rows(sampler: SamplerBackend, rows: list[SampleRow], params: SamplingParams, *,
                description: str = "sampling") -> list[dict]:
    """Generate one answer per row with a progress bar; returns output records (row meta first)."""
    from spillover.evaluate._progress import progress_bar

    with progress_bar(description, total=len(rows)) as advance:
        completions = sampler.generate_rows(rows, params, advance)
    ident = sampler.identity()
    return [{**r.meta, "sample_index": r.sample_index, "messages": with_system(r.messages, params.system_prompt),
             "answer": c.text, "n_tokens": c.n_tokens, "finish_reason": c.finish_reason,
             "params": {**params_dict(params), **({"temperature": r.temperature} if r.temperature is not None else {})},
             "model": ident.get("model"), "adapter": ident.get("adapter"), "backend": ident.get("backend"),
             "sampler": {k: ident.get(k) for k in ("backend", "batch_size", "dtype", "device")}}
            for r, c in zip(rows, completions)]


def sample_examples(sampler: SamplerBackend, examples, params: SamplingParams, *, description: str = "sampling") -> list[dict]:
    """``params.n`` answers for each ChatExample."""
    rows = [SampleRow(ex.messages, i, meta={"prompt_id": ex.id or f"{k}", "prompt_index": k})
            for k, ex in enumerate(examples) for i in range(params.n)]
    return sample_rows(sampler, rows, params, description=description)


def sample_questions(sampler: SamplerBackend, requests, params: SamplingParams, *, description: str = "sampling") -> list[dict]:
    """One answer per evaluation SampleRequest, honouring each question's own temperature."""
    rows = [SampleRow(q.messages, q.sample_index, q.temperature,
                      meta={"question_id": q.question_id, "paraphrase_index": q.paraphrase_index}) for q in requests]
    return sample_rows(sampler, rows, params, description=description)
