"""LDIFS: keep the policy's internal features close to the reference's (arXiv 2508.06249 v3; weight 1.0).

The features of a token are the hidden states of ``layers`` evenly spaced layers, indices
``round(linspace(0, L - 1, layers))`` over the ``L = n_layers + 1`` hidden states (``hidden[0]`` = the
embeddings, ``hidden[l]`` = output of decoder layer ``l``; see :mod:`spillover.defenses._batch`), each
L2-normalised per token and concatenated. The term is the squared l2 distance between the policy's and
the reference's concatenated features, averaged over the micro-batch's non-padding tokens (prompt and
response: the features of the whole input, as in LDIFS).

Unlike the papers' code, the gradient flows through the policy's features (they are taken from the
trainer's own forward pass, with their graph); only the reference's are constant.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from spillover.defenses._base import Defense, register_defense
from spillover.defenses._batch import keep_reference_hidden, n_layers


def feature_layers(n_hidden: int, k: int) -> list[int]:
    """``k`` evenly spaced hidden-state indices in ``[0, n_hidden - 1]`` (duplicates dropped)."""
    return sorted({int(round(x)) for x in np.linspace(0, n_hidden - 1, min(k, n_hidden))})


def feature_distance(policy_hidden: list[torch.Tensor], ref_hidden: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Mean over ``mask`` tokens of ``sum_l ||p_l/|p_l| - r_l/|r_l| ||^2``."""
    total = 0.0
    for p, r in zip(policy_hidden, ref_hidden, strict=True):
        p = torch.nn.functional.normalize(p.float(), dim=-1)
        r = torch.nn.functional.normalize(r.float(), dim=-1)
        total = total + ((p - r) ** 2).sum(-1)
    m = mask.to(total.dtype)
    return (total * m).sum() / m.sum().clamp(min=1)


@register_defense("ldifs")
class LDIFSDefense(Defense):
    """Penalise the distance between policy and reference features at evenly spaced layers (paper weight 1.0).

    Squared l2 distance of concatenated per-layer L2-normalised hidden states of ``layers`` layers at
    linspace(0, L-1, K), with the gradient flowing through the policy's features."""

    needs = frozenset({"policy_hidden", "ref_hidden"})

    class Params(Defense.Params):
        weight: float = Field(1.0, ge=0, description="lambda: scale of the feature distance (paper v3: 1.0); 0 = off.")
        layers: int = Field(5, ge=1, description="K: number of evenly spaced hidden states compared (paper: 5).")
        reference: Literal["base", "init-adapter"] = Field(
            "base", description="base = the model with its adapter disabled; init-adapter = the frozen init_adapter.")

    def setup(self, model, tokenizer, ctx) -> None:
        self.layer_ids = feature_layers(n_layers(model) + 1, self.params.layers)
        keep_reference_hidden(model, self.layer_ids)  # the reference pass then keeps only these K states

    def loss_term(self, model, batch):
        policy = [batch.policy.hidden(l) for l in self.layer_ids]
        ref = [batch.reference.hidden(l) for l in self.layer_ids]
        return feature_distance(policy, ref, batch.attention_mask)

    def manifest(self) -> dict:
        return {"layer_ids": getattr(self, "layer_ids", None)}
