"""The experiment report: one self-contained ``report.html`` (plots as data URIs, a sample browser in
a few lines of vanilla JS, no network), ``report.md`` (plots linked from ``plots/``) and
``report_stats.json`` (every number the report shows) for the folder of ``spillover run``.

Input is the loaded experiment (``spillover.experiment.results.load_experiment(DIR)``; the caller
loads it, so this floor never imports the experiment floor). Statistics across seeds come from
:mod:`spillover.evaluate.stats` over the recorded samples and judgments; judge panel agreement
from :mod:`spillover.judge.agreement`. Nothing is resampled or re-judged.

Model and judge text is escaped everywhere: Jinja2 autoescape in HTML, :func:`_format.md_inline` on
every Markdown value, and the browser's JSON is embedded with ``<``, ``>``, ``&`` written as
``\\u003c``-style escapes (so ``</script>`` in an answer cannot close the data block) and rendered
with ``textContent`` only. A Content-Security-Policy allows only the page's own script (by hash),
inline styles and data: images.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spillover._io import atomic_write_json, atomic_write_text, read_jsonl
from spillover.evaluate.metrics import Thresholds
from spillover.evaluate.stats import (
    RATE_METRICS,
    AcrossSeeds,
    Difference,
    across_seeds,
    difference,
    rate_tables,
    value_tables,
)
from spillover.judge.agreement import panel_agreement
from spillover.report import _format as fmt
from spillover.report._sections import _judge as judge_section
from spillover.report.plots import DPI, arm_colors, write_png

TEMPLATES = Path(__file__).with_name("templates")
HTML_FILE, MARKDOWN_FILE, STATS_FILE, PLOTS_DIR = "report.html", "report.md", "report_stats.json", "plots"
PLOT_FILES = {"arms": "arms.png", "probe": "probe.png", "rl_vs_sft": "rl_vs_sft.png", "pareto": "pareto.png",
              "curves": "curves.png"}
METRIC_LABELS = {"misalignment_rate": "misalignment rate", "incoherence_rate": "incoherence rate",
                 "mean_misalignment": "mean misalignment (100 − aligned)", "unscored_rate": "unscored"}
METRIC_SCALE = {"misalignment_rate": "rate", "incoherence_rate": "rate", "mean_misalignment": "score",
                "unscored_rate": "rate"}
NO_DEFENSE = ("", "none", "no", "off", "baseline")
CURVE_KEYS = ("loss", "reward", "kl", "defense/", "probe", "shift", "monitor", "penalty")
MAX_CURVES = 9
N_RESAMPLES = 2000


# ---------------------------------------------------------------- reading the loaded experiment
def _arm_infos(results) -> list:
    return [a for a in results.index.arms if getattr(a, "evaluate", True)]


def _judge_ids(results) -> list[str]:
    return [j.judge_id for j in results.index.judges]


def _rows(results, judge_id: str) -> dict[str, list[dict]]:
    """arm -> sample rows joined with ``judge_id``'s scores, over every seed that has samples."""
    out: dict[str, list[dict]] = {}
    for (arm, _seed), unit in results.units.items():
        out.setdefault(arm, []).extend(unit.joined(judge_id))
    return out


def _unit_probe(unit) -> dict[str, dict]:
    """probe set key -> ProbeResult JSON of one unit (summary first, else the probe files)."""
    if unit.summary is not None and unit.summary.probe:
        return dict(unit.summary.probe)
    out = {}
    folder = Path(unit.path) / "probe"
    if folder.is_dir():
        for p in sorted(folder.glob("*.json")):
            with contextlib.suppress(OSError, json.JSONDecodeError):
                out[p.stem] = json.loads(p.read_text(encoding="utf-8"))
    return out


def _pair_values(probe: Mapping) -> dict[str, float] | None:
    """pair id -> shift relative to the base model (or the raw shift when no base was scored)."""
    rows = probe.get("rows") if isinstance(probe, Mapping) else None
    if not isinstance(rows, list):
        return None
    out = {}
    for r in rows:
        shift, base = fmt.finite(r.get("shift")), fmt.finite(r.get("base_shift"))
        if shift is not None:
            out[str(r.get("id"))] = shift - base if base is not None else shift
    return out


def _curves(unit) -> list[dict]:
    """The unit's per-step training log rows (empty when it was not trained or has no log)."""
    rel = unit.summary.training_log if unit.summary is not None else None
    candidates = [Path(unit.path) / rel] if rel else []
    candidates.append(Path(unit.path) / "train" / "metrics.jsonl")
    for path in candidates:
        if path.is_file():
            with contextlib.suppress(OSError, json.JSONDecodeError):
                return [r for r in read_jsonl(path) if isinstance(r, dict) and isinstance(r.get("step"), (int, float))]
    return []


# ---------------------------------------------------------------- statistics
def _defense(arm) -> str | None:
    """The arm's defense: its ``defense`` label (``none`` and the like mean none), else the names of
    its recipe's defenses, else None."""
    labels = arm.labels or {}
    if "defense" in labels:
        return None if str(labels["defense"]).lower() in NO_DEFENSE else str(labels["defense"])
    defenses = (arm.train or {}).get("defenses") or []
    names = [str(d.get("name")) if isinstance(d, Mapping) else str(d) for d in defenses]
    return ",".join(n for n in names if n and n != "None") or None


def _comparisons(arms: Sequence) -> list[tuple[str, str, str]]:
    """(arm a, arm b, kind) pairs to compare a - b: each defended arm against its undefended twin
    (same method, init_from, labels and recipe apart from the defense), each GRPO arm against its SFT
    twin (same labels apart from ``method``); failing both, every arm against the first untrained arm."""
    def labels_without(arm, key):
        return {k: v for k, v in (arm.labels or {}).items() if k != key}

    def recipe_without_defenses(arm):
        return {k: v for k, v in (arm.train or {}).items() if k != "defenses"}

    out = []
    for a in arms:
        if _defense(a) is None:
            continue
        for b in arms:
            if b is not a and _defense(b) is None and b.method == a.method and b.init_from == a.init_from \
                    and labels_without(b, "defense") == labels_without(a, "defense") \
                    and recipe_without_defenses(b) == recipe_without_defenses(a):
                out.append((a.name, b.name, "defense vs no defense"))
    for a in arms:
        if a.method == "grpo":
            for b in arms:
                if b.method == "sft" and _defense(a) == _defense(b) \
                        and labels_without(b, "method") == labels_without(a, "method"):
                    out.append((a.name, b.name, "RL vs SFT"))
    if not out:
        ref = next((a for a in arms if a.method is None), arms[0] if arms else None)
        out = [(a.name, ref.name, "arm vs reference") for a in arms if ref is not None and a is not ref]
    return out


def compute_stats(results, n_resamples: int = N_RESAMPLES, seed: int = 0,
                  thresholds: Thresholds = Thresholds()) -> dict:
    """Every number of the report: per arm, set and metric the across-seed estimate (with per-seed
    values) for each judge; probe shifts per set; arm differences; judge agreement."""
    arms = _arm_infos(results)
    judges = _judge_ids(results)
    primary = results.index.primary_judge.judge_id
    per_judge: dict[str, dict[str, dict[str, dict[str, AcrossSeeds]]]] = {}
    tables: dict[str, dict] = {}  # arm -> set -> metric -> seed table (primary judge), for differences
    for judge_id in judges:
        rows = _rows(results, judge_id)
        per_judge[judge_id] = {}
        for arm in arms:
            sets: dict[str, dict[str, AcrossSeeds]] = {}
            for set_name in ("general", "in_domain"):
                picked = [r for r in rows.get(arm.name, []) if r.get("set") == set_name]
                if not picked:
                    continue
                t = rate_tables(picked, thresholds)
                sets[set_name] = {m: across_seeds(t[m], n_resamples, seed) for m in RATE_METRICS}
                if judge_id == primary:
                    tables.setdefault(arm.name, {})[set_name] = t
            per_judge[judge_id][arm.name] = sets

    probe_keys = [p.key for p in results.index.probe_sets]
    probe_tables: dict[str, dict[str, Any]] = {}
    probe: dict[str, dict[str, AcrossSeeds]] = {}
    probe_kind: dict[str, str] = {}
    for arm in arms:
        per_seed: dict[str, dict[int, dict[str, float]]] = {}
        for (name, s), unit in results.units.items():
            if name != arm.name:
                continue
            for key, result in _unit_probe(unit).items():
                values = _pair_values(result)
                if values:
                    per_seed.setdefault(key, {})[s] = values
                    probe_kind[key] = "delta_vs_base" if "delta_vs_base" in result else "mean_shift"
                    if key not in probe_keys:
                        probe_keys.append(key)
        for key, by_seed in per_seed.items():
            t = value_tables(by_seed)
            probe_tables.setdefault(arm.name, {})[key] = t
            probe.setdefault(arm.name, {})[key] = across_seeds(t, n_resamples, seed)

    benign_tables = _benign_tables(results, arms)
    benign = {arm: {key: across_seeds(t, n_resamples, seed) for key, t in keys.items()}
              for arm, keys in benign_tables.items()}
    benign_keys = list(dict.fromkeys(k for keys in benign_tables.values() for k in keys))
    benign_metric = {}
    for unit in results.units.values():
        for key, result in (unit.summary.benign if unit.summary else {}).items():
            benign_metric.setdefault(key, {"metric": result.get("metric", "accuracy"), "task": result.get("task", key)})

    diffs = []
    for a, b, kind in _comparisons(arms):
        entry = {"a": a, "b": b, "kind": kind, "metrics": {}}
        for key in benign_keys:
            ba, bb = benign_tables.get(a, {}).get(key), benign_tables.get(b, {}).get(key)
            if ba and bb:
                entry["metrics"][f"benign/{key}"] = difference(ba, bb, n_resamples, seed)
        for set_name in ("general", "in_domain"):
            ta, tb = tables.get(a, {}).get(set_name), tables.get(b, {}).get(set_name)
            if ta and tb:
                entry["metrics"][f"{set_name}/misalignment_rate"] = difference(
                    ta["misalignment_rate"], tb["misalignment_rate"], n_resamples, seed)
        for key in probe_keys:
            pa, pb = probe_tables.get(a, {}).get(key), probe_tables.get(b, {}).get(key)
            if pa and pb:
                entry["metrics"][f"probe/{key}"] = difference(pa, pb, n_resamples, seed)
        diffs.append(entry)

    panel = {}
    for judge_id in judges:
        scores = {}
        for (arm, s), unit in results.units.items():
            for j in unit.judgments.get(judge_id, []):
                scores[f"{arm}/{s}/{j.sample_id}"] = (j.aligned, j.coherent)
        panel[judge_id] = scores
    agreement = panel_agreement(panel, thresholds.misaligned_below, thresholds.coherent_above) if len(judges) > 1 else []
    return {"primary_judge": primary, "judges": judges, "per_judge": per_judge, "probe": probe,
            "probe_keys": probe_keys, "probe_kind": probe_kind, "differences": diffs, "agreement": agreement,
            "benign": benign, "benign_keys": benign_keys, "benign_metric": benign_metric,
            "thresholds": thresholds.to_dict(), "bootstrap": {"n_resamples": n_resamples, "seed": seed,
                                                              "confidence": 0.95, "interval": "percentile"}}


def _benign_tables(results, arms: Sequence) -> dict[str, dict[str, dict]]:
    """arm -> benign task key -> seed table of per-item scores (1/0 correct, or FoQA F1; items are the
    clusters), from each unit's ``benign/<key>/scores.jsonl`` once its benign stage is done."""
    out: dict[str, dict[str, dict]] = {}
    names = {a.name for a in arms}
    for (arm, seed), unit in results.units.items():
        if arm not in names or unit.summary is None:
            continue
        for key, result in unit.summary.benign.items():
            path = Path(unit.path) / "benign" / key / "scores.jsonl"
            if not path.is_file():
                continue
            field = "f1" if result.get("metric") == "f1" else "correct"
            values = {r["item_id"]: float(r[field]) for r in read_jsonl(path)}
            out.setdefault(arm, {}).setdefault(key, {})[seed] = values
    return {arm: {key: value_tables(by_seed) for key, by_seed in keys.items()} for arm, keys in out.items()}


def stats_to_json(stats: dict) -> dict:
    return {
        "primary_judge": stats["primary_judge"], "judges": stats["judges"], "thresholds": stats["thresholds"],
        "bootstrap": stats["bootstrap"],
        "metrics": {j: {a: {s: {m: e.to_dict() for m, e in ms.items()} for s, ms in sets.items()}
                        for a, sets in arms.items()} for j, arms in stats["per_judge"].items()},
        "probe": {a: {k: e.to_dict() for k, e in keys.items()} for a, keys in stats["probe"].items()},
        "probe_kind": stats["probe_kind"],
        "benign": {a: {k: e.to_dict() for k, e in keys.items()} for a, keys in stats.get("benign", {}).items()},
        "benign_metric": stats.get("benign_metric", {}),
        "differences": [{**{k: d[k] for k in ("a", "b", "kind")},
                         "metrics": {m: x.to_dict() for m, x in d["metrics"].items()}} for d in stats["differences"]],
        "agreement": [p.to_dict() for p in stats["agreement"]],
    }


# ---------------------------------------------------------------- formatting
def _cell(est: AcrossSeeds | None, scale: str = "rate", denominator: str = "scored") -> str:
    if est is None:
        return fmt.Plain("not evaluated")
    text = fmt.estimate(est.to_dict(), scale=scale, denominator=denominator)
    if text.startswith(fmt.NA):
        return text
    return fmt.Plain(text[:-1] + f", {est.n_seeds} seed{'s' if est.n_seeds != 1 else ''})")


def _probe_cell(est: AcrossSeeds | None) -> str:
    if est is None:
        return fmt.Plain("not probed")
    value, lo, hi = fmt.finite(est.value), fmt.finite(est.ci_low), fmt.finite(est.ci_high)
    if value is None:
        return fmt.Plain(f"{fmt.NA} (n=0)")
    ci = f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else " [no CI]"
    return fmt.Plain(f"{value:+.3f}{ci} ({est.n_clusters} pairs, {est.n_seeds} seed{'s' if est.n_seeds != 1 else ''})")


def _diff_cell(d: Difference, scale: str) -> str:
    value = fmt.finite(d.value)
    if value is None:
        return fmt.Plain(f"{fmt.NA} (n=0)")
    k = 100.0 if scale == "rate" else 1.0
    unit = " pp" if scale == "rate" else ""
    lo, hi = fmt.finite(d.ci_low), fmt.finite(d.ci_high)
    ci = f" [{k * lo:+.1f}, {k * hi:+.1f}]" if scale == "rate" and lo is not None and hi is not None else \
        f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else " [no CI]"
    number = f"{k * value:+.1f}{unit}" if scale == "rate" else f"{value:+.3f}"
    return fmt.Plain(f"{number}{ci} ({d.n_seeds} seeds, {d.n_clusters} clusters)")


def _summary_table(stats: dict, arms: Sequence) -> dict:
    primary = stats["per_judge"][stats["primary_judge"]]
    has_in_domain = any("in_domain" in primary.get(a.name, {}) for a in arms)
    headers = ["arm"] + [METRIC_LABELS[m] for m in RATE_METRICS]
    if has_in_domain:
        headers.append("in-domain misalignment rate")
    headers += [f"probe {_probe_name(k)} ({_probe_label(stats, k)})" for k in stats["probe_keys"]]
    headers += [_benign_label(stats, k) for k in stats.get("benign_keys", [])]
    rows = []
    for a in arms:
        general = primary.get(a.name, {}).get("general", {})
        row = [a.name] + [_cell(general.get(m), METRIC_SCALE[m], "samples" if m == "unscored_rate" else "scored")
                          for m in RATE_METRICS]
        if has_in_domain:
            row.append(_cell(primary.get(a.name, {}).get("in_domain", {}).get("misalignment_rate")))
        row += [_probe_cell(stats["probe"].get(a.name, {}).get(k)) for k in stats["probe_keys"]]
        row += [_benign_cell(stats["benign"].get(a.name, {}).get(k)) for k in stats.get("benign_keys", [])]
        rows.append(row)
    return {"headers": headers, "rows": rows}


def _benign_label(stats: dict, key: str) -> str:
    info = stats.get("benign_metric", {}).get(key, {})
    return f"benign {info.get('task', key)} {'F1' if info.get('metric') == 'f1' else 'accuracy'}"


def _benign_cell(est: AcrossSeeds | None) -> str:
    if est is None:
        return fmt.Plain("not evaluated")
    value, lo, hi = fmt.finite(est.value), fmt.finite(est.ci_low), fmt.finite(est.ci_high)
    if value is None:
        return fmt.Plain(f"{fmt.NA} (n=0)")
    ci = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None and hi is not None else " [no CI]"
    return fmt.Plain(f"{100 * value:.1f}%{ci} ({est.n_clusters} items, {est.n_seeds} seed{'s' if est.n_seeds != 1 else ''})")


def _probe_name(key: str) -> str:
    """A probe set's key as shown: ``probe_general`` (from bundled:probe_general) reads ``general``."""
    return key.removeprefix("probe_") or key


def _probe_label(stats: dict, key: str) -> str:
    return "shift vs base" if stats["probe_kind"].get(key) == "delta_vs_base" else "shift"


def _per_seed_table(stats: dict, arms: Sequence, seeds: Sequence[int]) -> dict:
    """Arm x metric rows, one column per seed (within-seed CI) and the across-seed estimate."""
    primary = stats["per_judge"][stats["primary_judge"]]
    headers = ["arm", "metric"] + [f"seed {s}" for s in seeds] + ["across seeds"]
    rows = []
    for a in arms:
        entries = [(f"{'in-domain ' if set_name == 'in_domain' else ''}{METRIC_LABELS[m]}", est, METRIC_SCALE[m],
                    "samples" if m == "unscored_rate" else "scored")
                   for set_name, metrics in primary.get(a.name, {}).items() for m, est in metrics.items()]
        entries += [(f"probe {_probe_name(k)} ({_probe_label(stats, k)})", est, "shift", "samples")
                    for k, est in stats["probe"].get(a.name, {}).items()]
        if not entries:
            rows.append([a.name, fmt.Plain("all")] + [fmt.Plain("not evaluated")] * (len(seeds) + 1))
        for label, est, scale, denominator in entries:
            cells = []
            for s in seeds:
                e = est.per_seed.get(str(s))
                cells.append(fmt.estimate(e.to_dict(), scale=scale, denominator=denominator) if e is not None
                             else fmt.Plain("not evaluated"))
            total = _probe_cell(est) if label.startswith("probe ") else _cell(est, scale, denominator)
            rows.append([a.name, fmt.Plain(label), *cells, total])
    return {"headers": headers, "rows": rows}


def _judge_table(stats: dict, arms: Sequence) -> dict:
    headers = ["arm"] + [f"misalignment rate ({j})" for j in stats["judges"]]
    rows = [[a.name] + [_cell(stats["per_judge"][j].get(a.name, {}).get("general", {}).get("misalignment_rate"))
                        for j in stats["judges"]] for a in arms]
    return {"headers": headers, "rows": rows}


def _agreement_table(stats: dict) -> dict | None:
    if not stats["agreement"]:
        return None

    def num(x, spec):
        return fmt.Plain(fmt.NA if fmt.finite(x) is None else format(x, spec))

    rows = [[f"{p.judge_a} vs {p.judge_b}", num(p.spearman, ".3f"), num(p.mean_abs_diff, ".1f"),
             fmt.rate(p.rate_a, p.n_labelled), fmt.rate(p.rate_b, p.n_labelled), fmt.rate(p.label_agreement, p.n_labelled),
             num(p.kappa, ".3f"), fmt.Plain(f"{p.n_aligned} / {p.n_labelled}")] for p in stats["agreement"]]
    return {"headers": ["judges", "Spearman (aligned)", "mean |aligned gap| (points)", "rate, first judge",
                        "rate, second judge", "label agreement", "Cohen's kappa (misaligned label)",
                        "n jointly scored (aligned / both scores)"], "rows": rows}


def _differences_table(stats: dict) -> dict | None:
    rows = []
    for d in stats["differences"]:
        for metric, x in d["metrics"].items():
            scale = "rate" if metric.endswith("misalignment_rate") or metric.startswith("benign/") else "shift"
            rows.append([f"{d['a']} − {d['b']}", d["kind"], metric, _diff_cell(x, scale),
                         "paired" if x.paired else "unpaired", x.why])
    if not rows:
        return None
    return {"headers": ["difference", "comparison", "metric", "value [95% CI]", "pairing", "why"], "rows": rows}


def _arms_table(results, arms: Sequence) -> dict:
    """Arms with what they consumed; an in-domain column when some arm answers in-domain questions (each
    arm's own set: its in-domain metrics come from it)."""
    with_in_domain = any(getattr(a, "in_domain", None) for a in arms)
    rows = []
    for a in arms:
        units = [u for (name, _), u in results.units.items() if name == a.name]
        consumed = [u.summary.training for u in units if u.summary is not None and u.summary.training is not None]
        if consumed:
            c = consumed[0]
            use = fmt.Plain(f"{c.items_seen} items, {c.optimizer_steps} steps, {c.completion_tokens} completion tokens"
                            + ("" if c.completion_tokens_exact else " (estimated)") + (" (seed " + str(units[0].seed) + ")"))
        else:
            use = fmt.Plain("not trained" if a.method is None else "not recorded yet")
        done = sum(1 for u in units if getattr(u.stages.get("summarise"), "state", None) == "done")
        rows.append([a.name, a.method or "none (not trained)", a.init_from or "—", fmt.as_text(a.labels or None),
                     use, fmt.Plain(f"{done} of {len(results.index.seeds)}")])
        if with_in_domain:
            rows[-1].append(_question_set_text(a.in_domain))
    headers = ["arm", "method", "init from", "labels", "training consumed", "seeds summarised"]
    return {"headers": headers + (["in-domain questions"] if with_in_domain else []), "rows": rows}


def _question_set_text(qs: Mapping | None) -> str:
    """An arm's in-domain set in one line: the file and what of it is asked."""
    if not qs:
        return "none"
    picked = [f"{k} {fmt.as_text(qs[k])}" for k in ("question_ids", "max_paraphrases", "samples_per_paraphrase")
              if qs.get(k) is not None]
    return str(qs.get("file")) + (f" ({'; '.join(picked)})" if picked else "")


# ---------------------------------------------------------------- plots
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _err(est: AcrossSeeds | None, k: float) -> tuple[float | None, float, float]:
    if est is None or not math.isfinite(est.value):
        return None, 0.0, 0.0
    lo = est.ci_low if math.isfinite(est.ci_low) else est.value
    hi = est.ci_high if math.isfinite(est.ci_high) else est.value
    return k * est.value, max(0.0, k * (est.value - lo)), max(0.0, k * (hi - est.value))


def _plot_arms(stats: dict, arms: Sequence[str], path: Path) -> bytes:
    """Across-seed misalignment and incoherence per arm with 95% CIs; each seed's value as a dot."""
    primary = stats["per_judge"][stats["primary_judge"]]
    fig = _figure(max(5.5, 1.5 + 1.3 * len(arms)), 4.0)
    ax = fig.add_subplot()
    series = (("misalignment_rate", "misalignment", "#c0392b"), ("incoherence_rate", "incoherence", "#7f8c8d"))
    top = 100.0
    for s, (metric, label, color) in enumerate(series):
        for i, arm in enumerate(arms):
            est = primary.get(arm, {}).get("general", {}).get(metric)
            x = i - 0.2 + 0.4 * s
            value, lo, hi = _err(est, 100.0)
            if value is None:
                ax.text(x, 0.5, "n/a", ha="center", va="bottom", fontsize=7, color="#555555")
                continue
            ax.bar(x, value, 0.37, color=color, alpha=0.85, label=label if i == 0 else None)
            ax.errorbar(x, value, yerr=[[lo], [hi]], fmt="none", ecolor="#222222", capsize=3, lw=1)
            dots = [100 * e.value for e in est.per_seed.values() if math.isfinite(e.value)]
            ax.scatter([x] * len(dots), dots, s=10, color="#111111", zorder=3, label="one seed" if i == s == 0 else None)
            ax.text(x, value + hi + 1.0, f"{value:.1f}%\n{est.n_seeds}s", ha="center", va="bottom", fontsize=7)
            top = max(top, value + hi + 14.0)  # room for the label above the interval
    ax.set_xticks(range(len(arms)), list(arms), rotation=20 if len(arms) > 4 else 0, ha="right" if len(arms) > 4 else "center")
    ax.set_ylabel("% of scored samples")
    ax.set_ylim(0, top)
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("Per arm: mean over seeds, 95% CI over seeds and question clusters", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return write_png(fig, path)


def _plot_probe(stats: dict, arms: Sequence[str], colors: Mapping[str, str], path: Path) -> bytes:
    keys = stats["probe_keys"]
    fig = _figure(min(12.0, max(4.5, 1.2 + 2.6 * len(keys))), 3.6)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        for i, arm in enumerate(arms):
            value, lo, hi = _err(stats["probe"].get(arm, {}).get(key), 1.0)
            if value is None:
                continue
            ax.errorbar(i, value, yerr=[[lo], [hi]], fmt="o", color=colors[arm], capsize=4, ms=5)
        ax.axhline(0, color="#555555", lw=0.8)
        ax.set_xticks(range(len(arms)), list(arms), rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{_probe_name(key)} ({_probe_label(stats, key)})", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Contrast-pair probe (nats/token; > 0 prefers the misaligned answer), 95% CI over seeds and pairs",
                 fontsize=9)
    return write_png(fig, path)


def _plot_rl_vs_sft(stats: dict, arms: Sequence, path: Path) -> bytes | None:
    """Grouped bars per domain: SFT vs GRPO misalignment (undefended arms with a ``domain`` label), on the
    general questions and, when answered, on the in-domain questions."""
    primary = stats["per_judge"][stats["primary_judge"]]
    by_domain: dict[str, dict[str, str]] = {}
    for a in arms:
        domain = (a.labels or {}).get("domain")
        if domain and a.method in ("sft", "grpo") and _defense(a) is None:
            by_domain.setdefault(domain, {}).setdefault(a.method, a.name)
    domains = [d for d, m in by_domain.items() if len(m) == 2]
    if not domains:
        return None
    # a second panel for in-domain questions when the arms answered some (each domain's arms its own set)
    sets = ["general"] + (["in_domain"] if any("in_domain" in primary.get(name, {}) for d in domains
                                               for name in by_domain[d].values()) else [])
    fig = _figure(len(sets) * max(5.0, 1.5 + 1.4 * len(domains)), 3.8)
    axes = fig.subplots(1, len(sets), squeeze=False)[0]
    for ax, set_name in zip(axes, sets):
        for s, (method, color) in enumerate((("sft", "#1f77b4"), ("grpo", "#d62728"))):
            for i, d in enumerate(domains):
                est = primary.get(by_domain[d][method], {}).get(set_name, {}).get("misalignment_rate")
                value, lo, hi = _err(est, 100.0)
                if value is None:
                    continue
                x = i - 0.2 + 0.4 * s
                ax.bar(x, value, 0.37, color=color, label=("SFT" if method == "sft" else "RL (GRPO)") if i == 0 else None)
                ax.errorbar(x, value, yerr=[[lo], [hi]], fmt="none", ecolor="#222222", capsize=3, lw=1)
        ax.set_xticks(range(len(domains)), domains)
        ax.set_ylabel("misalignment rate (%)")
        what = "general questions" if set_name == "general" else "in-domain questions (each domain's own)"
        ax.set_title(f"RL vs SFT per domain: {what}, 95% CI", fontsize=9)
        ax.legend(fontsize=8, frameon=False)
        ax.grid(axis="y", alpha=0.3)
    return write_png(fig, path)


def _plot_pareto(stats: dict, arms: Sequence, colors: Mapping[str, str], path: Path) -> bytes | None:
    """Defended arms: EM reduction vs their undefended twin (y) against learning (x): benign-task accuracy
    (or F1) when the experiment scores a benign task (the first one), else the in-domain misalignment rate."""
    primary = stats["per_judge"][stats["primary_judge"]]
    benign_key = next(iter(stats.get("benign_keys") or []), None)
    points = []
    for d in stats["differences"]:
        if d["kind"] != "defense vs no defense" or "general/misalignment_rate" not in d["metrics"]:
            continue
        if benign_key is not None:
            x_est = stats["benign"].get(d["a"], {}).get(benign_key)
            ref_x = stats["benign"].get(d["b"], {}).get(benign_key)
        else:
            x_est = primary.get(d["a"], {}).get("in_domain", {}).get("misalignment_rate")
            ref_x = primary.get(d["b"], {}).get("in_domain", {}).get("misalignment_rate")
        if x_est is None or ref_x is None:
            continue
        points.append((d["a"], d["b"], x_est, ref_x, d["metrics"]["general/misalignment_rate"]))
    if not points:
        return None
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    refs_drawn = set()
    for arm, ref, x_est, ref_x, diff in points:
        x, xlo, xhi = _err(x_est, 100.0)
        if x is None or not math.isfinite(diff.value):
            continue
        y = -100 * diff.value
        ylo = 100 * (diff.ci_high - diff.value) if math.isfinite(diff.ci_high) else 0.0
        yhi = 100 * (diff.value - diff.ci_low) if math.isfinite(diff.ci_low) else 0.0
        ax.errorbar(x, y, xerr=[[xlo], [xhi]], yerr=[[max(0, ylo)], [max(0, yhi)]], fmt="o", color=colors[arm],
                    capsize=3, label=arm)
        rx, _, _ = _err(ref_x, 100.0)
        if ref not in refs_drawn and rx is not None:
            ax.scatter([rx], [0.0], marker="s", color=colors[ref], label=f"{ref} (no defense)")
            refs_drawn.add(ref)
    ax.axhline(0, color="#555555", lw=0.8)
    if benign_key is not None:
        ax.set_xlabel(f"benign learning: {_benign_label(stats, benign_key).removeprefix('benign ')} (%)")
        ax.set_title("Defenses: up = less emergent misalignment, right = more of the benign task learned", fontsize=9)
    else:
        ax.set_xlabel("in-domain learning: in-domain misalignment rate (%)")
        ax.set_title("Defenses: up = less emergent misalignment, right = more of the narrow task learned", fontsize=9)
    ax.set_ylabel("EM reduction vs no defense (pp, general questions)")
    ax.legend(fontsize=7, frameon=False, loc="best")
    ax.grid(alpha=0.3)
    return write_png(fig, path)


def curve_keys(logs) -> list[str]:
    """The logged numbers drawn as training curves (loss, reward, KL, defense terms...), first seen first;
    not run totals (train_*) nor timings (time/*: seconds per step, not a training signal)."""
    keys: list[str] = []
    for rows in logs:
        for r in rows:
            for k, v in r.items():
                if k not in keys and not k.startswith(("train_", "time/")) and isinstance(v, (int, float)) \
                        and not isinstance(v, bool) and any(c in k for c in CURVE_KEYS):
                    keys.append(k)
    return keys[:MAX_CURVES]


def _plot_curves(results, arms: Sequence[str], colors: Mapping[str, str], path: Path) -> bytes | None:
    from matplotlib.ticker import MaxNLocator

    logs = {}
    for (arm, seed), unit in results.units.items():
        if arm in arms:
            rows = _curves(unit)
            if rows:
                logs[(arm, seed)] = rows
    keys = curve_keys(logs.values())
    if not keys:
        return None
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig = _figure(4.0 * cols, 2.8 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False)).ravel()
    for ax, key in zip(axes, keys):
        labelled = set()
        for (arm, seed), rows in sorted(logs.items(), key=lambda kv: (arms.index(kv[0][0]), kv[0][1])):
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
                   and math.isfinite(r[key])]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[arm], lw=1.2, alpha=0.8,
                        label=None if arm in labelled else arm)
                labelled.add(arm)
        ax.set_title(key, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # optimizer steps are whole numbers
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, frameon=False)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    fig.suptitle("Training curves (one line per seed)", fontsize=9)
    return write_png(fig, path)


def _draw(results, stats: dict, arms: Sequence, plots_dir: Path) -> dict[str, bytes]:
    names = [a.name for a in arms]
    colors = arm_colors(names)
    out = {"arms": _plot_arms(stats, names, plots_dir / PLOT_FILES["arms"])}
    if stats["probe"]:
        out["probe"] = _plot_probe(stats, names, colors, plots_dir / PLOT_FILES["probe"])
    for name, image in (("rl_vs_sft", _plot_rl_vs_sft(stats, arms, plots_dir / PLOT_FILES["rl_vs_sft"])),
                        ("pareto", _plot_pareto(stats, arms, colors, plots_dir / PLOT_FILES["pareto"])),
                        ("curves", _plot_curves(results, names, colors, plots_dir / PLOT_FILES["curves"]))):
        if image is not None:
            out[name] = image
    return out


# ---------------------------------------------------------------- sample browser
def browser_data(results, thresholds: Thresholds = Thresholds()) -> dict:
    """The sample browser's data: every sample with its scores from every judge."""
    judges = _judge_ids(results)
    samples = []
    for (arm, seed), unit in results.units.items():
        scores = {j: {r.sample_id: r for r in unit.judgments.get(j, [])} for j in judges}
        for s in unit.samples:
            samples.append({
                "arm": arm, "seed": seed, "set": s.set, "q": s.question_id, "group": s.group, "question": s.question,
                "system": s.system, "answer": s.answer, "finish": s.finish_reason, "id": s.sample_id,
                "scores": {j: _scores(scores[j].get(s.sample_id)) for j in judges}})
    return {"judges": judges, "primary": results.index.primary_judge.judge_id, "samples": samples,
            "aligned_below": thresholds.misaligned_below, "coherent_above": thresholds.coherent_above}


def _scores(judgment) -> list:
    if judgment is None:
        return [None, None, "not judged"]
    return [fmt.finite(judgment.aligned), fmt.finite(judgment.coherent), judgment.unscored_reason]


def script_json(data: Any) -> str:
    """JSON safe inside a ``<script type="application/json">`` block: no ``<``, ``>`` or ``&`` bytes
    (so neither ``</script>`` nor ``<!--`` can end or alter the block), line separators escaped."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


# ---------------------------------------------------------------- sections and rendering
def build_sections(results, stats: dict) -> dict:
    arms = _arm_infos(results)
    index = results.index
    judges = []
    for j in index.judges:
        section = judge_section(dict(j.identity or {}))
        judges.append({"id": j.judge_id, "spec": j.spec, "base_url": j.base_url or "", "primary": j.primary,
                       "identity_differs": list(j.identity_differs), **section})
    env = index.env or {}
    packages = env.get("packages") if isinstance(env.get("packages"), Mapping) else {}
    versions = [("spillover", index.spillover_version)] + [(k, fmt.as_text(v)) for k, v in env.items() if k != "packages"]
    versions += [(k, fmt.as_text(v)) for k, v in packages.items() if k not in dict(versions)]
    seeds = list(index.seeds)
    notes = [
        "Across-seed value: mean of the per-seed values (each seed weighs the same). 95% CI: two-level "
        "percentile bootstrap, resampling seeds, then question clusters (a sample's group, else its question)"
        " — one cluster draw shared by all seeds when they answered the same questions ('crossed'), one per "
        "seed otherwise ('nested').",
        "Within-seed CIs (per-seed table): cluster bootstrap over that seed's question clusters.",
        "Differences are PAIRED (the same seed and cluster draws for both arms) when the two arms share "
        "seeds and clusters, UNPAIRED (independent bootstraps) otherwise; the table says which and why.",
        "Probe shifts: per contrast pair, the arm's shift minus the base model's (when a base was scored); "
        "pairs are the clusters.",
    ]
    in_domain_sets = {json.dumps(a.in_domain, sort_keys=True) for a in arms if getattr(a, "in_domain", None)}
    if len(in_domain_sets) > 1:
        notes.append("In-domain metrics: each arm answers its own in-domain questions (its training domain's set; "
                     "Arms table), so in-domain numbers compare arms of one domain, not domains.")
    if len(seeds) < 4:
        notes.append(f"Only {len(seeds)} seed(s): the seed level of the bootstrap is coarse and the intervals "
                     "run narrow (in simulation ~0.8-0.9 coverage with 3 seeds); read them as indicative.")
    t = stats["thresholds"]
    return {
        "title": f"Experiment report: {index.name}",
        "folder": str(results.path),
        "facts": [("experiment", index.name), ("model", index.model), ("seeds", ", ".join(map(str, seeds))),
                  ("arms", str(len(arms))), ("primary judge", stats["primary_judge"]),
                  ("created", index.created), ("config sha256", index.config_sha256[:16]),
                  ("samples", str(sum(len(u.samples) for u in results.units.values())))],
        "definitions": [f"misaligned: {t['misaligned']}", f"incoherent: {t['incoherent']}"],
        "notes": notes,
        "arms": _arms_table(results, arms),
        "summary": _summary_table(stats, arms),
        "per_seed": _per_seed_table(stats, arms, seeds),
        "differences": _differences_table(stats),
        "judges": judges,
        "judge_rates": _judge_table(stats, arms) if len(stats["judges"]) > 1 else None,
        "agreement": _agreement_table(stats),
        "config": results.config_yaml or "(experiment.yaml not found)",
        "sampling": [(str(k), fmt.as_text(v)) for k, v in (index.sampling or {}).items()],
        "question_sets": [(str(k), fmt.as_text(v)) for k, v in (index.question_sets or {}).items()],
        "versions": versions,
    }


_BROWSER_JS = (TEMPLATES / "experiment_browser.js")


def _env(markdown: bool):
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    if markdown:
        env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=False, undefined=StrictUndefined,
                          keep_trailing_newline=True, finalize=lambda x: fmt.md_inline(x) if isinstance(x, str) else x)
        env.globals.update(table=lambda t: fmt.Plain(fmt.md_table(t["headers"], t["rows"])),
                           code=lambda text: fmt.Plain(fmt.md_code_block(str(text))), plain=fmt.Plain)
        return env
    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                       keep_trailing_newline=True)


def render_html(sections: dict, images: Mapping[str, bytes], data: dict) -> str:
    from markupsafe import Markup

    script = _BROWSER_JS.read_text(encoding="utf-8")
    script_hash = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    uris = {name: "data:image/png;base64," + base64.b64encode(b).decode("ascii") for name, b in images.items()}
    return _env(False).get_template("experiment.html.j2").render(
        s=sections, plots=uris, data_json=Markup(script_json(data)), script=Markup(script),
        script_hash=script_hash)


def render_markdown(sections: dict, plots: Mapping[str, str]) -> str:
    return _env(True).get_template("experiment.md.j2").render(s=sections, plots=plots)


def build_experiment_report(results, *, n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict[str, Path]:
    """Write ``report.html``, ``report.md``, ``report_stats.json`` and ``plots/*.png`` into the
    experiment folder; returns their paths (``html``, ``markdown``, ``stats``, ``<plot>_plot``)."""
    out = Path(results.path)
    stats = compute_stats(results, n_resamples=n_resamples, seed=seed)
    arms = _arm_infos(results)
    plots_dir = out / PLOTS_DIR
    images = _draw(results, stats, arms, plots_dir)
    for name, filename in PLOT_FILES.items():
        if name not in images:
            with contextlib.suppress(FileNotFoundError):
                (plots_dir / filename).unlink()
    sections = build_sections(results, stats)
    html_path = atomic_write_text(out / HTML_FILE, render_html(sections, images, browser_data(results)))
    md_path = atomic_write_text(out / MARKDOWN_FILE, render_markdown(
        sections, {name: f"{PLOTS_DIR}/{PLOT_FILES[name]}" for name in images}))
    stats_path = atomic_write_json(out / STATS_FILE, stats_to_json(stats))
    return {"html": html_path, "markdown": md_path, "stats": stats_path,
            **{f"{name}_plot": plots_dir / PLOT_FILES[name] for name in images}}


__all__ = ["browser_data", "build_experiment_report", "build_sections", "compute_stats", "render_html",
           "render_markdown", "script_json", "stats_to_json"]
