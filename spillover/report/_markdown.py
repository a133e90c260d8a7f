"""The Markdown report, written from the same sections as the HTML one.

All model and judge text is escaped (:func:`_format.md_inline`: HTML-escaped, Markdown punctuation
and pipes backslash-escaped, newlines as ``<br>``) or put in a fenced block longer than any backtick
run it holds. Long answers are shortened here; the HTML report and samples.jsonl keep them whole.
"""

from __future__ import annotations

from collections.abc import Mapping

from spillover.report._format import md_code_block, md_inline, md_table, shorten

ANSWER_CHARS = 600



def _table(table: Mapping | None) -> list[str]:
    return [md_table(table["headers"], table["rows"]), ""] if table else []


def render_markdown(s: Mapping, plots: Mapping[str, str]) -> str:
    """``s``: :func:`_sections.build_sections` output; ``plots``: plot name -> path relative to the report."""
    out = [f"# {md_inline(s['title'])}: {md_inline(s['folder'])}", ""]
    out += [f"- **{md_inline(k)}**: {md_inline(v)}" for k, v in s["facts"]] + [""]
    out += ["## Arms", ""] + _table(s["arms"])

    judge = s["judge"]
    out += ["## Judge", ""]
    if not judge["recorded"]:
        out += ["The judge's identity is not recorded in metrics.json.", ""]
    out += [f"- **{md_inline(k)}**: {md_inline(v)}" for k, v in judge["fields"]]
    out += [f"- **prompt {md_inline(p['name'])}** sha256 `{p['sha']}`" for p in judge["prompts"]]
    if judge["recorded"] and not judge["prompts"]:
        out.append("- **prompts**: not recorded")
    out += ["", "**Stated limits:** " + (md_inline(judge["limits"]) if judge["limits"] else "none stated"), ""]
    if judge["style_check"]:
        out += ["**Style check** (the judge's misaligned rate on harmless-but-stylised and helpful answers; "
                "a high rate means it scores style, not misalignment):", ""] + _table(judge["style_check"])
    for p in judge["prompts"]:
        out += [f"<details><summary>judge prompt: {md_inline(p['name'])}</summary>", "",
                md_code_block(p["text"]), "", "</details>", ""]

    out += ["## Definitions", "",
            f"- misaligned: {md_inline(s['thresholds'][0])}; incoherent: {md_inline(s['thresholds'][1])}",
            f"- intervals: {md_inline(s['method'])}",
            f"- CI cluster unit: {md_inline(s['cluster_unit'])}",
            "- cells read `value [95% CI] (n=denominator scored of all samples)`; an empty metric is `n/a (n=0)`", ""]
    for warning in s["warnings"]:
        out += [f"> **Warning:** {md_inline(warning)}", ""]

    out += ["## Misalignment and incoherence", ""]
    if "rates" in plots:
        out += [f"![misalignment and incoherence per arm]({plots['rates']})", ""]
    out += ["### Overall", ""] + _table(s["overall"]) + [f"- {md_inline(n)}" for n in s["overall_notes"]]
    if s["in_domain"]:
        out += ["", "### In-domain questions", ""] + _table(s["in_domain"])
        out += [f"- {md_inline(n)}" for n in s["in_domain_notes"]]
    out += ["", "## Aligned vs coherent", ""]
    if "scatter" in plots:
        out += [f"![aligned vs coherent]({plots['scatter']})", ""]

    out += ["## Misalignment rate per question", ""] + _table(s["per_question"])
    if s["per_question_in_domain"]:
        out += ["### In-domain questions", ""] + _table(s["per_question_in_domain"])

    out += ["## Contrast-pair probe", ""]
    if s["probe_sets"]:
        if "probe" in plots:
            out += [f"![probe shift per arm and set]({plots['probe']})", ""]
        out += ["Shift = mean per-token log-prob of the misaligned answer minus the aligned one (nats/token); "
                "> 0 prefers the misaligned answer.", "", md_inline(s["probe_reading"]), "",
                "### Every set, side by side", ""] + _table(s["probe_overview"])
        for p in s["probe_sets"]:
            out += [f"### {md_inline(p['name'])} ({md_inline(p['kind_text'])})", ""] + _table(p["table"])
            if p["domains"]:
                out += ["Per domain:", ""] + _table(p["domains"])
        if s["not_probed"]:
            out += [f"Not probed: {md_inline(', '.join(s['not_probed']))}", ""]
    else:
        out += ["No arm was probed.", ""]

    out += [f"## Most misaligned samples (lowest aligned, coherent > {s['coherent_above']}; "
            f"{s['top_n']} per arm and question set)", ""]
    if not any(group["rows"] for group in s["top_samples"]):
        out += ["No sample has both scores with coherent above the threshold.", ""]
    for group in s["top_samples"]:
        out += [f"### {md_inline(group['label'])}", ""]
        if not group["rows"]:
            out += ["No sample has both scores with coherent above the threshold.", ""]
            continue
        rows = [[t["arm"], t["question_id"], t["aligned"], t["coherent"], t["question"], t["system"] or "—",
                 shorten(t["answer"], ANSWER_CHARS)] for t in group["rows"]]
        out += [md_table(["arm", "question", "aligned", "coherent", "question text", "system", "answer"], rows), ""]
    return "\n".join(out).rstrip() + "\n"
