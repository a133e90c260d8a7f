"""Open-weights JSON grader: a rubric grader's JSON verdict read from a local HF chat model's probabilities.

The RL rubric graders (:mod:`spillover.rewards.graders`) call ``await grade(prompt, schema)`` and read
``.value`` / ``.reason``. :class:`LocalJsonGrader` answers without sampling: it teacher-forces the JSON
object field by field and reads each field's exact distribution over its valid values.

Transcript. The grader prompt is one user message wrapped by the chat template
(``add_generation_prompt=True``); then, in the schema's ``properties`` order, we force ``{"name":``
(``, "name":`` after the first field) and score the field's value. The next field is scored after
appending this field's chosen value, so it is conditioned on a complete, consistent JSON prefix:
``{"assessment": 0.35, "coherence": 0.8, "repetitive":``. The transcript ends ``}`` (kept in
``GradedJson.transcript``). Whether the model would have opened with ``{`` (and not a fence or prose)
is not measured: every probability is conditional on the forced prefix.

Values. A value is spelled as ``json.dumps`` writes it after the colon, a space first (``": 0.5"``):
  * ``number`` with ``minimum``/``maximum``: every multiple of 10^-decimals (default 0.01) in the range,
    in every exact spelling with 0..decimals decimals, e.g. 0.5 is " 0.5" and " 0.50"; 1 is " 1",
    " 1.0", " 1.00". For [0, 1] that is 101 values and 114 spellings. "0.125", "1e-1", ".5" and
    '"0.5"' are not valid spellings: their probability is missing from the mass;
  * ``integer`` with ``minimum``/``maximum``: " n" for each integer in the range;
  * ``boolean``: " true", " false".
With ``compact=True`` each spelling also counts without its space (``":0.5"``, ``":true"``), which
small models often write; it about doubles the trie. The appended text always has the space.
Each spelling is tokenized as the tokenizer writes it right after ``":`` (its canonical split only).

End of a value. A spelling counts only when the token after it ends the value: the token's text,
right after a number, with leading JSON whitespace (space, tab, newline, CR) removed, is empty or
starts with "," or "}". So " 0" is not counted inside " 0.5", " 0.5" not inside " 0.55", " true"
not inside " trueish"; a trailing end-of-turn token does not count (the object is not closed).
Spellings therefore are disjoint events and P(value) = sum over its spellings of
P(spelling tokens | prefix) * P(next token ends the value | prefix, spelling).

Verdict. Per field, mass = sum of P(value) (probability of a valid, ended value). Number fields
give the expected value sum p*v / mass (clipped to the range; integers too, so they come as floats);
boolean fields give P(true) / mass. ``value`` holds the numbers and, for booleans, ``P(true) > 0.5``
as a JSON boolean (the reward formulas require bools); ``soft`` holds every field's soft value
(booleans as P(true)) and ``mass`` every field's mass. The appended text is the grid value nearest
the expected value in its shortest spelling, or "true"/"false" by the larger probability. A field
whose mass is below ``min_mass`` (default 0.25, as the 0..100 judge) makes the whole answer unscored:
``value`` None, ``reason`` naming the first such field and its mass, and ``malformed`` True: the grader
would mostly not write a valid value there, the counterpart of an API judge's unparsable reply, so
rubric rewards score it 0 (not their fallback, which is for replies that never arrived).

Cost. Prompts are left-padded into a batch and fed once; each forced segment is fed on the KV cache
(segments left-padded too, so the last column is every row's last token; the padding is masked).
Each field's trie of spellings (``_local_hf.NumberTrie``; 117 nodes for [0, 1] with SmolLM2's
digit-split tokenizer, 2 for a boolean) runs as one forward on the cache with a 4D mask (each node
sees the real prefix and its ancestors), whose entries are then cropped from the cache. Every node
is a full forward of one token, so a standard grader (two [0, 1] fields, one boolean) costs the
prompt plus ~240 tokens: about as much again for a 500-token prompt; ``decimals=1`` cuts a [0, 1]
field to 16 nodes. Needs the ``eager`` or ``sdpa`` attention and a croppable (dynamic) cache.

Concurrency. ``grade`` runs the model in a worker thread under one lock, so concurrent grader calls
never run forwards in parallel; calls that queue while the model is busy are graded together in
batches of ``batch_size`` (grouped by schema). Results do not depend on batching (up to float round-off).
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import torch
from pydantic import Field

from spillover.config import StrictModel
from spillover.errors import SpilloverError
from spillover.judge._aggregate import _MASS_TOLERANCE, JsonAnswer
from spillover.judge._local_hf import NumberTrie, _at_least_fp32, trie_value_probs

VERSION = 1
MAX_GRID_VALUES = 1001
_JSON_WHITESPACE = " \t\n\r"
_PROBE_FIELD = '{"x":'


class LocalJsonGraderConfig(StrictModel):
    model: str = Field("embedded", description="Grader model: 'embedded', a local HF folder or a hub id. "
                       "Must be a chat model (it needs a chat template).")
    device: str = Field("auto", description="Device: auto (CUDA when available), cpu, cuda, cuda:1 ...")
    dtype: str = Field("auto", description="Weights dtype: auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.")
    min_mass: float = Field(0.25, ge=0.0, le=1.0, description="Below this probability on a field's valid values "
                            "the verdict is unscored (value None) and the reward uses its fallback.")
    batch_size: int = Field(8, ge=1, description="Prompts per forward. Memory grows with batch_size x (prompt "
                            "length + ~117 x vocabulary size) floats for a [0, 1] field.")
    decimals: int = Field(2, ge=0, le=2, description="Number fields: grid step 10^-decimals; 2 counts '0.75', "
                          "1 only '0.7'-style answers (two-decimal mass is lost) at about 1/6 of the trie cost "
                          "for a [0, 1] field (16 nodes instead of 117).")
    compact: bool = Field(False, description="Also count values written without a space after the colon "
                          "('\"x\":0.5'); about doubles the cost beyond the prompt.")


@dataclass(frozen=True)
class FieldGrid:
    """One schema field's valid values and their spellings (text after the colon, space first).

    values[i]: the i-th grid value (booleans: 0.0 = false, 1.0 = true); spellings: (value index, text);
    a value's first spelling (spaced, fewest decimals) is the text appended when it is chosen.
    """

    name: str
    kind: Literal["number", "integer", "boolean"]
    values: tuple[float, ...]
    spellings: tuple[tuple[int, str], ...]

    def text_of(self, index: int) -> str:
        return next(text for i, text in self.spellings if i == index)


@dataclass(frozen=True)
class GradedJson(JsonAnswer):
    """A :class:`JsonAnswer` with the soft verdict behind it.

    soft: field -> expected value (numbers) or P(true) (booleans), for every field scored;
    mass: field -> probability on the field's valid values; transcript: the teacher-forced JSON;
    malformed: a field's mass is below ``min_mass`` (see the module docstring).
    """

    soft: dict[str, float] = field(default_factory=dict)
    mass: dict[str, float] = field(default_factory=dict)
    transcript: str = ""
    malformed: bool = False


def _spell(k: int, decimals: int) -> list[str]:
    """Exact spellings of k * 10^-decimals with 0..decimals decimals, shortest first."""
    exact = Decimal(k).scaleb(-decimals)
    return [format(exact, f".{j}f") for j in range(decimals + 1) if k % 10 ** (decimals - j) == 0]


def field_grids(schema: dict, decimals: int = 2, compact: bool = False) -> list[FieldGrid]:
    """The grid of every field of ``schema`` (an object schema), in ``properties`` order."""
    spaces = (" ", "") if compact else (" ",)
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict) or not props:
        raise SpilloverError("the grading schema has no 'properties'", where="local JSON grader",
                             fix="pass an object schema with properties of type number, integer or boolean")
    grids = []
    for name, spec in props.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        where = f"local JSON grader, field {name!r}"
        if kind == "boolean":
            grids.append(FieldGrid(name, "boolean", (0.0, 1.0),
                                   tuple((i, sp + word) for sp in spaces for i, word in ((1, "true"), (0, "false")))))
            continue
        if kind not in ("number", "integer"):
            raise SpilloverError(f"type {kind!r} cannot be graded from probabilities", where=where,
                                 fix="use number or integer fields with minimum/maximum, or boolean fields")
        lo, hi = spec.get("minimum"), spec.get("maximum")
        if any(key in spec for key in ("exclusiveMinimum", "exclusiveMaximum", "multipleOf")) or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in (lo, hi)):
            raise SpilloverError("a numeric field needs finite 'minimum' and 'maximum' (and no exclusive bounds "
                                 "or multipleOf)", where=where, fix="bound the field, e.g. minimum 0, maximum 1")
        places = decimals if kind == "number" else 0
        first, last = math.ceil(Decimal(str(lo)).scaleb(places)), math.floor(Decimal(str(hi)).scaleb(places))
        if not 0 < last - first + 1 <= MAX_GRID_VALUES:
            raise SpilloverError(f"[{lo}, {hi}] in steps of 10^-{places} gives {max(0, last - first + 1)} values; "
                                 f"1..{MAX_GRID_VALUES} are supported", where=where,
                                 fix="narrow the range, declare the field integer, or lower decimals")
        ks = range(first, last + 1)
        spellings = tuple((i, sp + text) for sp in spaces for i, k in enumerate(ks) for text in _spell(k, places))
        grids.append(FieldGrid(name, kind, tuple(k / 10 ** places for k in ks), spellings))
    return grids


def value_end_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    """Bool (vocab_size,): the token, written right after a digit, ends a JSON value (see module doc)."""
    anchor = tokenizer("0", add_special_tokens=False)["input_ids"]
    n = min(len(tokenizer), vocab_size)
    texts = tokenizer.batch_decode([anchor + [i] for i in range(n)], clean_up_tokenization_spaces=False)
    prefix = len(tokenizer.decode(anchor, clean_up_tokenization_spaces=False))
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[:n] = torch.tensor([t[prefix:].lstrip(_JSON_WHITESPACE)[:1] in ("", ",", "}") for t in texts])
    return mask


def chat_text(tokenizer, prompt: str) -> str:
    """The grader prompt as one user turn, ending with the assistant's generation prompt."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise SpilloverError("the grader tokenizer has no chat template",
                             fix="use an instruct/chat model, or add a chat_template to its tokenizer_config.json")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def _extend(tokenizer, text: str, fed: list[int]) -> list[int]:
    """Token ids of ``text`` beyond ``fed``, which must be the tokenization of the text so far."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if ids[:len(fed)] != fed or len(ids) == len(fed):
        raise SpilloverError(f"the tokenizer merges the forced JSON with the text before it near {text[-30:]!r}",
                             where="local JSON grader", fix="use another grader model, or an API grader")
    return ids[len(fed):]


class LocalJsonGrader:
    """Exact-probability JSON grader on a local causal LM (see the module docstring for the contract)."""

    def __init__(self, model, tokenizer, *, min_mass: float = 0.25, batch_size: int = 8, decimals: int = 2,
                 compact: bool = False, name: str | None = None):
        if not 0.0 <= min_mass <= 1.0 or batch_size < 1 or decimals not in (0, 1, 2):
            raise ValueError(f"invalid min_mass={min_mass}, batch_size={batch_size} or decimals={decimals}")
        self.model, self.tokenizer = model, tokenizer
        self.min_mass, self.batch_size, self.decimals, self.compact = min_mass, batch_size, decimals, compact
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self._probe = chat_text(tokenizer, "Grade this.") + _PROBE_FIELD
        self._compiled: dict[str, list[tuple[FieldGrid, NumberTrie]]] = {}
        self._end_mask: torch.Tensor | None = None
        self._model_lock, self._queue_lock = threading.Lock(), threading.Lock()
        self._queue: list[tuple[str, dict, asyncio.AbstractEventLoop, asyncio.Future]] = []

    @classmethod
    def from_config(cls, config: LocalJsonGraderConfig) -> LocalJsonGrader:
        from spillover.models import load_model

        model, tokenizer, ref = load_model(config.model, device=config.device, dtype=config.dtype)
        return cls(model, tokenizer, min_mass=config.min_mass, batch_size=config.batch_size,
                   decimals=config.decimals, compact=config.compact, name=ref.display)

    def judge_identity(self) -> dict:
        """What makes two verdicts comparable: recorded next to rewards computed with this grader (the
        method name every judge backend shares)."""
        return {"kind": "local_hf_json", "version": VERSION, "model": self.name,
                "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
                "numbers": f"multiples of 10^-{self.decimals}, every exact spelling with 0..{self.decimals} decimals",
                "spellings": "' v' and 'v'" if self.compact else "' v'",
                "ends_when": "next token, after JSON whitespace, is empty or starts with ',' or '}'",
                "min_mass": self.min_mass}

    # -- public calls ---------------------------------------------------------------------------------
    async def grade(self, prompt: str, schema: dict) -> GradedJson:
        """The verdict for one grader prompt; concurrent calls share the model one batch at a time."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        with self._queue_lock:
            self._queue.append((prompt, schema, loop, done))
        await asyncio.to_thread(self._drain)
        return await done

    def grade_many(self, prompts: Sequence[str], schema: dict) -> list[GradedJson]:
        """One verdict per grader prompt, in order (sync; not thread-safe, ``grade`` serialises for you)."""
        fields = self._compile(schema)
        texts = [chat_text(self.tokenizer, p) for p in prompts]
        lengths = [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        order = sorted(range(len(texts)), key=lengths.__getitem__)  # similar lengths share a batch
        out: list[GradedJson | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            for i, result in zip(batch, self._grade_batch([texts[i] for i in batch], fields)):
                out[i] = result
        return out  # type: ignore[return-value]

    # -- internals ------------------------------------------------------------------------------------
    def _drain(self) -> None:
        with self._model_lock:
            with self._queue_lock:
                jobs, self._queue = self._queue, []
            groups: dict[str, list] = {}
            for job in jobs:
                if not job[3].done():  # a call that timed out meanwhile is not graded
                    groups.setdefault(json.dumps(job[1]), []).append(job)
            for group in groups.values():
                try:
                    results, error = self.grade_many([job[0] for job in group], group[0][1]), None
                except Exception as e:  # noqa: BLE001  (re-raised in each awaiting caller)
                    results, error = [None] * len(group), e
                for (_, _, loop, done), result in zip(group, results):
                    try:
                        loop.call_soon_threadsafe(_settle, done, result, error)
                    except RuntimeError:  # the caller's loop is closed: nobody is waiting
                        pass

    def _compile(self, schema: dict) -> list[tuple[FieldGrid, NumberTrie]]:
        key = json.dumps(schema)
        if key not in self._compiled:
            base = self.tokenizer(self._probe, add_special_tokens=False)["input_ids"]
            compiled = []
            for grid in field_grids(schema, self.decimals, self.compact):
                ids = [tuple(_extend(self.tokenizer, self._probe + text, base)) for _, text in grid.spellings]
                if len(set(ids)) != len(ids):
                    raise SpilloverError(f"two spellings of field {grid.name!r} tokenize the same",
                                         where="local JSON grader", fix="use another grader model")
                compiled.append((grid, NumberTrie.build([(i, list(t)) for (i, _), t in zip(grid.spellings, ids)])))
            self._compiled[key] = compiled
        return self._compiled[key]

    def _feed(self, segments: list[list[int]], cache, keep: torch.Tensor):
        """Append one left-padded segment per row to the cache; logits for each row's last token."""
        rows, width = len(segments), max(map(len, segments))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((rows, width), pad, dtype=torch.long)
        seg_keep = torch.zeros((rows, width), dtype=torch.long)
        for r, seg in enumerate(segments):
            ids[r, width - len(seg):], seg_keep[r, width - len(seg):] = torch.tensor(seg), 1
        keep = torch.cat([keep, seg_keep], dim=1)
        positions = (keep.cumsum(1) - 1).clamp(min=0)[:, -width:]
        device = next(self.model.parameters()).device
        out = self.model(input_ids=ids.to(device), attention_mask=keep.to(device), position_ids=positions.to(device),
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.past_key_values, keep, _at_least_fp32(out.logits[:, -1])

    def _value_probs(self, trie: NumberTrie, n_values: int, cache, keep: torch.Tensor, root: torch.Tensor):
        """(rows, n_values) float64 P(value) from one trie forward on the cache (then cropped off it)."""
        if self._end_mask is None or len(self._end_mask) != root.shape[-1]:
            self._end_mask = value_end_mask(self.tokenizer, root.shape[-1])
        return trie_value_probs(self.model, trie, cache, keep, root, self._end_mask, n_values)

    @torch.inference_mode()
    def _grade_batch(self, texts: list[str], fields: list[tuple[FieldGrid, NumberTrie]]) -> list[GradedJson]:
        rows = len(texts)
        fed: list[list[int]] = [[] for _ in range(rows)]
        json_text, soft, mass = [""] * rows, [{} for _ in range(rows)], [{} for _ in range(rows)]
        value: list[dict[str, Any]] = [{} for _ in range(rows)]
        failed: list[str | None] = [None] * rows
        cache, keep = None, torch.zeros((rows, 0), dtype=torch.long)
        for k, (grid, trie) in enumerate(fields):
            key = ("{" if k == 0 else ", ") + json.dumps(grid.name) + ":"
            segments = []
            for r in range(rows):
                json_text[r] += key
                segments.append(_extend(self.tokenizer, texts[r] + json_text[r], fed[r]))
                fed[r] += segments[-1]
            cache, keep, root = self._feed(segments, cache, keep)
            probs = self._value_probs(trie, len(grid.values), cache, keep, root)
            grid_values = torch.tensor(grid.values, dtype=torch.float64)
            for r in range(rows):
                m = float(probs[r].sum())
                finite = math.isfinite(m) and m > 0.0
                expected = float(probs[r] @ grid_values) / m if finite else math.nan
                mass[r][grid.name], soft[r][grid.name] = m, expected
                if failed[r] is None and (not finite or m < self.min_mass - _MASS_TOLERANCE):
                    failed[r] = f"field {grid.name!r}: mass {m:.3g} on valid values < {self.min_mass:g}"
                if grid.kind == "boolean":
                    value[r][grid.name] = expected > 0.5
                    chosen = 1 if expected > 0.5 else 0
                else:
                    value[r][grid.name] = min(grid.values[-1], max(grid.values[0], expected)) if finite else None
                    chosen = int((grid_values - expected).abs().argmin()) if finite else 0
                json_text[r] += grid.text_of(chosen)
        return [GradedJson(None if failed[r] else value[r], failed[r], soft=soft[r], mass=mass[r],
                           transcript=json_text[r] + "}", malformed=failed[r] is not None) for r in range(rows)]


def _settle(done: asyncio.Future, result: GradedJson | None, error: Exception | None) -> None:
    if done.done():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)
