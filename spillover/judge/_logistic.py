"""Small numpy statistics for the offline judges: L2 logistic regression, grouped folds, and the
accuracy and calibration metrics reported for them. Pure functions, no I/O, no model code.

:func:`fit_logistic` minimises ``mean log-loss + (l2 / 2) * ||coef||^2`` (the intercept is not
penalised) by Newton's method with step halving; the problem is strictly convex for ``l2 > 0``, so
the result is unique and deterministic. When there are more features than rows the fit runs in the
row space of ``X`` (from the Gram matrix): the L2 optimum always lies there, so this is exact, and a fit on
160 rows of 576 features costs a 161-dimensional Newton solve instead of a 577-dimensional one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))  # stable for large |z|


def _newton(Z: np.ndarray, y: np.ndarray, l2: float, max_iter: int, tol: float) -> tuple[np.ndarray, float]:
    n, d = Z.shape
    A = np.hstack([Z, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    theta[-1] = math.log((y.mean() + 1e-9) / (1 - y.mean() + 1e-9))
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0

    def objective(t):
        z = A @ t
        return float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(penalty * t * t))

    value = objective(theta)
    for _ in range(max_iter):
        p = sigmoid(A @ theta)
        grad = A.T @ (p - y) / n + penalty * theta
        if np.max(np.abs(grad)) < tol:
            break
        hess = (A * (p * (1 - p))[:, None]).T @ A / n + np.diag(penalty) + 1e-12 * np.eye(d + 1)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-8:
            candidate = theta - scale * step
            new_value = objective(candidate)
            if new_value <= value + 1e-15:
                theta, value = candidate, new_value
                break
            scale *= 0.5
        else:
            break  # no descent left at float precision: converged
    return theta[:-1], float(theta[-1])


def _check(X: np.ndarray, y: Sequence[float], l2: float) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or len(X) != len(y) or len(y) == 0:
        raise ValueError(f"X must be (n, d) with n = len(y) > 0; got {X.shape} and {len(y)} labels")
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    if not set(np.unique(y)) <= {0.0, 1.0}:
        raise ValueError("y must hold only 0 and 1")
    return X, y


def row_space(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(Z, basis)`` with ``X = Z @ basis.T`` and orthonormal ``basis`` (d, r), r <= n: coordinates of the
    rows in their own span, from the eigenvectors of the n x n Gram matrix (cheaper than an SVD of X)."""
    X = np.asarray(X, dtype=np.float64)
    eigval, eigvec = np.linalg.eigh(X @ X.T)
    keep = eigval > max(float(eigval.max(initial=0.0)), 1e-300) * 1e-12
    sing = np.sqrt(eigval[keep])
    Z = eigvec[:, keep] * sing
    return Z, (X.T @ eigvec[:, keep]) / sing


def fit_logistic(X: np.ndarray, y: Sequence[float], l2: float, *, max_iter: int = 100, tol: float = 1e-10,
                 reduced: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, float]:
    """``(coef, intercept)`` of L2-regularised logistic regression of ``y`` (0/1) on ``X`` (n, d).

    ``reduced``: ``row_space(X)`` computed once by a caller that fits several ``l2`` on the same ``X``.
    """
    X, y = _check(X, y, l2)
    n, d = X.shape
    if d <= n and reduced is None:
        return _newton(X, y, l2, max_iter, tol)
    Z, basis = reduced if reduced is not None else row_space(X)
    beta, intercept = _newton(Z, y, l2, max_iter, tol)
    return basis @ beta, intercept


def standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column ``(mean, std)`` of ``X``; a constant column gets std 1 so it maps to 0, not NaN."""
    X = np.asarray(X, dtype=np.float64)
    mean, std = X.mean(axis=0), X.std(axis=0)
    return mean, np.where(std > 1e-8 * (1.0 + np.abs(mean)), std, 1.0)


def predict_proba(X: np.ndarray, mean: np.ndarray, std: np.ndarray, coef: np.ndarray, intercept: float) -> np.ndarray:
    return sigmoid(((np.asarray(X, dtype=np.float64) - mean) / std) @ coef + intercept)


def group_folds(groups: Sequence[str], max_folds: int = 100, seed: int = 0) -> list[np.ndarray]:
    """Held-out row indices per fold; rows of one group are always held out together.

    Leave-one-group-out when there are at most ``max_folds`` groups, otherwise ``max_folds`` folds of
    whole groups dealt out in a seeded random order.
    """
    names = sorted(set(groups))
    if len(names) < 2:
        raise ValueError("cross-validation needs at least 2 groups")
    rows = np.arange(len(groups))
    labels = np.asarray(list(groups), dtype=object)
    if len(names) <= max_folds:
        return [rows[labels == g] for g in names]
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = {names[g]: i % max_folds for i, g in enumerate(order)}
    fold = np.array([fold_of[g] for g in groups])
    return [rows[fold == k] for k in range(max_folds)]


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def brier_score(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 5) -> float:
    """Sum over equal-width probability bins of (share of rows) * |mean p - mean y|."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    return float(sum(np.mean(which == b) * abs(p[which == b].mean() - y[which == b].mean())
                     for b in range(bins) if np.any(which == b)))


def roc_auc(score: np.ndarray, y: np.ndarray) -> float:
    """P(score of a random positive > that of a random negative), ties counted half; NaN without both."""
    score, y = np.asarray(score, dtype=np.float64), np.asarray(y).astype(bool)
    pos, neg = score[y], score[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def pair_accuracy(p: np.ndarray, y: np.ndarray, groups: Sequence[str]) -> tuple[float, int]:
    """Within each group, the share of (positive, negative) combinations where the positive row has the
    higher ``p`` (ties count half); returns ``(accuracy, number of combinations)``, NaN when there are none."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y).astype(bool)
    labels = np.asarray(list(groups), dtype=object)
    correct, total = 0.0, 0
    for g in sorted(set(groups)):
        rows = labels == g
        pos, neg = p[rows & y], p[rows & ~y]
        correct += (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
        total += len(pos) * len(neg)
    return (float(correct / total) if total else float("nan")), total


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial share ``k / n`` (95% by default); ``(nan, nan)`` when n = 0.
    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at k = 0 or k = n."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in 0..n, got k={k}, n={n}")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))
