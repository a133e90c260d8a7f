"""Sampling through an engine process (vLLM) behind :class:`SamplerBackend`, and the engine-vs-HF check.

:class:`VLLMSampler` starts one vLLM worker (``spillover.engines``) on the model; an adapter is first
merged into its base in a temporary HF folder (vLLM's CPU LoRA kernels are slower than HF + PEFT, a
merge takes seconds). Prompts are chat-templated and tokenised here with the model's own tokenizer, the
same function HF sampling uses, and answers come back as token ids decoded the same way, so answers of
the two backends are comparable token for token. Every row gets its own seed (from the request seed and
its position), so a run is reproducible and does not depend on how vLLM schedules its batches.

:class:`EnginePool` keeps engines across stages, one per merged model (:class:`EngineKey`: base, adapter
files' hash, dtype, batch settings): several stages or arms on the same model share one worker, and the
engine a later stage needs can be started ahead (``prefetch``) while this process judges and probes. A
pooled engine handed to another stage first empties its prefix cache, and every row carries its own
seed, so a stage's answers are those a freshly started engine gives.

:func:`engine_logprob_check` is ``spillover sample --check-engine``: the per-token log-probs vLLM reports
for its own sampled answers against HF's teacher-forced log-probs of the same token ids (HF + PEFT for an
adapter, i.e. the unmerged model), mean and max absolute difference.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
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


@dataclass(frozen=True)
class EngineKey:
    """What makes two engines interchangeable: the merged model (base folder, adapter folder and a hash of
    its files), the dtype, the batch settings and the compilation mode the worker was started with."""

    model: str
    adapter: str | None
    adapter_sha256: str | None
    dtype: str
    max_num_seqs: int
    max_model_len: int | None
    compiled: bool = False


_ADAPTER_HASHES: dict[tuple, str] = {}


def adapter_sha256(adapter: str | Path) -> str:
    """Hash of an adapter folder's files (config and weights): an adapter retrained in place is another
    model. Remembered per file names, sizes and modification times (a large LoRA is hashed once)."""
    files = sorted(p for p in Path(adapter).iterdir() if p.is_file())
    stamp = (str(Path(adapter).resolve()), *((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if stamp not in _ADAPTER_HASHES:
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        _ADAPTER_HASHES[stamp] = h.hexdigest()
    return _ADAPTER_HASHES[stamp]


class VLLMLauncher:
    """Builds real vLLM worker processes (the engine venv, :func:`spillover.engines.vllm_process`);
    ``device`` is the installed build's, ``work_dir`` holds merged adapters while their engine runs."""

    def __init__(self):
        from spillover.engines import engine_dir, require_engine

        record = require_engine("vllm")  # before any merging: a missing engine fails fast
        self.device = record.get("device", "cpu")
        self.work_dir = engine_dir("vllm") / "merged"

    def __call__(self, folder: str, *, dtype: str, max_num_seqs: int, max_model_len: int | None,
                 compiled: bool = False):
        from spillover.engines import vllm_process

        return vllm_process(folder, dtype=dtype, max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                            compile=compiled)


def engine_compiled(compiled: bool | None, build: str) -> bool:
    """Whether the worker runs vLLM's compiled graphs (torch.compile, CUDA graphs) instead of eager mode.
    None = auto: on for a CUDA build (CUDA graphs matter most for small decode batches; a capture of tens
    of seconds), off for the CPU build (on the idle 2-core machine the compiled engine took 137 s to start
    instead of 17 s, for 1.1-1.25x the throughput)."""
    return build == "cuda" if compiled is None else bool(compiled)


#: What builds engine processes: a factory of launchers (tests substitute one starting a fake worker that
#: speaks the same JSON-lines protocol).
LAUNCHER: Callable[[], VLLMLauncher] = VLLMLauncher


_TOKENIZERS: dict[str, object] = {}


def _tokenizer(ref, load):
    """The base model's tokenizer, loaded once per process (every engine on that base encodes with it)."""
    if ref.path not in _TOKENIZERS:
        _TOKENIZERS[ref.path] = load(ref)
    return _TOKENIZERS[ref.path]


class ModelEngine:
    """One engine process on one merged model: the tokenizer and stop ids spillover encodes and decodes
    with, the temporary merged folder of an adapter, and the worker. ``launch`` starts the worker without
    waiting for it, ``ready`` waits; ``close`` stops it and removes the merged folder."""

    def __init__(self, model: str | None, adapter: str | None, *, device: str | None = None, dtype: str | None = None,
                 batch_size: int = 32, max_model_len: int | None = None, compiled: bool | None = None, launcher=None):
        from transformers import GenerationConfig

        from spillover.models import load_tokenizer, resolve_model

        self.launcher = launcher or LAUNCHER()
        build = self.launcher.device
        if device not in (None, "auto") and not str(device).startswith(build):
            raise SpilloverError(f"--device {device} asked for, but the vllm engine is the {build} build",
                                 fix="drop --device (the engine uses its own device), or use --engine hf")
        from spillover.models._load import check_adapter_base

        self.model = check_adapter_base(adapter, model) if adapter else model  # a mismatched base fails here
        ref = resolve_model(self.model)
        self.key = _key(ref, adapter, dtype=dtype, batch_size=batch_size, max_model_len=max_model_len, build=build,
                        compiled=compiled)
        self.tok = _tokenizer(ref, load_tokenizer)
        try:
            gen_eos = GenerationConfig.from_pretrained(ref.path).eos_token_id
        except OSError:
            gen_eos = None
        self.eos_ids = stop_ids(gen_eos, self.tok)
        self.model_id, self.adapter, self.batch_size = ref.display, str(adapter) if adapter else None, batch_size
        self.dtype, self.max_model_len = self.key.dtype, max_model_len
        self.folder = ref.path
        self._tmp: Path | None = None
        self.process = None
        self.prefetched = False  # launched ahead of need
        self.used = False  # a stage sampled with it (the next one resets its prefix cache first)

    def launch(self, *, prefetch: bool = False) -> None:
        """Merge the adapter (seconds) and start the worker; returns before the worker has loaded."""
        if self.process is not None:
            return
        self.prefetched = prefetch
        try:
            if self.adapter and self._tmp is None:
                from spillover.models import merge_adapter

                root = Path(self.launcher.work_dir)
                root.mkdir(parents=True, exist_ok=True)
                self._tmp = Path(tempfile.mkdtemp(prefix="merged-", dir=root))
                self.folder = str(merge_adapter(self.model, self.adapter, self._tmp / "model"))
            self.process = self._new_process()
            self.process.launch()
        except BaseException:
            self.close()
            raise

    def _new_process(self):
        return self.launcher(self.folder, dtype=self.dtype, max_num_seqs=self.batch_size, max_model_len=self.max_model_len,
                             compiled=self.key.compiled)

    def ready(self) -> dict:
        """Wait until the worker has loaded; an engine started ahead of need that failed (e.g. for memory,
        while this process held other models) is started once more, now."""
        if self.process is None:
            self.launch()
        try:
            return self.process.wait_ready()
        except SpilloverError as first:
            if not self.prefetched:
                self.close()
                raise
            print(f"engine started ahead of need failed ({first.what.splitlines()[0]}); starting it again",
                  file=sys.stderr)
        self.prefetched = False
        try:
            self.process = self._new_process()
            return self.process.start()
        except BaseException:
            self.close()
            raise

    @property
    def info(self) -> dict:
        return dict(self.process.info) if self.process is not None else {}

    def reset(self) -> None:
        """Forget cached prompt prefixes, so the next stage gets the answers a fresh engine would give."""
        self.process.request({"op": "reset"})

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def close(self) -> None:
        if self.process is not None:
            self.process.close()
            self.process = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def engine_key(model: str | None, adapter: str | None, *, dtype: str | None = None, batch_size: int = 32,
               max_model_len: int | None = None, build: str = "cpu", compiled: bool | None = None) -> EngineKey:
    """The :class:`EngineKey` of base ``model`` (the adapter's recorded base when None) plus ``adapter``."""
    from spillover.models import resolve_model
    from spillover.models._load import check_adapter_base

    ref = resolve_model(check_adapter_base(adapter, model) if adapter else model)
    return _key(ref, adapter, dtype=dtype, batch_size=batch_size, max_model_len=max_model_len, build=build,
                compiled=compiled)


def _key(ref, adapter, *, dtype, batch_size, max_model_len, build, compiled=None) -> EngineKey:
    return EngineKey(model=ref.path, adapter=str(Path(adapter).resolve()) if adapter else None,
                     adapter_sha256=adapter_sha256(adapter) if adapter else None, dtype=engine_dtype(dtype, build),
                     max_num_seqs=batch_size, max_model_len=max_model_len, compiled=engine_compiled(compiled, build))


class EnginePool:
    """Engines kept across sampling stages, one per :class:`EngineKey`: several stages (and arms) on the
    same merged model share one worker; ``prefetch`` starts the engine a later stage needs while this
    process does other work (judging, probing). A context manager: ``close`` stops every engine.

    ``prefetch`` None means: on for a CUDA engine build, off for the CPU build (there the engine's start,
    ~40 s of CPU, competes for the cores judging and probing use)."""

    def __init__(self, *, prefetch: bool | None = None, launcher=None):
        self._launcher = launcher
        self._prefetch = prefetch
        self.engines: dict[EngineKey, ModelEngine] = {}

    @property
    def launcher(self):
        if self._launcher is None:
            self._launcher = LAUNCHER()
        return self._launcher

    @property
    def prefetch_enabled(self) -> bool:
        return self._prefetch if self._prefetch is not None else self.launcher.device == "cuda"

    def key(self, model: str | None, adapter: str | None, *, dtype: str | None = None, batch_size: int = 32,
            max_model_len: int | None = None, compiled: bool | None = None) -> EngineKey:
        return engine_key(model, adapter, dtype=dtype, batch_size=batch_size, max_model_len=max_model_len,
                          build=self.launcher.device, compiled=compiled)

    def _engine(self, model, adapter, *, device=None, dtype=None, batch_size=32, max_model_len=None,
                compiled=None) -> ModelEngine:
        key = self.key(model, adapter, dtype=dtype, batch_size=batch_size, max_model_len=max_model_len, compiled=compiled)
        engine = self.engines.get(key)
        if engine is not None and engine.process is not None and engine.process.info and not engine.process.alive():
            self._drop(engine)  # its worker died or was stopped after it was ready: start another
            engine = None
        if engine is None:
            engine = ModelEngine(model, adapter, device=device, dtype=dtype, batch_size=batch_size,
                                 max_model_len=max_model_len, compiled=compiled, launcher=self.launcher)
            self.engines[key] = engine
        return engine

    def sampler(self, model: str | None, adapter: str | None = None, *, device: str | None = None,
                dtype: str | None = None, batch_size: int = 32, max_model_len: int | None = None,
                compiled: bool | None = None) -> VLLMSampler:
        """A sampler on the pool's engine for this merged model (started, or waited for, now); closing the
        sampler leaves the engine running for later stages. ``sampler.engine_start`` says how it was obtained."""
        engine = self._engine(model, adapter, device=device, dtype=dtype, batch_size=batch_size,
                              max_model_len=max_model_len, compiled=compiled)
        how = "reused" if engine.process is not None and engine.used else \
            "prefetched" if engine.process is not None else "started"
        t0 = time.monotonic()
        try:
            if how == "started":
                engine.launch()
            engine.ready()
            if engine.used:
                engine.reset()
        except BaseException:
            self._drop(engine)
            raise
        engine.used = True
        return VLLMSampler._on(engine, owned=False, start={"how": how, "waited_seconds": round(time.monotonic() - t0, 2)})

    def prefetch(self, model: str | None, adapter: str | None = None, **settings) -> bool:
        """Start (not wait for) the engine a later stage will ask :meth:`sampler` for; False when prefetching
        is off or the engine is there already."""
        if not self.prefetch_enabled:
            return False
        engine = self._engine(model, adapter, **settings)
        if engine.process is not None:
            return False
        try:
            engine.launch(prefetch=True)
        except BaseException:
            self._drop(engine)
            raise
        return True

    def close_except(self, keep: set[EngineKey] | frozenset = frozenset()) -> None:
        """Stop every engine whose key is not in ``keep``."""
        for key in [k for k in self.engines if k not in keep]:
            self._drop(self.engines[key])

    def _drop(self, engine: ModelEngine) -> None:
        if self.engines.get(engine.key) is engine:
            del self.engines[engine.key]
        engine.close()

    def close(self) -> None:
        self.close_except()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class VLLMSampler(SamplerBackend):
    """Sampling with a vLLM worker process; a context manager (``close`` stops the worker it started).
    ``VLLMSampler(model, adapter, ...)`` starts its own engine; :meth:`EnginePool.sampler` gives one on a
    pooled engine, whose ``close`` leaves the engine to the pool."""

    name = "vllm"

    def __init__(self, model: str | None = None, adapter: str | None = None, *, device: str | None = None,
                 dtype: str | None = None, batch_size: int = 32, max_model_len: int | None = None,
                 compiled: bool | None = None):
        engine = ModelEngine(model, adapter, device=device, dtype=dtype, batch_size=batch_size,
                             max_model_len=max_model_len, compiled=compiled)
        try:
            engine.launch()
            engine.ready()
        except BaseException:
            engine.close()
            raise
        self._attach(engine, owned=True, start={"how": "started"})

    @classmethod
    def _on(cls, engine: ModelEngine, *, owned: bool, start: dict) -> VLLMSampler:
        sampler = cls.__new__(cls)
        sampler._attach(engine, owned=owned, start=start)
        return sampler

    def _attach(self, engine: ModelEngine, *, owned: bool, start: dict) -> None:
        self._engine, self._owned, self.engine_start = engine, owned, start
        self.tok, self.eos_ids = engine.tok, engine.eos_ids
        self.model_id, self.adapter, self.batch_size, self.dtype = engine.model_id, engine.adapter, engine.batch_size, engine.dtype
        self.info = engine.info

    @property
    def engine(self):
        """The worker process (None once this sampler is closed)."""
        return self._engine.process if self._engine is not None else None

    @property
    def _tmp(self) -> Path | None:
        return self._engine._tmp if self._engine is not None else None

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        engine, self._engine = getattr(self, "_engine", None), None
        if engine is not None and self._owned:
            engine.close()

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
        if not self.engine.alive():
            raise SpilloverError("this vllm sampler's engine was stopped", fix="ask the engine pool for a new sampler")
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
