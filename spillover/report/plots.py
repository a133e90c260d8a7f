"""The report's figures, drawn with matplotlib's Agg canvas (no pyplot, no display, no global state).

Each ``plot_*`` function draws one PNG, writes it atomically (temporary name, fsync, rename) and
returns its bytes so the HTML can embed them. Output is deterministic for the same input and
matplotlib version: no timestamps in the PNG metadata, no random jitter. Empty metrics are drawn as
a labelled gap ("n/a (n=0)"), never as a zero-height bar.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from spillover._io import atomic_write_bytes
from spillover.report._format import finite

# matplotlib's tab10, fixed here so an arm keeps its colour in every figure of a report
ARM_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
              "#bcbd22", "#17becf")
SERIES_COLORS = ("#c0392b", "#7f8c8d", "#8e44ad", "#16a085")
DPI = 110
JITTER = 1.0  # scatter jitter in score points


def arm_colors(arms: Sequence[str]) -> dict[str, str]:
    return {arm: ARM_COLORS[i % len(ARM_COLORS)] for i, arm in enumerate(arms)}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def write_png(fig, path: Path) -> bytes:
    """Render ``fig`` to PNG bytes and write them to ``path`` atomically; returns the bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return data


def _interval(est: Mapping | None, scale: float) -> tuple[float | None, float, float, int]:
    """(value, lower error, upper error, n) of an Estimate dict, errors clipped at 0; value None when empty."""
    est = est if isinstance(est, Mapping) else {}
    n = est.get("n") if isinstance(est.get("n"), int) else 0
    value = finite(est.get("value"))
    if value is None or n == 0:
        return None, 0.0, 0.0, n
    lo, hi = finite(est.get("ci_low")), finite(est.get("ci_high"))
    lo = value if lo is None else lo
    hi = value if hi is None else hi
    return value * scale, max(0.0, (value - lo) * scale), max(0.0, (hi - value) * scale), n


def plot_rates(arms: Sequence[str], series: Mapping[str, Sequence[Mapping | None]], path: Path) -> bytes:
    """Grouped bars: one group per arm, one bar per series (e.g. misalignment, incoherence), in percent,
    with 95% CI error bars and each bar's value and n written above it."""
    fig = _figure(max(5.5, 1.2 + 0.9 * len(arms) * max(1, len(series))), 4.0)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    top = 10.0
    for s, (label, estimates) in enumerate(series.items()):
        color = SERIES_COLORS[s % len(SERIES_COLORS)]
        labelled = False
        for a, est in enumerate(estimates):
            x = a - 0.4 + width * (s + 0.5)
            value, err_lo, err_hi, n = _interval(est, 100.0)
            if value is None:
                ax.text(x, 0.5, f"n/a\n(n={n})", ha="center", va="bottom", fontsize=7, color="#555555")
                continue
            ax.bar(x, value, width * 0.92, color=color, label=None if labelled else label)
            labelled = True
            ax.errorbar(x, value, yerr=[[err_lo], [err_hi]], fmt="none", ecolor="#222222", capsize=3, lw=1)
            ax.text(x, value + err_hi + 1.0, f"{value:.1f}%\nn={n}", ha="center", va="bottom", fontsize=7)
            top = max(top, value + err_hi)
        if not labelled:
            ax.bar(0, 0, 0, color=color, label=f"{label} (no data)")  # keep the series in the legend
    ax.set_xticks(range(len(arms)), list(arms))
    ax.set_xlim(-0.6, len(arms) - 0.4)
    ax.set_ylim(0, min(105.0, top * 1.25 + 6))
    ax.set_ylabel("% of scored samples")
    ax.set_title("Misalignment and incoherence per arm (95% CI, cluster bootstrap; unit stated in the report)", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return write_png(fig, path)


def plot_scatter(points: Mapping[str, Sequence[tuple[float, float]]], colors: Mapping[str, str],
                 aligned_below: float, coherent_above: float, path: Path) -> bytes:
    """Aligned (y) against coherent (x), one colour per arm, with the misalignment thresholds drawn
    and the misaligned corner shaded. ``points[arm]`` holds (coherent, aligned) pairs; each point is
    moved by a fixed pseudo-random jitter of at most ``JITTER`` so tied scores stay visible."""
    return plot_scatter_sets({"": points}, colors, aligned_below, coherent_above, path)


def plot_scatter_sets(panels: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]], colors: Mapping[str, str],
                      aligned_below: float, coherent_above: float, path: Path) -> bytes:
    """:func:`plot_scatter` with one panel per question set (``panels[set label][arm]``), side by side,
    so in-domain answers never mix with general ones."""
    fig = _figure(7.6 if len(panels) <= 1 else 5.2 * len(panels) + 1.6, 5.0)
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    for i, (ax, (label, points)) in enumerate(zip(axes, panels.items())):
        _scatter_panel(ax, label, points, colors, aligned_below, coherent_above, legend=i == len(panels) - 1)
    return write_png(fig, path)


def _scatter_panel(ax, label: str, points: Mapping[str, Sequence[tuple[float, float]]], colors: Mapping[str, str],
                   aligned_below: float, coherent_above: float, legend: bool) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    ax.axvspan(coherent_above, 102, ymin=0, ymax=(aligned_below + 2) / 104, color="#e74c3c", alpha=0.08, lw=0)
    ax.axhline(aligned_below, color="#555555", ls="--", lw=1)
    ax.axvline(coherent_above, color="#555555", ls="--", lw=1)
    ax.text(101, aligned_below - 2, "misaligned", ha="right", va="top", fontsize=8, color="#c0392b")
    total = sum(len(pts) for pts in points.values())
    size = 14 if total < 500 else 8 if total < 5000 else 4
    for arm, pts in points.items():
        xs = np.array([p[0] for p in pts], dtype=float) + rng.uniform(-JITTER, JITTER, len(pts))
        ys = np.array([p[1] for p in pts], dtype=float) + rng.uniform(-JITTER, JITTER, len(pts))
        ax.scatter(xs, ys, s=size, alpha=0.5, color=colors[arm], edgecolors="none", label=f"{arm} (n={len(pts)})")
    if total == 0:
        ax.text(50, 50, "no sample has both scores", ha="center", va="center", fontsize=10, color="#555555")
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.set_xlabel(f"coherent (judge score 0-100; threshold {coherent_above:g})")
    ax.set_ylabel(f"aligned (judge score 0-100; threshold {aligned_below:g})")
    ax.set_title((f"{label}: " if label else "") + f"aligned vs coherent, samples with both scores "
                 f"(jitter ±{JITTER:g})", fontsize=9)
    if total and legend:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, markerscale=1.5)
    elif total:  # panels side by side: each counts its own samples, inside its axes
        ax.legend(fontsize=7, loc="lower left", frameon=True, framealpha=0.8, markerscale=1.2)
    ax.grid(alpha=0.25)


def plot_probe(probes: Mapping[str, Mapping], colors: Mapping[str, str], path: Path) -> bytes:
    """Mean log-prob shift (misaligned - aligned) per arm with its 95% CI; a second panel shows the
    shift relative to the base model for arms that have one."""
    arms = list(probes)
    with_delta = [a for a in arms if finite(probes[a].get("delta_vs_base")) is not None]
    panels = [("mean_shift", "ci95", "mean shift (nats/token)", arms)]
    if with_delta:
        panels.append(("delta_vs_base", "delta_vs_base_ci95", "shift vs base (nats/token)", with_delta))
    fig = _figure(min(10.0, max(4.5, len(panels) * (1.6 + 0.9 * len(arms)))), 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, ci_key, label, names) in zip(axes, panels):
        for i, arm in enumerate(names):
            p = probes[arm]
            value, ci = finite(p.get(key)), p.get(ci_key)
            if value is None:
                ax.text(i, 0, f"n/a (n={p.get('n', 0)})", ha="center", va="bottom", fontsize=7)
                continue
            lo, hi = (finite(ci[0]), finite(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
            yerr = [[max(0.0, value - lo)], [max(0.0, hi - value)]] if lo is not None and hi is not None else None
            ax.errorbar(i, value, yerr=yerr, fmt="o", color=colors[arm], capsize=4, ms=6, lw=1.5)
            ax.annotate(f"{value:+.3f}\nn={p.get('n', 0)}", (i, value), xytext=(8, 0), textcoords="offset points",
                        fontsize=7, va="center")
        ax.axhline(0, color="#555555", lw=0.8)
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.6, len(names) - 0.1)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Contrast-pair probe: > 0 prefers the misaligned answer (95% CI over pairs)", fontsize=9)
    return write_png(fig, path)


SET_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*")


def plot_probe_sets(sets: Mapping[str, Mapping[str, Mapping]], path: Path) -> bytes:
    """Every probe set in one figure: x = arm, one marker and colour per set (offset side by side), mean
    shift with its 95% CI; a second panel shows the shift vs base for arms with one. ``sets[label][arm]``
    is a ProbeResult JSON."""
    arms = list(dict.fromkeys(a for results in sets.values() for a in results))
    with_delta = [a for a in arms if any(finite((r.get(a) or {}).get("delta_vs_base")) is not None
                                         for r in sets.values())]
    panels = [("mean_shift", "ci95", "mean shift (nats/token)", arms)]
    if with_delta:
        panels.append(("delta_vs_base", "delta_vs_base_ci95", "shift vs base (nats/token)", with_delta))
    fig = _figure(min(14.0, max(6.0, len(panels) * (2.2 + 0.5 * len(arms) * len(sets)))), 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    width = 0.7 / max(1, len(sets))
    for ax, (key, ci_key, label, names) in zip(axes, panels):
        for s_i, (set_label, results) in enumerate(sets.items()):
            color, marker = SERIES_COLORS[s_i % len(SERIES_COLORS)], SET_MARKERS[s_i % len(SET_MARKERS)]
            labelled = False
            for i, arm in enumerate(names):
                p = results.get(arm)
                value = finite(p.get(key)) if isinstance(p, Mapping) else None
                if value is None:
                    continue
                x = i - 0.35 + width * (s_i + 0.5)
                ci = p.get(ci_key)
                lo, hi = (finite(ci[0]), finite(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
                yerr = [[max(0.0, value - lo)], [max(0.0, hi - value)]] if lo is not None and hi is not None else None
                ax.errorbar(x, value, yerr=yerr, fmt=marker, color=color, capsize=3, ms=5, lw=1.2,
                            label=None if labelled else set_label)
                labelled = True
        ax.axhline(0, color="#555555", lw=0.8)
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle("Contrast-pair probe, every set: > 0 prefers the misaligned slot (95% CI over pairs)", fontsize=9)
    return write_png(fig, path)
