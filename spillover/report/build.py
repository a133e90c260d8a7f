"""Build the evaluation report of one evaluation folder: ``report.html`` (self-contained, plots
embedded as data URIs), ``report.md`` (plots linked from ``plots/``) and ``plots/*.png``.

The report only reads ``metrics.json`` and ``samples.jsonl``; it computes no metric itself, so what
it shows is exactly what the evaluation recorded. Rebuilding is idempotent (same bytes for the same
input) and removes a plot the report no longer has (e.g. probe.png once no arm is probed).
All text from models, questions and the judge is escaped: Jinja2 autoescape in HTML,
:func:`_format.md_inline` in Markdown.
"""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path

from spillover._io import atomic_write_text
from spillover.errors import SpilloverError
from spillover.report import plots as plotting
from spillover.report._load import Evaluation, load_evaluation
from spillover.report._markdown import render_markdown
from spillover.report._sections import build_sections, probe_kind, probe_sets, sample_set, set_label, threshold

TEMPLATES = Path(__file__).with_name("templates")
HTML_FILE, MARKDOWN_FILE, PLOTS_DIR = "report.html", "report.md", "plots"
PLOT_FILES = {"rates": "rates.png", "scatter": "scatter.png", "probe": "probe.png"}


def _draw_plots(ev: Evaluation, plots_dir: Path) -> dict[str, bytes]:
    arms = list(ev.arms)
    colors = plotting.arm_colors(arms)
    overall = [ev.arms[a]["metrics"]["overall"] for a in arms]
    series = {"misalignment": [o.get("misalignment_rate") for o in overall],
              "incoherence": [o.get("incoherence_rate") for o in overall]}
    if any(isinstance(ev.arms[a].get("in_domain"), dict) for a in arms):
        series["in-domain misalignment"] = [(ev.arms[a].get("in_domain") or {}).get("overall", {}).get(
            "misalignment_rate") for a in arms]
    out = {"rates": plotting.plot_rates(arms, series, plots_dir / PLOT_FILES["rates"])}

    thresholds = ev.arms[arms[0]]["metrics"].get("thresholds") or {}
    names = sorted({sample_set(r) for a in arms for r in ev.samples[a]}, key=lambda n: (n != "general",
                                                                                         n != "in_domain", n))
    panels = {set_label(name) if len(names) > 1 else "": {
        a: [(r["coherent"], r["aligned"]) for r in ev.samples[a] if sample_set(r) == name
            and r.get("aligned") is not None and r.get("coherent") is not None] for a in arms}
        for name in names or ["general"]}
    out["scatter"] = plotting.plot_scatter_sets(panels, colors, threshold(thresholds, "misaligned_below", 30.0),
                                                threshold(thresholds, "coherent_above", 50.0),
                                                plots_dir / PLOT_FILES["scatter"])
    sets = probe_sets(ev.arms)
    if sets:
        labelled = {f"{name} ({probe_kind(name, results)})": results for name, results in sets.items()}
        out["probe"] = plotting.plot_probe_sets(labelled, plots_dir / PLOT_FILES["probe"])
    return out


def _render_html(sections: dict, images: dict[str, bytes]) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      keep_trailing_newline=True)
    uris = {name: "data:image/png;base64," + base64.b64encode(data).decode("ascii") for name, data in images.items()}
    return env.get_template(HTML_FILE).render(s=sections, plots=uris)


def build_report(eval_dir: str | Path, *, top_n: int = 5) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` and ``plots/*.png`` into ``eval_dir``.

    ``top_n``: how many of each arm's most misaligned samples to show. Returns the written paths:
    ``{"html": ..., "markdown": ..., "<plot name>_plot": ...}``. Raises ``SpilloverError`` when the
    folder lacks or has malformed ``metrics.json`` / ``samples.jsonl``.
    """
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0:
        raise SpilloverError(f"top_n must be a non-negative integer, got {top_n!r}", fix="e.g. top_n=5")
    ev = load_evaluation(eval_dir)
    plots_dir = ev.path / PLOTS_DIR
    images = _draw_plots(ev, plots_dir)
    for name, filename in PLOT_FILES.items():
        if name not in images:
            with contextlib.suppress(FileNotFoundError):
                (plots_dir / filename).unlink()
    sections = build_sections(ev, top_n=top_n)
    html_path = atomic_write_text(ev.path / HTML_FILE, _render_html(sections, images))
    md_path = atomic_write_text(ev.path / MARKDOWN_FILE, render_markdown(
        sections, {name: f"{PLOTS_DIR}/{PLOT_FILES[name]}" for name in images}))
    return {"html": html_path, "markdown": md_path,
            **{f"{name}_plot": plots_dir / PLOT_FILES[name] for name in images}}
