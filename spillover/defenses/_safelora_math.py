"""SafeLoRA's linear algebra on plain tensors (arXiv 2405.16833), kept apart so it is tested on its own.

For one linear module with weight shape ``(out, in)``:

- alignment matrix ``V = W_aligned - W_base``;
- projection matrix ``C = V Vᵀ / ‖V‖_F`` (``out x out``; the paper's exact form: divided by the
  Frobenius norm, not its square, so ``C`` is a scaled projection, not an idempotent one);
- a LoRA update ``ΔW = s·B·A`` (``B``: ``out x r``, ``A``: ``r x in``, ``s`` = alpha/r) is judged by
  ``cos(ΔW, CΔW)`` on the flattened matrices (``s`` cancels), and a module is projected by replacing
  ``B`` with ``B' = C·B``, so ``ΔW' = s·C·B·A = CΔW``;
- ``Pdst`` (the paper's diagnostic, higher = closer to the projected weights): the mean over modules of
  ``1 / (1 + ‖B_final - C·B‖_F)``, which is 1 for a projected module.

``C`` is stored as a factor ``F`` with ``C = F Fᵀ``: from the SVD ``V = U S Wᵀ``, ``F = U_k S_k / √‖V‖_F``
over the ``k`` singular values above ``rank_tol · S_max``. This is exact up to those dropped values and
costs ``out x k`` instead of ``out x out`` (``k <= min(out, in)``; a pair whose difference is a rank-16
adapter stores 16 columns). ``C·X`` is computed as ``F (Fᵀ X)``.
"""

from __future__ import annotations

import torch


def projection_factor(v: torch.Tensor, rank_tol: float = 1e-6) -> torch.Tensor:
    """``F`` (``out x k``, float32) with ``F Fᵀ = V Vᵀ / ‖V‖_F``; an all-zero ``V`` gives ``k = 0``."""
    v = v.detach().float()
    norm = torch.linalg.matrix_norm(v)
    if norm == 0:
        return v.new_zeros((v.shape[0], 0))
    u, s, _ = torch.linalg.svd(v, full_matrices=False)
    keep = s > rank_tol * s[0]
    return (u[:, keep] * s[keep]) / norm.sqrt()


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
