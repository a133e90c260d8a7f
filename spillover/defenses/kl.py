"""KL to a reference model (arXiv 2508.06249, "KL-divergence regularisation"; paper lambda = 0.1).

The term is ``KL(pi_theta || pi_ref)`` per trained token (the SFT response, the GRPO completion), summed
over the vocabulary and averaged over the micro-batch's trained tokens; the trainer adds ``weight x`` it.
The reference is the model with its adapter disabled (the base, or with ``init_adapter`` the base without
the warm-up adapter), or ``reference: init-adapter`` = the frozen warm-up adapter, kept as a second
non-trainable adapter on the same model. One reference forward pass per micro-batch, shared with LDIFS.

``only_safe`` ("selective KL", the RL code's variant) restricts the term to rows marked
``spillover_source: safe`` (interleaved safe examples); micro-batches without such rows add 0.

GRPO also has TRL's own ``beta`` (GRPO config): a per-token k3 estimate ``exp(q - p) - (q - p) - 1`` of
the KL to the adapter-disabled model, computed from the sampled tokens only and folded into the policy
loss with TRL's loss aggregation. This defense is the exact KL over the whole vocabulary at every
completion token, mean over tokens, added outside the policy loss; use one or the other (both work).
The KL is of the untempered distributions (TRL divides the logits by the sampling temperature in its
own loss; the defense compares the models themselves).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from spillover.defenses._base import Defense, register_defense
from spillover.defenses._batch import keep_reference_hidden

SAFE_SOURCE = "safe"
#: Tokens whose full-vocabulary logits are built at once (memory: CHUNK_TOKENS x vocab x 4 bytes a tensor).
CHUNK_TOKENS = 64


def token_kl(policy_logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Per-row ``KL(softmax(policy) || softmax(ref))`` over the last dimension, in float32."""
    logp = torch.log_softmax(policy_logits.float(), dim=-1)
    logq = torch.log_softmax(ref_logits.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def _head_trains(head) -> bool:
    params = getattr(head, "parameters", None)
    return params is not None and any(p.requires_grad for p in params())


class _KLWithStoredGradient(torch.autograd.Function):
    """Per-token KL whose gradient with respect to the policy's final hidden states is computed in the
    forward pass, ``chunk`` tokens at a time, and stored as an (N, H) tensor.

    With ``z`` the policy logits, ``dKL/dz = p * (log p - log q - KL)``, pulled back through the LM head by
    one vector-Jacobian product. Per chunk this costs one reference head, one policy head forward and one
    head backward, and the softmax work once; the checkpointed path (:func:`_checkpointed_kl`) runs the
    policy head and the softmax twice more in the backward pass. Only valid when the head's own parameters
    are frozen (LoRA, the default): the stored gradient covers the hidden states only. Where the policy
    equals the reference the gradient is exactly zero (autograd through two log-softmaxes leaves rounding
    noise there, which Adam would turn into a full-size step)."""

    @staticmethod
    def forward(ctx, policy_final, ref_final, policy_head, ref_head, chunk):
        kls, grads = [], []
        for i in range(0, policy_final.shape[0], chunk):
            ref_logits = ref_head(ref_final[i:i + chunk]).float()
            with torch.enable_grad():
                hp = policy_final[i:i + chunk].detach().requires_grad_(True)
                logits = policy_head(hp)
                logp = torch.log_softmax(logits.detach().float(), dim=-1)
                diff = logp - torch.log_softmax(ref_logits, dim=-1)
                p = logp.exp()
                kl = (p * diff).sum(-1)
                (grad,) = torch.autograd.grad(logits, hp, (p * (diff - kl[:, None])).to(logits.dtype))
            kls.append(kl)
            grads.append(grad)
        ctx.save_for_backward(torch.cat(grads))
        return torch.cat(kls)

    @staticmethod
    def backward(ctx, grad_kl):
        (grad,) = ctx.saved_tensors
        return (grad_kl[:, None] * grad).to(grad.dtype), None, None, None, None


def _checkpointed_kl(policy_final, ref_final, policy_head, ref_head, chunk):
    from torch.utils.checkpoint import checkpoint

    def part(hp, hr):
        with torch.no_grad():
            ref_logits = ref_head(hr)
        return token_kl(policy_head(hp), ref_logits)

    pieces = []
    for i in range(0, policy_final.shape[0], chunk):
        hp, hr = policy_final[i:i + chunk], ref_final[i:i + chunk]
        pieces.append(checkpoint(part, hp, hr, use_reentrant=False) if hp.requires_grad else part(hp, hr))
    return torch.cat(pieces)


def chunked_kl(policy_final: torch.Tensor, ref_final: torch.Tensor, policy_head, ref_head,
               chunk: int = CHUNK_TOKENS) -> torch.Tensor:
    """Per-token KL from final hidden states, ``chunk`` tokens at a time: the (tokens, vocab) logits of one
    chunk exist at a time. With a frozen head (LoRA) the gradient is computed analytically in the forward
    pass (:class:`_KLWithStoredGradient`, about 1.8x faster); a trained head falls back to activation
    checkpointing, which also gives the head's own gradient."""
    if policy_final.requires_grad and torch.is_grad_enabled() and not _head_trains(policy_head):
        return _KLWithStoredGradient.apply(policy_final, ref_final, policy_head, ref_head, chunk)
    return _checkpointed_kl(policy_final, ref_final, policy_head, ref_head, chunk)


@register_defense("kl")
class KLDefense(Defense):
    """Penalise KL(policy || reference) on the trained tokens (paper weight 0.1).

    Per trained token, the exact KL over the vocabulary between the policy and the reference (adapter
    disabled, or the frozen init adapter), averaged over the micro-batch's trained tokens. With
    ``only_safe`` it acts on interleaved safe rows only (selective KL). For GRPO, TRL's ``beta`` is the
    sampled-token k3 alternative (see the module docs)."""

    needs = frozenset({"policy_logits", "ref_logits"})

    class Params(Defense.Params):
        weight: float = Field(0.1, ge=0, description="lambda: scale of the KL term (paper: 0.1); 0 = off.")
        only_safe: bool = Field(False, description="Apply only to rows marked spillover_source: safe (the interleave "
                                "defense marks its safe examples): selective KL.")
        reference: Literal["base", "init-adapter"] = Field(
            "base", description="base = the model with its adapter disabled; init-adapter = the frozen init_adapter "
            "(the warm-up adapter a run continues), kept on the same model.")

    def setup(self, model, tokenizer, ctx) -> None:
        keep_reference_hidden(model, [])  # KL reads only the final norm: the reference pass keeps no hidden states

    def loss_term(self, model, batch):
        policy, ref = batch.policy, batch.reference
        hp, hr = policy.final(), ref.final()
        if self.params.only_safe:
            keep = batch.rows(SAFE_SOURCE)[batch.token_rows()]
            self.log_metric("safe_tokens", float(keep.sum()))
            hp, hr = hp[keep], hr[keep]
        if hp.shape[0] == 0:
            return hp.sum() * 0.0
        return chunked_kl(hp, hr, policy.head, ref.head).sum() / hp.shape[0]
