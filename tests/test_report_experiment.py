"""The experiment report: escaping of hostile model/judge/config text (HTML, Markdown, embedded JSON),
numbers that match the statistics and the per-evaluation metrics, comparisons, partial experiments,
idempotence, and `spillover report DIR` on an experiment folder."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from _experiment_fixture import HOSTILE, SEEDS, make_experiment
from spillover.evaluate.metrics import compute_metrics
from spillover.experiment.results import ArmInfo, load_experiment
from spillover.report.experiment import _comparisons, build_experiment_report, script_json

N = 200  # bootstrap resamples: enough for the checks, fast


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = make_experiment(tmp_path_factory.mktemp("exp"))
    paths = build_experiment_report(load_experiment(out), n_resamples=N)
    return out, paths


def test_hostile_text_is_escaped_in_html(built):
    _, paths = built
    html = paths["html"].read_text(encoding="utf-8")
    assert "<script>alert(1)" not in html and "onerror=alert(2)>" not in html
    assert "<img src=x" not in html
    assert "</pre><b>not bold</b>" not in html and "&lt;/pre&gt;&lt;b&gt;not bold" in html  # the config
    assert "synthetic &lt;demo&gt;" in html and "synthetic <demo>" not in html
    assert "Rate how aligned &lt;this&gt; answer" in html  # the judge prompt
    assert "panel-model-from-marker" in html  # identity recorded in the judge stage's marker only
    # exactly two script elements: the JSON data block and the page's own script
    assert len(re.findall(r"<script[ >]", html)) == 2 and html.count("</script>") == 2
    data = re.search(r'<script type="application/json" id="samples-data">(.*?)</script>', html, re.S).group(1)
    assert "<" not in data and ">" not in data and "&" not in data
    samples = json.loads(data)["samples"]
    assert HOSTILE in [s["answer"] for s in samples]  # intact after decoding, shown via textContent


def test_csp_allows_only_the_pages_script(built):
    _, paths = built
    html = paths["html"].read_text(encoding="utf-8")
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "default-src 'none'" in csp and "unsafe-inline'; script-src 'sha256-" in csp.replace("style-src ", "")
    script = re.search(r"<script>(.*?)</script>", html, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    assert f"'sha256-{digest}'" in csp


def test_markdown_escapes_values(built):
    _, paths = built
    md = paths["markdown"].read_text(encoding="utf-8")
    head, config = md.split("## Config", 1)
    assert "synthetic &lt;demo&gt;" in head and "<demo>" not in head
    assert "```text\nname: synthetic <demo>" in config  # the config in a fenced block: shown literally
    assert "</pre><b>not bold</b>" in config
    assert "sft\\_med\\_kl" in md  # Markdown punctuation escaped in tables
    assert "![arms](plots/arms.png)" in md


def test_script_json_round_trips_and_cannot_close_the_block():
    value = {"a": "</script><!-- & \u2028 x", "b": [1, None, 2.5]}
    text = script_json(value)
    assert json.loads(text) == value
    assert not set("<>&\u2028") & set(text)
    with pytest.raises(ValueError):
        script_json({"x": float("nan")})


def test_numbers_match_per_seed_metrics_and_comparisons(built):
    out, paths = built
    stats = json.loads(paths["stats"].read_text())
    results = load_experiment(out)
    for arm in ("base", "rl_med"):
        est = stats["metrics"]["local"][arm]["general"]["misalignment_rate"]
        per_seed = []
        for seed in SEEDS:
            rows = [r for r in results.unit(arm, seed).joined("local") if r["set"] == "general"]
            expected = compute_metrics(rows, n_resamples=N)["overall"]["misalignment_rate"]
            assert est["per_seed"][str(seed)]["value"] == pytest.approx(expected["value"])
            assert est["per_seed"][str(seed)]["n"] == expected["n"]
            per_seed.append(expected["value"])
        assert est["value"] == pytest.approx(sum(per_seed) / len(per_seed))
        assert est["n_seeds"] == 2 and est["design"] == "crossed" and est["n_clusters"] == 2  # groups g1, g2
        assert est["ci_low"] <= est["value"] <= est["ci_high"]
    kinds = {(d["a"], d["b"]): d["kind"] for d in stats["differences"]}
    assert kinds == {("sft_med_kl", "sft_med"): "defense vs no defense", ("rl_med", "sft_med"): "RL vs SFT"}
    rl = next(d for d in stats["differences"] if d["a"] == "rl_med")
    assert all(m["paired"] for m in rl["metrics"].values())
    assert set(rl["metrics"]) == {"general/misalignment_rate", "in_domain/misalignment_rate", "probe/general",
                                  "probe/control"}
    # probe: per pair shift - base shift; rl_med's lift is 2 * 0.5 on the general set, none on control
    assert stats["probe"]["rl_med"]["general"]["value"] == pytest.approx(1.0, abs=0.05)
    assert stats["probe"]["rl_med"]["control"]["value"] == pytest.approx(0.0, abs=0.05)
    assert stats["probe_kind"]["general"] == "delta_vs_base"
    (agree,) = stats["agreement"]
    assert agree["judge_a"] == "local" and agree["judge_b"] == "panel"
    n_local_both = sum(1 for u in results.units.values() for j in u.judgments["local"] if j.aligned is not None)
    assert agree["n_aligned"] == n_local_both
    assert 0.5 < agree["spearman"] < 1.0 and 0 < agree["mean_abs_diff"] < 30


def test_comparisons_fallback_to_reference_arm():
    arms = [ArmInfo(name="base"), ArmInfo(name="a", method="sft"), ArmInfo(name="b", method="grpo", labels={"x": "1"})]
    assert _comparisons(arms) == [("a", "base", "arm vs reference"), ("b", "base", "arm vs reference")]


def test_comparisons_read_defenses_from_the_recipe_without_labels():
    recipe = {"method": "sft", "data": "bundled:insecure_code", "max_steps": 4}
    arms = [ArmInfo(name="plain", method="sft", train=recipe),
            ArmInfo(name="kl", method="sft", train={**recipe, "defenses": [{"name": "kl", "weight": 0.1}]}),
            ArmInfo(name="kl-other-data", method="sft", train={**recipe, "data": "x", "defenses": [{"name": "kl"}]}),
            ArmInfo(name="rl", method="grpo", train={"method": "grpo"})]
    assert _comparisons(arms) == [("kl", "plain", "defense vs no defense"), ("rl", "plain", "RL vs SFT")]


def test_cli_report_on_partial_experiment_is_idempotent(tmp_path):
    """`spillover report DIR` detects an experiment folder; one unit not run yet makes that arm's
    statistics one-seed and its comparison unpaired; a rebuild writes the same bytes."""
    from spillover.cli import app

    out = make_experiment(tmp_path / "exp", hostile=False)
    shutil.rmtree(out / "arms" / "rl_med" / "seed_1")
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert "statistics:" in result.output
    files = {name: out / name for name in ("report.html", "report.md", "report_stats.json")}
    files.update({p.name: p for p in (out / "plots").iterdir()})
    assert len(files) == 8
    stats = json.loads(files["report_stats.json"].read_text())
    rl = stats["metrics"]["local"]["rl_med"]["general"]["misalignment_rate"]
    assert rl["n_seeds"] == 1 and list(rl["per_seed"]) == ["0"]
    diff = next(d for d in stats["differences"] if d["a"] == "rl_med")["metrics"]["general/misalignment_rate"]
    assert not diff["paired"] and "different seeds" in diff["why"]
    html = files["report.html"].read_text()
    assert "unpaired" in html and "1 of 2" in html
    first = {k: p.read_bytes() for k, p in files.items()}
    assert CliRunner().invoke(app, ["report", str(out)]).exit_code == 0
    assert {k: p.read_bytes() for k, p in files.items()} == first
