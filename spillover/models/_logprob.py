"""Mean per-token log-probability of assistant answers given chat prompts (teacher forcing, no sampling).

Contract of :func:`answer_logprobs`: for each (conversation, answer), the conversation plus an assistant
turn holding ``answer`` is rendered with the tokenizer's chat template and tokenized as one sequence; the
value is the mean over the *scored tokens* of ``log p(token | everything before it)``.

Scored tokens (:func:`answer_span`): the tokens that cover the answer's text, plus the end-of-turn token
right after it when that token is a special token (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``, ...).
Including the end-of-turn token makes "the answer, and then stop" the event scored, so an answer that is
a prefix of a likelier one is not rewarded; the same rule applies to every answer. Template scaffolding
(role headers, an empty ``<think></think>`` block, the newline after the end-of-turn token) is never
scored. The answer is located in the rendered text after the part shared with the prompt rendered with
``add_generation_prompt=True``, then mapped to tokens with the fast tokenizer's offsets; a token that
straddles the boundary between template text and answer text counts as an answer token.

Batching: sequences are de-duplicated and sorted by length then content (longest first, so memory
trouble shows in the first batch), so batches depend on the set of inputs, not their order: identical
inputs get bit-identical values, and reordering or swapping inputs does not change any value. Batches
are right-padded with an attention mask and scored under ``torch.inference_mode`` in eval mode. Only
the logits from the first scored position on are computed where the model accepts ``logits_to_keep``;
log-softmax runs in float32 on scored positions only. Results are deterministic for fixed inputs and
batch size; a different batch size changes values only by floating-point rounding of padded products.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AnswerSpan:
    """One tokenized conversation+answer; tokens ``input_ids[start:end]`` are the scored ones."""

    input_ids: tuple[int, ...]
    start: int
    end: int

    @property
    def scored_ids(self) -> tuple[int, ...]:
        return self.input_ids[self.start:self.end]


def _render(tokenizer, messages: list[dict], *, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _is_special(tokenizer, token_id: int) -> bool:
    if token_id in tokenizer.all_special_ids:
        return True
    added = tokenizer.added_tokens_decoder.get(token_id)
    return bool(added is not None and added.special)


def answer_span(tokenizer, conversation: Sequence[dict], answer: str) -> AnswerSpan:
    """Tokenize ``conversation`` + assistant ``answer`` and find the scored tokens (see module docstring)."""
    if not conversation or conversation[-1].get("role") != "user":
        raise ValueError("conversation must be a non-empty list of messages ending in a user turn")
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError("answer must be a non-empty string")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("answer_span needs a fast tokenizer (offset mapping); load it with use_fast=True")
    messages = list(conversation)
    prompt_text = _render(tokenizer, messages, add_generation_prompt=True)
    full_text = _render(tokenizer, messages + [{"role": "assistant", "content": answer}], add_generation_prompt=False)
    shared = len(os.path.commonprefix([prompt_text, full_text]))
    begin, text = -1, answer
    for text in (answer, answer.strip()):  # some templates strip the content
        begin = full_text.find(text, shared)
        if begin >= 0:
            break
    if begin < 0:
        raise ValueError("the chat template changes the answer text, so its tokens cannot be located")
    stop = begin + len(text)
    enc = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    start = next(i for i, (_, b) in enumerate(offsets) if b > begin)
    end = next((i for i, (a, _) in enumerate(offsets) if i >= start and a >= stop), len(ids))
    if end < len(ids) and _is_special(tokenizer, ids[end]):
        end += 1
    if start < 1:
        raise ValueError("the answer starts the sequence; there is no context to condition on")
    return AnswerSpan(tuple(ids), start, end)


def _accepts_logits_to_keep(model) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def score_spans(model, spans: Sequence[AnswerSpan], *, pad_id: int, batch_size: int = 16,
                progress: Callable[[int], None] | None = None) -> list[float]:
    """Mean log-probability of each span's scored tokens, batched as described in the module docstring."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    unique: dict[AnswerSpan, int] = {}  # span -> how many inputs share it
    for span in spans:
        unique[span] = unique.get(span, 0) + 1
    todo = sorted(unique, key=lambda s: (-len(s.input_ids), s.input_ids, s.start))  # by content, not input order
    device, keep_ok = _model_device(model), _accepts_logits_to_keep(model)
    values: dict[AnswerSpan, float] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for lo in range(0, len(todo), batch_size):
                batch = todo[lo:lo + batch_size]
                values.update(zip(batch, _score_batch(model, batch, pad_id, device, keep_ok)))
                if progress is not None:
                    progress(sum(unique[s] for s in batch))
    finally:
        model.train(was_training)
    return [values[s] for s in spans]


def _score_batch(model, batch: list[AnswerSpan], pad_id: int, device, keep_ok: bool) -> list[float]:
    width = max(len(s.input_ids) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, span in enumerate(batch):
        ids[row, :len(span.input_ids)] = torch.tensor(span.input_ids)
        mask[row, :len(span.input_ids)] = 1
    first = min(s.start for s in batch) - 1  # first position whose logits predict a scored token
    extra = {"logits_to_keep": width - first} if keep_ok else {}
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, **extra).logits
    shift = width - logits.shape[1]  # logits[:, j] belongs to position j + shift
    out = []
    for row, span in enumerate(batch):
        positions = torch.arange(span.start - 1, span.end - 1, device=logits.device)
        targets = ids[row, span.start:span.end].to(logits.device)
        logp = logits[row, positions - shift].float().log_softmax(-1)
        out.append(logp.gather(-1, targets[:, None]).mean().item())
    return out


def answer_logprobs(model, tokenizer, conversations: Sequence[Sequence[dict]], answers: Sequence[str],
                    batch_size: int = 16, progress: Callable[[int], None] | None = None) -> list[float]:
    """Mean per-token log-probability of ``answers[i]`` as the assistant reply to ``conversations[i]``.

    Each conversation is a message list ending in a user turn (an optional system message first);
    ``progress(n)`` is called after each batch with the number of inputs it finished.
    """
    if len(conversations) != len(answers):
        raise ValueError(f"{len(conversations)} conversations but {len(answers)} answers")
    spans = [answer_span(tokenizer, conv, ans) for conv, ans in zip(conversations, answers)]
    return score_spans(model, spans, pad_id=_pad_id(tokenizer), batch_size=batch_size, progress=progress)
