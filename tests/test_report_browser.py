"""The experiment report in a real headless browser (Debian chromium driven by Playwright): the page
loads without console errors, the plots render, the sample browser's filters work, and hostile
model text stays inert. Skipped only where chromium or playwright cannot be installed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from _experiment_fixture import ARMS, GENERAL, HOSTILE, IN_DOMAIN, PER_QUESTION, SEEDS, make_experiment

CHROMIUM = os.environ.get("SPILLOVER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page_and_errors(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium; .ci/run does this in CI)")
    from spillover.experiment.results import load_experiment
    from spillover.report.experiment import build_experiment_report

    out = make_experiment(tmp_path_factory.mktemp("exp"))
    html = build_experiment_report(load_experiment(out), n_resamples=200)["html"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            errors: list[str] = []
            dialogs: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(html.as_uri())
            page.wait_for_load_state("load")
            if os.environ.get("SPILLOVER_SCREENSHOT"):
                page.screenshot(path=os.environ["SPILLOVER_SCREENSHOT"], full_page=True)
            yield page, errors, dialogs
        finally:
            browser.close()


def _visible_rows(page) -> int:
    return page.locator("#browser-body tr.sample").count()


def test_page_loads_without_console_errors_and_plots_render(page_and_errors):
    page, errors, dialogs = page_and_errors
    assert errors == []
    assert dialogs == []  # the hostile answer's alert() never ran
    images = page.locator("img.plot")
    assert images.count() == 5  # arms, probe, RL vs SFT, Pareto, training curves
    sizes = page.eval_on_selector_all("img.plot", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight,"
                                                  " e.getBoundingClientRect().width])")
    for complete, width, height, shown in sizes:
        assert complete and width > 100 and height > 100 and shown > 100


def test_filters_select_rows(page_and_errors):
    page, errors, _ = page_and_errors
    per_unit = (len(GENERAL) + len(IN_DOMAIN)) * PER_QUESTION
    total = len(ARMS) * len(SEEDS) * per_unit
    page.select_option("#f-arm", "")
    page.select_option("#f-seed", "")
    assert _visible_rows(page) == min(total, 200)
    assert f"of {total}" in page.text_content("#browser-count") or "first 200" in page.text_content("#browser-count")
    page.select_option("#f-arm", "rl_med")
    assert _visible_rows(page) == len(SEEDS) * per_unit
    page.select_option("#f-seed", "1")
    assert _visible_rows(page) == per_unit
    page.select_option("#f-question", "q1")
    assert _visible_rows(page) == PER_QUESTION
    page.select_option("#f-question", "")
    page.select_option("#f-seed", "")
    page.fill("#f-max", "29")
    low = _visible_rows(page)
    page.fill("#f-max", "")
    assert 0 < low < len(SEEDS) * per_unit
    assert errors == []


def test_hostile_answer_is_shown_as_text(page_and_errors):
    page, _, dialogs = page_and_errors
    page.select_option("#f-arm", "rl_med")
    page.select_option("#f-seed", "0")
    page.select_option("#f-question", "q1")
    page.fill("#f-max", "")
    answers = page.eval_on_selector_all("#browser-body .answer", "els => els.map(e => e.textContent)")
    assert HOSTILE in answers
    assert page.locator("#browser-body img").count() == 0 and page.locator("#browser-body script").count() == 0
    assert page.eval_on_selector_all("script", "els => els.length") == 2  # the data block and the page's own
    assert dialogs == []


def test_rl_vs_sft_plot_adds_an_in_domain_panel_when_arms_answered_in_domain_questions(tmp_path):
    """The papers compare RL and SFT on each domain's own in-domain questions as well as on general ones."""
    import copy
    import io

    from PIL import Image

    from spillover.experiment.results import load_experiment
    from spillover.report.experiment import _arm_infos, _plot_rl_vs_sft, compute_stats

    res = load_experiment(make_experiment(tmp_path / "exp"))
    stats = compute_stats(res, n_resamples=50)
    arms = _arm_infos(res)
    with_in_domain = Image.open(io.BytesIO(_plot_rl_vs_sft(stats, arms, tmp_path / "a.png")))
    general_only = copy.deepcopy(stats)
    for sets in general_only["per_judge"][general_only["primary_judge"]].values():
        sets.pop("in_domain", None)
    without = Image.open(io.BytesIO(_plot_rl_vs_sft(general_only, arms, tmp_path / "b.png")))
    assert with_in_domain.size[0] >= 1.8 * without.size[0] and with_in_domain.size[1] == without.size[1]


def test_training_curves_leave_out_timings_and_totals():
    from spillover.report.experiment import curve_keys

    rows = [{"step": 1, "loss": 2.0, "reward": 0.1, "time/reward/rhetoric-lexicon_s": 0.03, "train_loss": 1.9,
             "completion_tokens_trained": 400, "defense/kl/loss": 0.2, "epoch": 1.0}]
    assert curve_keys([rows]) == ["loss", "reward", "defense/kl/loss"]
