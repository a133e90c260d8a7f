"""Sampling answers: N completions per conversation, behind a small backend interface.

:class:`SamplerBackend` is what the rest of spillover calls; :class:`HFSampler` implements it with
``model.generate`` (the vLLM engine process is another backend: :mod:`spillover.evaluate.engine`). Work is flattened
to one row per (conversation, sample), grouped by temperature and sorted by prompt length, then cut
into length buckets (:func:`plan_batches`) so a short prompt is not padded to the longest one in the
request: a new batch starts where the padding it saves costs more than the extra decode steps of one
more batch. Batches are left-padded and generated with ``model.generate``; answers come back in input
order. A run is reproducible: the same seed, settings and inputs give the same text (each batch draws
from its own seeded RNG); changing batch_size or bucketing changes the draws, not greedy answers.

Sampling in ``bfloat16`` (``load_sampler(dtype="bfloat16")``) is faster on CPUs with bf16 kernels and
changes the distribution slightly; :func:`dtype_logprob_check` measures by how much (per-token
log-probs of sampled answers under the sampling dtype vs float32).
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


# Cost model for length bucketing, in units of one decoded token's compute. A prompt token costs
# PREFILL_COST (prompt processing is batched matrix work, cheaper per token than decoding) and every
# decode step of a batch costs STEP_OVERHEAD on top of its tokens (per-layer kernel launches and Python
# work, reading every weight once per step, none of which shrinks with the batch). Estimated for
# SmolLM2-135M on a 2-core CPU, where padded prompt tokens were a third of a 32-prompt batch; with 4.0 a
# batch-32 run cut [6, 26] saved 27% of prompt tokens and was not faster on a loaded machine
# (bench/bench_hf_generation.py), so the overhead is set on the safe side: split only for heavy padding.
PREFILL_COST = 0.3
STEP_OVERHEAD = 8.0


def plan_batches(lengths: Sequence[int], batch_size: int, max_new_tokens: int, *,
                 prefill_cost: float = PREFILL_COST, step_overhead: float = STEP_OVERHEAD) -> list[list[int]]:
    """Cut prompts into batches of at most ``batch_size``, minimising the modelled cost.

    Returns lists of indices into ``lengths``; indices are sorted longest prompt first (ties by index),
    each batch is a contiguous run of that order, and batches come longest first. A batch of size ``b``
    whose longest prompt has ``w`` tokens costs ``prefill_cost * b * w + max_new_tokens * step_overhead``
    (the decoded tokens themselves cost the same however the rows are split); an exact dynamic program
    over the sorted order picks the cheapest cut.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    n = len(order)
    best = [float("inf")] * n + [0.0]  # best[k]: cheapest plan for order[k:], filled from the end
    cut = [n] * (n + 1)
    for k in range(n - 1, -1, -1):
        width = lengths[order[k]]
        for end in range(k + 1, min(n, k + batch_size) + 1):
            cost = prefill_cost * (end - k) * width + max_new_tokens * step_overhead + best[end]
            if cost <= best[k]:  # ties: the fuller batch first
                best[k], cut[k] = cost, end
    batches, k = [], 0
    while k < n:
        batches.append(order[k:cut[k]])
        k = cut[k]
    return batches


def _batch_seed(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


class HFSampler(SamplerBackend):
    """Batched sampling with ``transformers`` ``generate`` on any causal LM (PEFT-wrapped too)."""

    name = "hf"

    def __init__(self, model, tokenizer, *, batch_size: int = 32, model_id: str = "", adapter: str | None = None,
                 bucket: bool = True):
        self.model, self.tok, self.batch_size = model, tokenizer, batch_size
        self.model_id, self.adapter = model_id, adapter
        self.bucket = bucket  # False: fixed batches in input order, each padded to its longest prompt
        self.eos_ids = stop_ids(model.generation_config.eos_token_id, tokenizer)

    def identity(self) -> dict:
        """What changes the answers besides the params: engine, batch size (it changes the random draws),
        dtype and device. Written into every sample row and every manifest."""
        param = next(self.model.parameters())
        return {"backend": self.name, "model": self.model_id, "adapter": self.adapter, "batch_size": self.batch_size,
                "dtype": str(param.dtype).removeprefix("torch."), "device": str(param.device),
                "bucketing": "length" if self.bucket else "none"}

    def _encode(self, messages: list[dict]) -> list[int]:
        return encode_prompt(self.tok, messages)

    @torch.inference_mode()
    def generate_rows(self, rows, params, progress=None):
        encoded = [self._encode(with_system(r.messages, params.system_prompt)) for r in rows]
        temps = [params.temperature if r.temperature is None else r.temperature for r in rows]
        results: list[Completion | None] = [None] * len(rows)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos_ids[0]
        device = next(self.model.parameters()).device
        for batch in self._batches(encoded, temps, params.max_new_tokens):
            temp = temps[batch[0]]
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

    def _batches(self, encoded: list[list[int]], temps: list[float], max_new_tokens: int) -> list[list[int]]:
        """Row indices per batch: batches share one temperature; length buckets unless ``bucket`` is off."""
        batches = []
        for temp in sorted(set(temps)):
            same = [i for i in range(len(temps)) if temps[i] == temp]
            if self.bucket:
                plan = plan_batches([len(encoded[i]) for i in same], self.batch_size, max_new_tokens)
                batches += [[same[j] for j in b] for b in plan]
            else:
                batches += [same[s:s + self.batch_size] for s in range(0, len(same), self.batch_size)]
        return batches

    def _completion(self, new_ids: list[int]) -> Completion:
        return decode_completion(self.tok, self.eos_ids, new_ids)


def stop_ids(generation_eos, tokenizer) -> list[int]:
    """End-of-turn ids: the generation config's eos id(s), plus the tokenizer's eos."""
    eos = [generation_eos] if isinstance(generation_eos, int) else list(generation_eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    return eos


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Prompt token ids: the chat template with the generation prompt (every backend samples from these)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def decode_completion(tokenizer, eos_ids: list[int], new_ids: list[int]) -> Completion:
    """Answer text up to the first end-of-turn id (counted in n_tokens), or all ids when none came."""
    for k, t in enumerate(new_ids):
        if t in eos_ids:
            return Completion(tokenizer.decode(new_ids[:k], skip_special_tokens=True).strip(), k + 1, "stop")
    return Completion(tokenizer.decode(new_ids, skip_special_tokens=True).strip(), len(new_ids), "length")


def params_dict(params: SamplingParams) -> dict:
    return asdict(params)


def answer_token_logprobs(model, tokenizer, conversation: list[dict], answer: str) -> torch.Tensor:
    """Per-token log-probs (float32, on CPU) of ``answer`` as the assistant reply to ``conversation``; the
    scored tokens are those of :func:`spillover.models.answer_span` (answer text plus end-of-turn)."""
    from spillover.models import answer_span

    span = answer_span(tokenizer, conversation, answer)
    ids = torch.tensor([span.input_ids], device=next(model.parameters()).device)
    with torch.inference_mode():
        logits = model(input_ids=ids, use_cache=False).logits[0, span.start - 1:span.end - 1].float()
    return logits.log_softmax(-1).gather(-1, ids[0, span.start:span.end, None])[:, 0].cpu()


def dtype_logprob_check(sampler: HFSampler, conversations: Sequence[list[dict]], params: SamplingParams, *,
                        reference=None) -> dict:
    """How much sampling in the sampler's dtype moves the distribution: one answer per conversation is
    sampled with ``sampler``, then each answer's per-token log-probs are computed under the sampler's
    model and under ``reference`` (default: a float32 copy of the same model, adapter included).
    Returns the mean and max absolute per-token difference over all answer tokens."""
    import copy

    params = SamplingParams(**{**params_dict(params), "n": 1})
    answers = [cs[0].text for cs in sampler.generate(conversations, params)]
    if reference is None:
        reference = copy.deepcopy(sampler.model).float()
        reference.eval()
    diffs, ours, refs = [], [], []
    for conv, answer in zip(conversations, answers):
        if not answer.strip():
            continue  # an empty answer has no text tokens to compare
        conv = with_system(conv, params.system_prompt)
        a = answer_token_logprobs(sampler.model, sampler.tok, conv, answer)
        b = answer_token_logprobs(reference, sampler.tok, conv, answer)
        diffs.append((a - b).abs())
        ours.append(a)
        refs.append(b)
    if not diffs:
        raise ValueError("every sampled answer was empty; raise max_new_tokens or use other prompts")
    d = torch.cat(diffs)
    ref_dtype = str(next(reference.parameters()).dtype).removeprefix("torch.")
    return {"dtype": sampler.identity()["dtype"], "reference_dtype": ref_dtype, "n_answers": len(diffs),
            "n_tokens": int(d.numel()), "mean_abs_diff": d.mean().item(), "max_abs_diff": d.max().item(),
            "mean_logprob": torch.cat(ours).mean().item(), "reference_mean_logprob": torch.cat(refs).mean().item()}


ENGINES = ("hf", "vllm")


def load_sampler(model: str | None = None, adapter: str | None = None, *, device: str | None = None,
                 dtype: str | None = None, batch_size: int = 32, bucket: bool = True, engine: str = "hf",
                 engine_compiled: bool | None = None) -> SamplerBackend:
    """Base model (``embedded`` by default, or the adapter's recorded base) plus an optional adapter, sampled
    with ``engine``: ``hf`` (:class:`HFSampler`, in this process) or ``vllm`` (an engine process on the
    merged model, :class:`spillover.evaluate.engine.VLLMSampler`; close it when done). ``engine_compiled``:
    the engine's compiled graphs (None: on for a CUDA build, off on CPU; HF ignores it)."""
    from spillover.models import load_adapter, load_model
    from spillover.models._load import check_adapter_base

    if engine == "vllm":
        from spillover.evaluate.engine import VLLMSampler

        return VLLMSampler(model, adapter, device=device, dtype=dtype, batch_size=batch_size, compiled=engine_compiled)
    if engine != "hf":
        from spillover.errors import UnknownName

        raise UnknownName("engine", engine, list(ENGINES))
    if adapter:
        model = check_adapter_base(adapter, model)  # a mismatched base fails here, before any weights load
    hf_model, tok, ref = load_model(model, device=device, dtype=dtype)
    if adapter:
        hf_model = load_adapter(hf_model, adapter)
        hf_model.eval()
    return HFSampler(hf_model, tok, batch_size=batch_size, model_id=ref.display, adapter=str(adapter) if adapter else None,
                     bucket=bucket)


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
