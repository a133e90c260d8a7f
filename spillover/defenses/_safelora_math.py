"""SafeLoRA's linear algebra on plain tensors (arXiv 2405.16833), kept apart so it is tested on its own.

For one linear module with weight shape ``(out, in)``:

- alignment matrix ``V = W_aligned - W_base``;
- projection matrix ``C = V Vᵀ / ‖V‖_F`` (``out x out``; the paper's exact form: divided by the
  Frobenius norm, not its square, so ``C`` is a scaled projection, not an idempotent one);
- a LoRA update ``ΔW = s·B·A`` (``B``: ``out x r``, ``A``: ``r x in``, ``s`` = alpha/r) is judged by
  ``cos(ΔW, CΔW)`` on the flattened matrices (``s`` cancels), and a module is projected by replacing
  ``B`` with ``B' = C·B``, so ``ΔW' = s·C·B·A = CΔW``;
- the paper's ``C`` has eigenvalues ``σᵢ²/‖V‖_F``, so its effect scales with ``V``: a small ``V`` (e.g. a
  short safety fine-tune as a proxy pair) shrinks projected updates toward zero. The ``orthogonal``
  variant (not the paper's) uses the projector ``U Uᵀ`` onto ``V``'s column space instead;
- ``Pdst`` (the paper's diagnostic, higher = closer to the projected weights): the mean over modules of
  ``1 / (1 + ‖B_final - C·B‖_F)``, which is 1 for a projected module.

``C`` is stored as a factor ``F`` with ``C = F Fᵀ``, computed exactly without an SVD: with ``V = P Q``
(an adapter's update ``s·B·A``, or a difference of adapters, keeps ``P`` and ``Q`` separate; a full
weight difference has ``Q = I``) and the reduced QR ``Qᵀ = Q₁ R``, ``V Vᵀ = (P Rᵀ)(P Rᵀ)ᵀ``, so
``F = P Rᵀ / √‖V‖_F`` and ``‖V‖_F = ‖P Rᵀ‖_F``. For a full ``V`` that is ``V/√‖V‖_F`` when
``in <= out`` and ``Rᵀ/√‖V‖_F`` from ``Vᵀ = Q₁ R`` otherwise. ``F`` has ``min(out, in)`` columns, or
``k`` for a rank-k adapter difference (16 for the embedded proxy pair). ``C·X`` is ``F (Fᵀ X)``.
"""

from __future__ import annotations

import torch


def projection_factor(v: torch.Tensor, right: torch.Tensor | None = None, *, orthogonal: bool = False,
                      rank_tol: float = 1e-6) -> torch.Tensor:
    """``F`` (float32) with ``F Fᵀ = V Vᵀ / ‖V‖_F`` for ``V = v @ right`` (``right=None``: ``V = v``);
    an all-zero ``V`` gives zero columns. ``orthogonal``: instead ``F Fᵀ`` = the orthogonal projector onto
    ``V``'s column space (directions with singular value below ``rank_tol`` x the largest dropped), which
    does not depend on the scale of ``V``."""
    p = v.detach().float()
    if right is not None:
        m = p @ torch.linalg.qr(right.detach().float().T, mode="r").R.T
    elif p.shape[1] <= p.shape[0]:
        m = p
    else:
        m = torch.linalg.qr(p.T, mode="r").R.T
    norm = torch.linalg.matrix_norm(m)
    if norm == 0:
        return p.new_zeros((p.shape[0], 0))
    if orthogonal:
        u, sv, _ = torch.linalg.svd(m, full_matrices=False)
        return u[:, sv > rank_tol * sv[0]].contiguous()
    return m / norm.sqrt()


def apply_c(factor: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``C·X`` for ``C = F Fᵀ``."""
    f = factor.to(device=x.device, dtype=torch.float32)
    return f @ (f.T @ x.float())


def similarity(factor: torch.Tensor, lora_b: torch.Tensor, lora_a: torch.Tensor) -> float:
    """``cos(ΔW, CΔW)`` on flattened matrices, ``ΔW = B·A`` (a zero update or a zero ``C`` gives 0)."""
    delta = lora_b.detach().float() @ lora_a.detach().float()
    projected = apply_c(factor, lora_b.detach()) @ lora_a.detach().float()
    denom = torch.linalg.matrix_norm(delta) * torch.linalg.matrix_norm(projected)
    if denom == 0:
        return 0.0
    return float((delta * projected).sum() / denom)


def projected_b(factor: torch.Tensor, lora_b: torch.Tensor) -> torch.Tensor:
    """``B' = C·B`` in ``B``'s dtype."""
    return apply_c(factor, lora_b.detach()).to(lora_b.dtype)


def pdst_term(factor: torch.Tensor, final_b: torch.Tensor, original_b: torch.Tensor) -> float:
    """One module's Pdst term ``1 / (1 + ‖B_final - C·B‖_F)``."""
    gap = final_b.detach().float() - apply_c(factor, original_b.detach())
    return float(1.0 / (1.0 + torch.linalg.matrix_norm(gap)))


def choose_modules(similarities: dict[str, float], *, threshold: float | None, top_k: int | None) -> list[str]:
    """The modules to project: the ``top_k`` least similar (ties by name) when ``top_k`` is set, otherwise
    those with similarity ``<= threshold``."""
    if top_k is not None:
        return sorted(sorted(similarities), key=lambda n: similarities[n])[:top_k]
    assert threshold is not None
    return sorted(n for n, s in similarities.items() if s <= threshold)
