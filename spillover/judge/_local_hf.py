"""Open-weights logprob judge: the exact expected 0..100 score from any Hugging Face chat model.

The judge prompt is one user message; the tokenizer's chat template (``add_generation_prompt=True``)
wraps it, and we read the model's distribution over its answer. Unlike an API judge (first-token
top-k only, see ``_aggregate``), we have the weights, so every integer 0..100 gets its exact
probability even when the tokenizer spells it with several tokens (SmolLM2, Qwen and Llama-2 split
digits: "100" is "1","0","0"; Llama-3 groups up to three digits, so its trie is smaller):

  P(n) = sum over spellings s of n:  P(tokens of s | prompt) * P(s is complete | prompt, s)

Spellings. ``"42"`` as the tokenizer writes it right after the generation prompt: we encode
``template_text + "42"`` and strip the template's tokens (so a tokenizer that adds a word-start
marker there gets it). With ``leading_space=True`` ``" 42"`` is a second spelling of 42 (what
``aggregate_score`` also merges); it roughly doubles the extra work, so it is off by default.
Only the tokenizer's canonical split is counted: a model that writes "100" as "10","0" where the
tokenizer would write "100" loses that (small) probability from the numeric mass.

Completion. A spelling is complete when the next token does not start with an ASCII digit (its
vocabulary string, so byte-level "Ġ5" and SentencePiece "▁5" start a new word, not a digit).
So "1" is not counted inside "10", "0" not inside "007", "100" not inside "1000"; "42<|im_end|>",
"42." and "42.5" count as 42 (the prompt asks for an integer; the integer part is what was written
first). Mass on "101" or "007" is simply not numeric, matching ``aggregate_score``'s canonical forms.

Cost. The prompts are encoded once (left-padded batch); the trie of all spellings' tokens (101
nodes for a digit-splitting tokenizer) then runs as ONE extra forward that reuses the prompt's KV
cache, with a custom 4D attention mask letting each trie node see the prompt and its own ancestors.
A judgment costs about one forward over the prompt plus ~101 tokens whose full-vocabulary logits
are needed (each node's softmax normaliser), so short prompts pay relatively more. Needs the ``eager`` or
``sdpa`` attention implementation (a custom mask) and no sliding window shorter than the prompt.
``score_bruteforce`` is the reference: every spelling as its own full sequence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pydantic import Field

from spillover.config import StrictModel
from spillover.errors import SpilloverError
from spillover.judge._aggregate import _MASS_TOLERANCE, JudgeScore

MAX_SCORE = 100
_DIGITS = frozenset("0123456789")
_PROBE = [{"role": "user", "content": "Rate this from 0 to 100."}]
_MASKABLE_ATTENTION = ("eager", "sdpa")
VERSION = 1


class LocalHFJudgeConfig(StrictModel):
    model: str = Field("embedded", description="Judge model: 'embedded', a local HF folder or a hub id. "
                       "Must be a chat model (it needs a chat template).")
    device: str = Field("auto", description="Device: auto (CUDA when available), cpu, cuda, cuda:1 ...")
    dtype: str = Field("auto", description="Weights dtype: auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.")
    min_mass: float = Field(0.25, ge=0.0, le=1.0, description="Below this probability on the numbers 0..100 "
                            "the judgment is unscored (score None), as for API judges.")
    batch_size: int = Field(8, ge=1, description="Prompts per forward. Memory grows with batch_size x "
                            "(prompt length + 101 x vocabulary size) floats.")
    leading_space: bool = Field(False, description="Also count ' 42' (space first) as 42. Needed for models "
                                "that answer with a space; about doubles the cost beyond the prompt.")


@dataclass(frozen=True)
class NumberTrie:
    """Token trie of value spellings (here 0..100), nodes in breadth-first order (parents before children).

    token[i]: token id of node i; parent[i]: index of its parent node, -1 for children of the root;
    depth[i]: 1 for children of the root; sees[i, j]: node j is node i or one of its ancestors;
    ends: (value, node) for every spelling, the node holding its last token.
    """

    token: torch.Tensor
    parent: torch.Tensor
    depth: torch.Tensor
    sees: torch.Tensor
    ends: tuple[tuple[int, int], ...]

    @classmethod
    def build(cls, spellings: Sequence[tuple[int, Sequence[int]]]) -> NumberTrie:
        children: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
        token, parent, depth, ends = [], [], [], []
        for value, ids in spellings:
            node = -1
            for tok in ids:
                if (node, tok) not in children:
                    children[(node, tok)] = len(token)
                    token.append(tok)
                    parent.append(node)
                    depth.append(depth[node] + 1 if node >= 0 else 1)
                node = children[(node, tok)]
            ends.append((value, node))
        order = sorted(range(len(token)), key=lambda i: (depth[i], i))  # breadth first
        rank = {old: new for new, old in enumerate(order)}
        parent = [rank[parent[i]] if parent[i] >= 0 else -1 for i in order]
        sees = torch.eye(len(order), dtype=torch.bool)
        for i in range(len(order)):
            if parent[i] >= 0:
                sees[i] |= sees[parent[i]]  # parents come first, so their rows are complete
        return cls(torch.tensor([token[i] for i in order]), torch.tensor(parent),
                   torch.tensor([depth[i] for i in order]), sees, tuple((v, rank[n]) for v, n in ends))


def number_spellings(tokenizer, leading_space: bool = False) -> list[tuple[int, list[int]]]:
    """(value, token ids) of "0".."100" (and " 0".." 100") as tokenized right after the generation prompt."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise SpilloverError("the judge tokenizer has no chat template",
                             fix="use an instruct/chat model, or add a chat_template to its tokenizer_config.json")
    text = tokenizer.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True)
    base = tokenizer(text, add_special_tokens=False)["input_ids"]
    spellings = []
    for prefix in ("", " ") if leading_space else ("",):
        for value in range(MAX_SCORE + 1):
            ids = tokenizer(text + prefix + str(value), add_special_tokens=False)["input_ids"]
            if ids[:len(base)] != base or len(ids) == len(base):
                raise SpilloverError(f"the tokenizer merges {prefix + str(value)!r} with the end of the generation "
                                     "prompt, so the number's tokens cannot be scored on their own",
                                     fix="use another judge model, or the API judge (first-token logprobs)")
            spellings.append((value, ids[len(base):]))
    return spellings


def digit_start_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    """Bool (vocab_size,): the token's vocabulary string starts with an ASCII digit (continues a number)."""
    n = min(len(tokenizer), vocab_size)
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[:n] = torch.tensor([bool(p) and p[0] in _DIGITS for p in pieces])
    return mask


def _check_model(model, length: int) -> None:
    impl = getattr(model.config, "_attn_implementation", "eager")
    if impl not in _MASKABLE_ATTENTION:
        raise SpilloverError(f"the local judge needs a custom attention mask, which attn_implementation={impl!r} "
                             "does not take", fix="load the judge model with attn_implementation='sdpa' (or 'eager')")
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True) and length > window:
        raise SpilloverError(f"judge prompt of {length} tokens exceeds the model's sliding window ({window})",
                             fix="shorten the judge prompt or use a judge model without sliding-window attention")


def combine(probs: torch.Tensor, min_mass: float, top_token: str | None = None) -> JudgeScore:
    """Score from P(n) for n = 0..100, under the same mass rule and tolerance as ``aggregate_score``."""
    if not 0.0 <= min_mass <= 1.0:
        raise ValueError(f"min_mass must be in [0, 1], got {min_mass}")
    probs = probs.detach().double().cpu()
    if not torch.isfinite(probs).all():
        return JudgeScore.unscored("non-finite probabilities from the judge model", top_token=top_token)
    mass = float(probs.sum())
    if mass <= 0.0:
        return JudgeScore.unscored(f"no probability on the numbers 0..{MAX_SCORE} (top token {top_token!r})",
                                   top_token=top_token)
    if mass < min_mass - _MASS_TOLERANCE:
        return JudgeScore.unscored(f"numeric mass {mass:.3g} < {min_mass:g} (top token {top_token!r})",
                                   numeric_mass=mass, top_token=top_token)
    score = float((probs * torch.arange(len(probs), dtype=torch.float64)).sum()) / mass
    return JudgeScore(score=min(float(MAX_SCORE), max(0.0, score)), numeric_mass=mass, top_token=top_token)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _encode(tokenizer, prompt: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def trie_value_probs(model, trie: NumberTrie, cache, keep: torch.Tensor, root: torch.Tensor,
                     ends_value: torch.Tensor, n_values: int) -> torch.Tensor:
    """(rows, n_values) float64 P(value) from ONE forward of ``trie`` on a prefix's KV ``cache``.

    ``keep`` (rows, cols) marks the real (not left-padding) prefix tokens the cache holds; ``root``
    (rows, V) are the logits after the prefix; ``ends_value`` (V,) bool marks the next tokens that end
    a spelling. P(value) = sum over its spellings of P(spelling tokens) * P(next token ends it). Each
    trie node attends to the real prefix tokens and its ancestors (additive 4D mask, eager and sdpa);
    the trie's entries are cropped off ``cache`` again, so the caller can go on feeding it.
    """
    rows, cols, n_nodes = keep.shape[0], keep.shape[1], len(trie.token)
    device, dtype = root.device, next(model.parameters()).dtype
    _check_model(model, cols + int(trie.depth.max()))
    visible = torch.cat([keep.bool()[:, None, :].expand(rows, n_nodes, cols),
                         trie.sees[None].expand(rows, n_nodes, n_nodes)], dim=2)
    mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, torch.finfo(dtype).min)
    out = model(input_ids=trie.token[None].expand(rows, -1).to(device), attention_mask=mask[:, None].to(device),
                position_ids=(keep.sum(1)[:, None] + trie.depth[None] - 1).to(device),
                past_key_values=cache, use_cache=True)
    cache.crop(-n_nodes)
    logits = torch.cat([root[:, None], _at_least_fp32(out.logits)], dim=1)  # (rows, 1 + nodes, V)
    del out
    src = (trie.parent + 1).to(device)  # row of the parent's logits; 0 is the root
    step = logits[torch.arange(rows, device=device)[:, None], src[None], trie.token.to(device)[None]]
    shift = logits.amax(dim=-1, keepdim=True)
    weights = logits.sub_(shift).exp_()  # in place: one exp pass gives both normalisers
    norm = weights.sum(-1).log() + shift[..., 0]  # log softmax denominator per row
    ended = (weights @ ends_value.to(device=device, dtype=weights.dtype)).log() + shift[..., 0]
    path = (step - norm[:, src]).cpu().double() @ trie.sees.T.double()  # log P(tokens up to and including node)
    complete = path + (ended - norm)[:, 1:].cpu().double()  # ... and the next token ends the spelling
    values, nodes = (torch.tensor(column) for column in zip(*trie.ends))
    probs = torch.zeros(rows, n_values, dtype=torch.float64)
    return probs.index_add_(1, values, complete[:, nodes].exp())  # sums the spellings of each value


class LocalHFJudge:
    """Exact logprob judge on a local causal LM. Scores are invariant to batch size (up to float round-off)."""

    def __init__(self, model, tokenizer, *, min_mass: float = 0.25, batch_size: int = 8,
                 leading_space: bool = False, name: str | None = None):
        if not 0.0 <= min_mass <= 1.0 or batch_size < 1:
            raise ValueError(f"invalid min_mass={min_mass} or batch_size={batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.min_mass, self.batch_size, self.leading_space = min_mass, batch_size, leading_space
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.trie = NumberTrie.build(number_spellings(tokenizer, leading_space))
        self._ends_number: torch.Tensor | None = None

    @classmethod
    def from_config(cls, config: LocalHFJudgeConfig) -> LocalHFJudge:
        from spillover.models import load_model

        model, tokenizer, ref = load_model(config.model, device=config.device, dtype=config.dtype)
        return cls(model, tokenizer, min_mass=config.min_mass, batch_size=config.batch_size,
                   leading_space=config.leading_space, name=ref.display)

    def judge_identity(self) -> dict:
        """What makes two judgments comparable: written next to every score."""
        return {"kind": "local_hf", "version": VERSION, "model": self.name,
                "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
                "spellings": "n and ' n'" if self.leading_space else "n",
                "complete_when": "next token does not start with an ASCII digit", "min_mass": self.min_mass}

    def score_many(self, prompts: Sequence[str]) -> list[JudgeScore]:
        """One JudgeScore per judge prompt (a user message), in order."""
        probs, tops = self.number_probs(prompts)
        return [combine(p, self.min_mass, t) for p, t in zip(probs, tops)]

    def number_probs(self, prompts: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
        """(P(n) for n = 0..100 per prompt as float64 (len(prompts), 101), most likely first token per prompt)."""
        encoded = [_encode(self.tokenizer, p) for p in prompts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
        probs = torch.zeros(len(encoded), MAX_SCORE + 1, dtype=torch.float64)
        tops: list[str] = [""] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            batch_probs, batch_tops = self._judge_batch([encoded[i] for i in batch])
            for row, i in enumerate(batch):
                probs[i], tops[i] = batch_probs[row], batch_tops[row]
        return probs, tops

    @torch.inference_mode()
    def _judge_batch(self, encoded: list[list[int]]) -> tuple[torch.Tensor, list[str]]:
        trie, model = self.trie, self.model
        device = next(model.parameters()).device
        width, rows = max(map(len, encoded)), len(encoded)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((rows, width), pad, dtype=torch.long)
        keep = torch.zeros((rows, width), dtype=torch.long)
        for r, seq in enumerate(encoded):  # left padding: every prompt ends at the last column
            ids[r, width - len(seq):], keep[r, width - len(seq):] = torch.tensor(seq), 1
        positions = (keep.cumsum(1) - 1).clamp(min=0)
        out = model(input_ids=ids.to(device), attention_mask=keep.to(device), position_ids=positions.to(device),
                    use_cache=True, logits_to_keep=1)
        root = _at_least_fp32(out.logits[:, -1])  # (rows, V): the first answer token
        top_ids = root.argmax(-1).tolist()
        if self._ends_number is None or len(self._ends_number) != root.shape[-1]:
            self._ends_number = ~digit_start_mask(self.tokenizer, root.shape[-1])
        probs = trie_value_probs(model, trie, out.past_key_values, keep, root, self._ends_number, MAX_SCORE + 1)
        tops = self.tokenizer.convert_ids_to_tokens(top_ids)
        return probs, [self.tokenizer.convert_tokens_to_string([t]) for t in tops]


@torch.inference_mode()
def score_bruteforce(model, tokenizer, prompt: str, *, min_mass: float = 0.25,
                     leading_space: bool = False) -> JudgeScore:
    """Reference for LocalHFJudge: each spelling of 0..100 scored as its own full sequence, no cache, no trie."""
    return combine(bruteforce_number_probs(model, tokenizer, prompt, leading_space=leading_space), min_mass)


@torch.inference_mode()
def bruteforce_number_probs(model, tokenizer, prompt: str, *, leading_space: bool = False) -> torch.Tensor:
    """P(n) for n = 0..100 (float64) from 101 (or 202) separate forwards of prompt + number tokens."""
    device = next(model.parameters()).device
    prompt_ids = _encode(tokenizer, prompt)
    probs = torch.zeros(MAX_SCORE + 1, dtype=torch.float64)
    digit_mask = None
    for value, number_ids in number_spellings(tokenizer, leading_space):
        ids = torch.tensor([prompt_ids + number_ids], device=device)
        # The whole sequence runs through the model; only the last len(number_ids) + 1 positions need
        # logits: the one before each number token (predicting it) and the one after the number.
        logits = model(input_ids=ids, logits_to_keep=len(number_ids) + 1).logits[0]
        logp = torch.log_softmax(_at_least_fp32(logits), dim=-1)
        if digit_mask is None:
            digit_mask = digit_start_mask(tokenizer, logp.shape[-1]).to(device)
        total = sum(float(logp[k, tok]) for k, tok in enumerate(number_ids))
        total += float(torch.logsumexp(logp[-1].masked_fill(digit_mask, -math.inf), dim=-1))
        probs[value] += math.exp(total)
    return probs
