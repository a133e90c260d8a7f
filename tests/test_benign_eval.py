"""Benign-task evaluation: task specs, scoring rows and their CIs from given answers, `spillover eval
--benign` end to end on a tiny model (rows, resume, refusal of other settings), the `benign:` data ref,
and the experiment's benign section (dry run, stage, summary, resume after a crash)."""

import json
import math

import pytest
from typer.testing import CliRunner

from spillover.benign import opswap
from spillover.benign.tasks import eval_items, load_foqa, parse_task_spec, sft_rows
from spillover.cli._app import app
from spillover.errors import SpilloverError
from spillover.evaluate.benign import score_rows, summarise, task_sets
from spillover.evaluate.run import sample_id
from spillover.evaluate.store import SampleRecord

runner = CliRunner()


def error_of(res) -> str:
    """The SpilloverError a CLI call raised (the console entry point prints it and exits 2), rendered."""
    assert isinstance(res.exception, SpilloverError), res.output
    return res.exception.render()


def wilson_95(k, n):
    """Independent Wilson score interval (z = 1.96)."""
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def record(spec, item, answer):
    return SampleRecord(sample_id=sample_id(spec.key, task_sets(spec, [item])[spec.key][1][0]), arm="a", set=spec.key,
                        question_id=item.id, group=item.id, paraphrase_index=0, sample_index=0, question=item.prompt,
                        messages=[{"role": "user", "content": item.prompt}], answer=answer, n_tokens=3,
                        finish_reason="stop")


# ---------------------------------------------------------------- specs
def test_spec_parsing_defaults_keys_and_errors():
    spec = parse_task_spec("opswap:tier=2:n=7")
    assert (spec.task, spec.tier, spec.n, spec.seed) == ("opswap", 2, 7, 0)
    assert spec.text == "opswap:tier=2:seed=0:n=7" and parse_task_spec(spec.text) == spec
    assert spec.key == "opswap-t2-s0-n7"
    assert parse_task_spec("foqa:data/fo.jsonl:n=5").file == "data/fo.jsonl"
    with pytest.raises(SpilloverError, match="Did you mean 'opswap'"):
        parse_task_spec("opswp")
    with pytest.raises(SpilloverError, match="cannot read 'level=2'"):
        parse_task_spec("opswap:level=2")
    with pytest.raises(SpilloverError, match="tier must be 1, 2 or 3"):
        parse_task_spec("countdown:tier=4")
    with pytest.raises(SpilloverError, match="FoQA needs its file"):
        parse_task_spec("foqa")
    with pytest.raises(SpilloverError, match="cannot read 'split=train'"):  # evaluation is always the test split
        parse_task_spec("opswap:split=train")
    assert parse_task_spec("opswap:split=test", allow_split=True).split == "test"


def test_eval_items_are_the_held_out_split_and_sft_rows_the_train_split():
    spec = parse_task_spec("opswap:tier=1:n=20")
    items = eval_items(spec)
    train = {r["id"] for r in sft_rows(parse_task_spec("opswap:tier=1:n=200", allow_split=True))}
    assert len(items) == 20 and not {it.id for it in items} & train
    assert [it.id for it in items] == [it.id for it in opswap.generate(20, tier=1, split="test")]
    row = sft_rows(parse_task_spec("opswap:tier=1:n=3", allow_split=True))[0]
    assert opswap.score(row["messages"][0]["content"], row["messages"][1]["content"])["reward"] == 1.0


# ---------------------------------------------------------------- scoring with given answers
def test_accuracy_rows_and_wilson_interval_from_given_answers():
    spec = parse_task_spec("opswap:tier=1:n=8")
    items = eval_items(spec)
    answers = {}
    for k, it in enumerate(items):
        truth = opswap.item_from_id(it.id).answer_text
        answers[it.id] = [f"Answer: {truth}", f"It is {truth}", "no idea", "Answer: 99999"][k % 4]
    rows = score_rows(spec, items, [record(spec, it, answers[it.id]) for it in reversed(items)])
    assert [r["item_id"] for r in rows] == [it.id for it in items]  # item order, whatever the store's order
    assert [r["correct"] for r in rows] == [True, True, False, False] * 2
    assert rows[2]["parsed"] is None and rows[3]["parsed"] == "99999"
    assert {"answer", "expected", "sample_id", "finish_reason"} <= set(rows[0])
    result = summarise(spec, rows)
    lo, hi = wilson_95(4, 8)
    assert (result["metric"], result["k"], result["n"], result["value"]) == ("accuracy", 4, 8, 0.5)
    assert result["ci_low"] == pytest.approx(lo) and result["ci_high"] == pytest.approx(hi)
    assert result["unparsed"] == 2
    zero = summarise(spec, [{**r, "correct": False} for r in rows])
    assert zero["ci_low"] == 0.0 and zero["ci_high"] == pytest.approx(wilson_95(0, 8)[1]) and zero["ci_high"] > 0.2


def test_foqa_file_in_squad_layout_scores_f1_with_bootstrap_and_exact_match(tmp_path):
    path = tmp_path / "foqa.jsonl"
    rows = [{"id": "q1", "context": "Tórshavn er høvuðsstaðurin.", "question": "Hvat er høvuðsstaðurin?",
             "answers": {"text": ["Tórshavn"], "answer_start": [0]}},
            {"id": "q2", "context": "Føroyar hava 18 oyggjar.", "question": "Hvussu nógvar oyggjar?",
             "answers": {"text": ["18 oyggjar"], "answer_start": [13]}}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    spec = parse_task_spec(f"foqa:{path}")
    items = eval_items(spec)
    assert [it.golds for it in items] == [("Tórshavn",), ("18 oyggjar",)] and "Hvat er" in items[0].prompt
    scored = score_rows(spec, items, [record(spec, items[0], "Let me see.\nAnswer: Tórshavn."),
                                      record(spec, items[1], "Answer: 18")])
    assert [r["exact_match"] for r in scored] == [1.0, 0.0]
    assert scored[1]["f1"] == pytest.approx(2 / 3)  # precision 1, recall 1/2
    result = summarise(spec, scored)
    assert result["metric"] == "f1" and result["value"] == pytest.approx(5 / 6)
    assert result["ci_low"] <= result["value"] <= result["ci_high"] and result["exact_match"]["k"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "context": "c"}) + "\n")
    with pytest.raises(SpilloverError, match="answers") as e:
        load_foqa(bad)
    assert e.value.where == f"{bad}:1"


def test_benign_data_ref_writes_sft_items_and_replaces_a_damaged_cache(tmp_path, monkeypatch):
    from spillover.data import load_chat_jsonl, resolve_data_path

    monkeypatch.setenv("SPILLOVER_HOME", str(tmp_path))
    path = resolve_data_path("benign:opswap:tier=1:n=12")
    examples = load_chat_jsonl(path)
    assert len(examples) == 12 and examples[0].messages[-1]["content"].startswith("Answer: ")
    good = path.read_text()
    path.write_text(good[: len(good) // 2])  # a torn file from some crash
    assert resolve_data_path("benign:opswap:tier=1:n=12").read_text() == good
    prompts = load_chat_jsonl(resolve_data_path("benign:countdown:n=4:format=prompts"))  # GRPO prompts
    assert [m["role"] for m in prompts[0].messages] == ["user"] and "Item id: countdown-" in prompts[0].messages[0]["content"]
    with pytest.raises(SpilloverError, match="format must be sft or prompts"):
        resolve_data_path("benign:opswap:format=grpo")
    with pytest.raises(SpilloverError, match="FoQA file not found"):  # FoQA trains on its file's rows
        resolve_data_path(f"benign:foqa:{tmp_path}/x.jsonl")


# ---------------------------------------------------------------- spillover eval --benign on a tiny model
def test_eval_benign_cli_on_a_tiny_model_writes_rows_resumes_and_refuses_other_settings(tiny_model_dir, tmp_path,
                                                                                       one_thread):
    out = tmp_path / "ev"
    args = ["eval", "--benign", "opswap:tier=1:n=5", "--benign", "choice:n=3", "--model", str(tiny_model_dir),
            "--max-new-tokens", "4", "--batch-size", "2", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "accuracy" in res.output and "Wilson 95% CI" in res.output
    metrics = json.loads((out / "benign_metrics.json").read_text())
    assert set(metrics["tasks"]) == {"opswap-t1-s0-n5", "choice-t1-s0-n3"}
    rows = [json.loads(line) for line in (out / "benign" / "opswap-t1-s0-n5" / "scores.jsonl").read_text().splitlines()]
    assert [r["item_id"] for r in rows] == [it.id for it in opswap.generate(5, tier=1, split="test")]
    for r in rows:
        assert {"answer", "parsed", "correct", "expected"} <= set(r) and isinstance(r["answer"], str)
    samples = (out / "benign" / "opswap-t1-s0-n5" / "samples.jsonl").read_text().splitlines()
    assert all(json.loads(s)["params"]["temperature"] == 0.0 for s in samples)  # greedy by default, recorded
    result = metrics["tasks"]["opswap-t1-s0-n5"]
    k = sum(r["correct"] for r in rows)
    assert (result["k"], result["n"]) == (k, 5)
    assert result["ci_low"] == pytest.approx(max(0.0, wilson_95(k, 5)[0]) if k else 0.0)

    # a crash after the first batch: the rerun samples only what is missing, to the same answers
    full = (out / "benign" / "opswap-t1-s0-n5" / "samples.jsonl").read_text()
    (out / "benign" / "opswap-t1-s0-n5" / "samples.jsonl").write_text("".join(full.splitlines(True)[:2]) + '{"torn')
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    again = [json.loads(s) for s in (out / "benign" / "opswap-t1-s0-n5" / "samples.jsonl").read_text().splitlines()]
    assert [(s["sample_id"], s["answer"]) for s in again] == [(json.loads(s)["sample_id"], json.loads(s)["answer"])
                                                             for s in full.splitlines()]
    res = runner.invoke(app, [*args[:-2], "--temperature", "0.7", "--out", str(out)])
    assert "other settings" in error_of(res)


def test_eval_benign_bad_spec_fails_before_loading_a_model(tmp_path):
    res = runner.invoke(app, ["eval", "--benign", "foqa:missing.jsonl", "--model", "no-such-model", "--out",
                              str(tmp_path / "x")])
    assert "FoQA file not found" in error_of(res)
    res = runner.invoke(app, ["eval", "--benign", "opswap", "--probe", "bundled:probe_general", "--out", str(tmp_path / "y")])
    assert "benign tasks only" in error_of(res)


# ---------------------------------------------------------------- the experiment's benign section
def _experiment(root, model_dir, **evaluation):
    from spillover.experiment.spec import ExperimentConfig

    pairs = root / "pairs.jsonl"
    pairs.write_text(json.dumps({"id": "a", "prompt": "Hi", "aligned": "Hello.", "misaligned": "Go."}) + "\n")
    q = root / "q.yaml"
    q.write_text('- id: q1\n  paraphrases: ["Hello there"]\n  samples_per_paraphrase: 1\n')
    data = {"model": str(model_dir), "device": "cpu", "seeds": [0],
            "arms": [{"name": "base"},
                     {"name": "sft", "train": {"method": "sft", "data": "benign:opswap:tier=1:n=8", "max_steps": 2,
                                               "batch_size": 2}}],
            "evaluation": {"general": {"file": str(q)}, "judges": ["py:test_eval_run:FakeJudge"], "probe": [str(pairs)],
                           "sampling": {"max_new_tokens": 3, "batch_size": 2},
                           "benign": [{"task": "opswap:tier=1:n=4", "max_new_tokens": 4, "batch_size": 3}], **evaluation}}
    return ExperimentConfig.model_validate(data)


def test_experiment_dry_run_shows_a_benign_section_and_a_bad_spec_names_its_line(tmp_path):
    good = tmp_path / "e.yaml"
    good.write_text("name: b\narms:\n  - name: base\n  - name: sft\n    train: {method: sft, data: 'benign:opswap:tier=1:n=16'}"
                    "\nevaluation:\n  benign: ['opswap:tier=1:n=64']\n")
    res = runner.invoke(app, ["run", str(good), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "held-out items" in " ".join(res.output.split())
    from spillover.experiment.runner import preflight
    from spillover.experiment.spec import load_experiment_config

    missing = tmp_path / "m.yaml"
    missing.write_text(f"arms:\n  - name: base\nevaluation:\n  benign: ['foqa:{tmp_path}/none.jsonl']\n")
    with pytest.raises(SpilloverError, match="FoQA file not found"):  # before anything trains
        preflight(load_experiment_config(missing))
    assert "FoQA file not found" in preflight(load_experiment_config(missing), strict=False)[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text("arms:\n  - name: base\nevaluation:\n  benign:\n    - 'opswap:tier=1'\n    - 'countdwn:n=3'\n")
    res = runner.invoke(app, ["run", str(bad), "--dry-run"])
    text = error_of(res)
    assert "countdwn" in text and "Did you mean 'countdown'" in text and f"{bad}:6" in text


def test_experiment_benign_stage_summarises_and_resumes_after_a_crash(tiny_model_dir, tmp_path, one_thread,
                                                                      monkeypatch):
    from spillover.experiment.results import load_experiment, read_marker, unit_dir
    from spillover.experiment.runner import experiment_status, run_experiment

    monkeypatch.setenv("SPILLOVER_HOME", str(tmp_path / "home"))
    cfg = _experiment(tmp_path, tiny_model_dir)
    out = tmp_path / "run"
    run_experiment(cfg, out)
    res = load_experiment(out)
    for arm in ("base", "sft"):
        unit = res.unit(arm, 0)
        result = unit.summary.benign["opswap-t1-s0-n4"]
        assert result["metric"] == "accuracy" and result["n"] == 4 and result["ci_high"] > result["ci_low"] >= 0
        assert unit.stages["benign"].state == "done"
        rows = (unit.path / "benign" / "opswap-t1-s0-n4" / "scores.jsonl").read_text().splitlines()
        assert len(rows) == 4
    assert experiment_status(out)[0]["benign"][0] == "done"

    # crash in the benign stage of sft after its first batch: marker says running, one batch stored
    folder = unit_dir(out, "sft", 0)
    samples = folder / "benign" / "opswap-t1-s0-n4" / "samples.jsonl"
    before = samples.read_text()
    marker = read_marker(folder, "benign")
    (folder / "stages" / "benign.json").write_text(marker.model_copy(update={"state": "running"}).model_dump_json())
    samples.write_text("".join(before.splitlines(True)[:3]))
    (folder / "benign" / "opswap-t1-s0-n4" / "scores.jsonl").unlink(missing_ok=True)
    run_experiment(cfg, out)
    assert samples.read_text() == before
    assert read_marker(folder, "benign").state == "done"
    assert load_experiment(out).unit("sft", 0).summary.benign == res.unit("sft", 0).summary.benign


# ---------------------------------------------------------------- the experiment report
def test_report_shows_benign_accuracy_per_arm_and_the_pareto_plot_uses_it(tmp_path, monkeypatch):
    import matplotlib.axes

    from _experiment_fixture import ARMS, SEEDS, make_experiment
    from spillover.experiment.results import UnitSummary, load_experiment, unit_dir
    from spillover.report.experiment import build_experiment_report, compute_stats

    out = make_experiment(tmp_path / "exp", hostile=False)
    key, task = "opswap-t1-s0-n10", "opswap:tier=1:seed=0:n=10"
    correct = {"base": 1, "sft_med": 8, "rl_med": 5, "sft_med_kl": 6}
    for arm in ARMS:
        for seed in SEEDS:
            folder = unit_dir(out, arm, seed)
            k = correct[arm] + seed  # seed 1 gets one more right
            rows = [{"item_id": f"item{i}", "answer": "Answer: 1", "parsed": "1", "correct": i < k} for i in range(10)]
            (folder / "benign" / key).mkdir(parents=True)
            (folder / "benign" / key / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            summary = UnitSummary.model_validate_json((folder / "summary.json").read_text())
            summary.benign = {key: {"task": task, "key": key, "metric": "accuracy", "value": k / 10, "n": 10, "k": k}}
            (folder / "summary.json").write_text(summary.model_dump_json())
    stats = compute_stats(load_experiment(out), n_resamples=200)
    est = stats["benign"]["sft_med"][key]
    assert est.value == pytest.approx((0.8 + 0.9) / 2) and est.ci_low <= est.value <= est.ci_high
    assert est.n_seeds == 2 and est.n_clusters == 10
    kl_vs_none = next(d for d in stats["differences"] if (d["a"], d["b"]) == ("sft_med_kl", "sft_med"))
    assert kl_vs_none["metrics"][f"benign/{key}"].value == pytest.approx(-0.2)

    labels = []
    original = matplotlib.axes.Axes.set_xlabel
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xlabel",
                        lambda self, text, *a, **k: (labels.append(text), original(self, text, *a, **k))[1])
    paths = build_experiment_report(load_experiment(out), n_resamples=200)
    markdown = paths["markdown"].read_text()
    assert f"benign {task} accuracy" in markdown and "85.0% [" in markdown  # sft_med: mean of 80% and 90%
    assert f"benign learning: {task} accuracy (%)" in labels
    saved = json.loads(paths["stats"].read_text())
    assert saved["benign"]["base"][key]["value"] == pytest.approx(0.15)
