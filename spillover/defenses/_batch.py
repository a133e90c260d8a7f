"""The batch a defense sees: one view of SFT and GRPO micro-batches, with lazily shared model outputs.

Layer convention (used by every defense, stated once): ``hidden[l]`` is the residual stream *after*
decoder layer ``l`` for ``l >= 1``, i.e. the output of ``layers[l - 1]``; ``hidden[0]`` is the token
embeddings. There are ``n_layers + 1`` of them, as in transformers' ``output_hidden_states`` (which
differs only in the last entry, where it applies the final norm; here the last entry is the raw output of
the last layer). Steering "at layer L" adds to the output of ``layers[L - 1]`` = ``hidden[L]``.

Policy outputs come from the trainer's own forward pass: :class:`Capture` hooks the embeddings, every
decoder layer and the final norm while TRL's SFT or GRPO loss runs, keeping the activations *with* their
autograd graph (no second policy pass). Logits are built from the captured final-norm output only at the
positions that predict trained tokens (TRL's fused LM head never builds the full ``(B, T, V)`` logits).
The reference outputs are one extra no-grad pass of the backbone with the adapter disabled (or the frozen
init adapter active), shared by all defenses of the micro-batch. Memory: by default that pass keeps every
hidden state; a defense that reads only some (LDIFS: K of them) declares them once in ``setup`` with
:func:`keep_reference_hidden`, and the pass then keeps only the declared ones plus the final-norm output
(what the logits are built from), so a reference pass holds K + 1 activations instead of L + 2 while the
trainer's graph is alive. Asking for an undeclared one reruns the pass keeping everything (correct, slower).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch

from spillover.errors import SpilloverError

REF_ADAPTER = "spillover_ref"


# ---------------------------------------------------------------- model anatomy
def decoder_parts(model):
    """``(decoder, embed, layers, norm, lm_head)`` of a (PEFT-wrapped) causal LM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    layers = getattr(decoder, "layers", None)
    norm = getattr(decoder, "norm", None)
    if decoder is None or layers is None or norm is None:
        raise SpilloverError(f"cannot find the decoder layers of {type(base).__name__}",
                             fix="use a decoder-only model with .model.layers and .model.norm (Llama, Qwen2, Mistral...)")
    return decoder, decoder.get_input_embeddings(), layers, norm, base.get_output_embeddings()


def n_layers(model) -> int:
    return len(decoder_parts(model)[2])


def _tensor(out):
    return out[0] if isinstance(out, tuple) else out


class Capture:
    """Record ``hidden[0..L]`` and the final-norm output of every forward pass while active (only those in
    ``keys`` when given: the others are never referenced, so they are freed as the pass goes on).

    Several passes in one window (TRL chunks a batch) are concatenated along the batch dimension."""

    def __init__(self, model, keys: frozenset | None = None):
        _, self.embed, self.layers, self.norm, _ = decoder_parts(model)
        self.keys = keys
        self._handles: list = []
        self.calls: list[dict[int | str, torch.Tensor]] = []

    def __enter__(self):
        def record(key):
            def hook(module, args, out):
                if key == 0:  # a new forward pass starts at the embeddings
                    self.calls.append({})
                if self.calls and (self.keys is None or key in self.keys):
                    self.calls[-1][key] = _tensor(out)
            return hook

        self._handles.append(self.embed.register_forward_hook(record(0)))
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_hook(record(i + 1)))
        self._handles.append(self.norm.register_forward_hook(record("norm")))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def get(self, key) -> torch.Tensor | None:
        parts = [c.get(key) for c in self.calls]
        if not parts or any(p is None for p in parts):
            return None
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


@contextlib.contextmanager
def reference_mode(model, reference: str = "base"):
    """Make ``model`` compute the reference: adapters disabled, or the frozen init adapter active (set on
    the LoRA layers directly, so the trainable adapter's ``requires_grad`` flags are never touched)."""
    if reference == "base":
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                yield
        else:
            yield
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer) and REF_ADAPTER in getattr(m, "lora_A", {})]
    if not layers:
        raise SpilloverError("the init-adapter reference is not loaded",
                             fix="set init_adapter in the training config, or use reference: base")
    saved = [m._active_adapter for m in layers]
    try:
        for m in layers:
            m._active_adapter = [REF_ADAPTER]
        yield
    finally:
        for m, a in zip(layers, saved):
            m._active_adapter = a


_REF_KEYS_ATTR = "_spillover_reference_hidden"


def keep_reference_hidden(model, layers) -> None:
    """Declare (in a defense's ``setup``) the hidden-state indices a defense reads from reference passes.
    Once any defense has declared, reference passes keep only the declared states and the final-norm output;
    without declarations they keep everything. Declarations of several defenses add up."""
    declared = getattr(model, _REF_KEYS_ATTR, frozenset())
    setattr(model, _REF_KEYS_ATTR, declared | {int(x) for x in layers})


def reference_keys(model) -> frozenset | None:
    """What a reference pass keeps: the declared hidden states plus "norm", or None (everything)."""
    declared = getattr(model, _REF_KEYS_ATTR, None)
    return None if declared is None else frozenset(declared) | {"norm"}


def add_reference_adapter(model, adapter_dir: str) -> None:
    """Load ``adapter_dir`` as a second, frozen adapter on the same model (no model copy), once."""
    if REF_ADAPTER in getattr(model, "peft_config", {}):
        return
    active = model.active_adapter
    model.load_adapter(str(adapter_dir), adapter_name=REF_ADAPTER, is_trainable=False)
    model.set_adapter(active)  # load_adapter leaves the trainable one active; keep it that way explicitly
    for n, p in model.named_parameters():
        if f".{REF_ADAPTER}." in n:
            p.requires_grad_(False)


# ---------------------------------------------------------------- the batch view
class Outputs:
    """One model's outputs on a micro-batch: ``hidden(l)`` (B, T, H) and ``logits()`` at the positions that
    predict trained tokens, (N, V), ordered as ``batch.trained_mask[:, 1:]`` is row-major."""

    def __init__(self, batch: "DefenseBatch", get_hidden, lm_head):
        self._batch, self._get, self._lm_head = batch, get_hidden, lm_head
        self._logits = None

    def hidden(self, layer: int) -> torch.Tensor:
        h = self._get(layer)
        if h is None:
            raise SpilloverError(f"hidden state {layer} was not recorded", fix="use layers 0..n_layers")
        return h

    def final(self) -> torch.Tensor:
        """The final-norm hidden states at the positions that predict trained tokens, (N, H)."""
        return self._get("norm")[:, :-1][self._batch.trained_mask[:, 1:].bool()]

    def head(self, final: torch.Tensor) -> torch.Tensor:
        """This model's LM head applied to (rows of) :meth:`final`: logits without building all (N, V) at once."""
        return self._lm_head(final)

    def logits(self) -> torch.Tensor:
        if self._logits is None:
            self._logits = self.head(self.final())
        return self._logits


class DefenseBatch(Mapping):
    """A micro-batch as every defense sees it, for SFT and GRPO alike.

    ``input_ids``/``attention_mask`` (B, T), ``trained_mask`` (B, T: 1 on tokens the policy is trained
    on: the SFT response, the GRPO completion), ``sources`` (one ``spillover_source`` per row, "task"
    unless marked), ``policy``/``reference`` (:class:`Outputs`, computed on first use, then shared),
    ``trainer_outputs`` (TRL's own outputs, when it returned them). It is also a read-only mapping over
    the trainer's raw inputs (``completion_ids``, ``advantages``...)."""

    def __init__(self, model, inputs: dict, method: str, sources: list[str] | None = None):
        self.model, self.raw, self.method = model, inputs, method
        if "completion_ids" in inputs:  # TRL GRPO
            prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
            self.input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
            self.attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            self.trained_mask = torch.cat([torch.zeros_like(inputs["prompt_mask"]), inputs["completion_mask"]], dim=1)
        else:  # TRL SFT: labels are input_ids with -100 outside the response
            self.input_ids = inputs["input_ids"]
            self.attention_mask = inputs.get("attention_mask", torch.ones_like(self.input_ids))
            labels = inputs.get("labels")
            self.trained_mask = (labels != -100).long() if labels is not None else self.attention_mask.clone()
        n = self.input_ids.shape[0]
        self.sources = list(sources) if sources is not None else ["task"] * n
        self.trainer_outputs = None
        self.reference_name = "base"
        self._capture: Capture | None = None
        self._policy: Outputs | None = None
        self._refs: dict[str, Outputs] = {}
        self.reference_captures: dict[str, Capture] = {}  # what each reference pass holds (memory: see module doc)
        self.forward_passes = {"policy": 0, "reference": 0}

    # Mapping over the raw inputs
    def __getitem__(self, key):
        return self.raw[key]

    def __iter__(self):
        return iter(self.raw)

    def __len__(self):
        return len(self.raw)

    def rows(self, source: str) -> torch.Tensor:
        """Bool (B,) mask of the rows whose ``spillover_source`` is ``source``."""
        return torch.tensor([s == source for s in self.sources], device=self.input_ids.device)

    def token_rows(self) -> torch.Tensor:
        """For each logit row of :meth:`Outputs.logits`, the batch row it belongs to, (N,)."""
        pos = self.trained_mask[:, 1:].bool()
        return torch.arange(pos.shape[0], device=pos.device)[:, None].expand_as(pos)[pos]

    def attach_capture(self, capture: Capture | None) -> None:
        self._capture = capture

    @property
    def policy(self) -> Outputs:
        if self._policy is None:
            cap = self._capture
            shape = tuple(self.input_ids.shape)
            if cap is None or cap.get("norm") is None or tuple(cap.get("norm").shape[:2]) != shape:
                cap = self._forward(reference=None)  # the trainer's pass was not recorded: run one, with grad
            _, _, _, _, lm_head = decoder_parts(self.model)
            self._policy = Outputs(self, cap.get, lm_head)
        return self._policy

    def reference_outputs(self, reference: str = "base") -> Outputs:
        if reference not in self._refs:
            _, _, _, _, lm_head = decoder_parts(self.model)
            self.reference_captures[reference] = self._reference_pass(reference, reference_keys(self.model))

            def get(key):
                cap = self.reference_captures[reference]
                if cap.keys is not None and key not in cap.keys:  # undeclared: one more pass, keeping everything
                    cap = self.reference_captures[reference] = self._reference_pass(reference, None)
                return cap.get(key)

            def lm_head_no_grad(x, _head=lm_head):
                with torch.no_grad(), reference_mode(self.model, reference):
                    return _head(x)

            self._refs[reference] = Outputs(self, get, lm_head_no_grad)
        return self._refs[reference]

    def _reference_pass(self, reference: str, keys: frozenset | None) -> Capture:
        with torch.no_grad():
            return self._forward(reference=reference, keys=keys)

    @property
    def reference(self) -> Outputs:
        return self.reference_outputs(self.reference_name)

    def _forward(self, reference: str | None, keys: frozenset | None = None) -> Capture:
        decoder = decoder_parts(self.model)[0]
        ctx = reference_mode(self.model, reference) if reference else contextlib.nullcontext()
        with ctx, Capture(self.model, keys) as cap:
            decoder(input_ids=self.input_ids, attention_mask=self.attention_mask, use_cache=False)
        self.forward_passes["reference" if reference else "policy"] += 1
        return cap


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask``; 0 (with a graph) when the mask is empty."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def supervised_loss(model, tokenizer, conversations: list[list[dict]], max_length: int = 512) -> torch.Tensor:
    """Mean token NLL of each conversation's final assistant turn given the turns before it (the SFT loss)."""
    ids, masks = [], []
    for messages in conversations:
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        full = list(full)[:max_length]
        ids.append(full)
        masks.append([0] * min(len(prompt), len(full)) + [1] * max(len(full) - len(prompt), 0))
    width = max(len(i) for i in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    input_ids = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=device)
    attn = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=device)
    trained = torch.tensor([m + [0] * (width - len(m)) for m in masks], device=device)
    logits = model(input_ids=input_ids, attention_mask=attn, use_cache=False).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1),
                                            reduction="none").view_as(input_ids[:, 1:])
    return masked_mean(nll, trained[:, 1:])
