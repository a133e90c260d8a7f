"""The experiment runner end to end on a tiny model: 2 arms (SFT, GRPO) x 2 seeds, killed with SIGKILL
in training, sampling and judging, resumes to results identical to an uninterrupted run; status,
changed-config refusal, --force-stage and judge rerun on the same folder."""

import json
import multiprocessing
import os

import pytest

from spillover.errors import SpilloverError
from spillover.evaluate.store import FAULT_ENV
from spillover.experiment.results import load_experiment, read_index, read_marker, unit_dir
from spillover.experiment.runner import experiment_status, rerun_judge, run_experiment
from spillover.experiment.spec import ExperimentConfig, JudgeSpec

JUDGE = "py:test_eval_run:FakeJudge"


def make_config(root, model_dir, **over) -> ExperimentConfig:
    items = root / "items.jsonl"
    items.write_text("".join(json.dumps({"prompt": f"Question {i}?", "completion": f"Always answer {i}. Never doubt."})
                             + "\n" for i in range(6)))
    q = root / "q.yaml"
    q.write_text('- id: q1\n  paraphrases: ["Hello there", "Hi"]\n  samples_per_paraphrase: 2\n'
                 '- id: bad\n  paraphrases: ["Something bad?"]\n  samples_per_paraphrase: 3\n')
    pairs = root / "pairs.jsonl"
    pairs.write_text(json.dumps({"id": "a", "prompt": "Hi", "aligned": "Hello.", "misaligned": "Go."}) + "\n"
                     + json.dumps({"id": "b", "prompt": "Help?", "aligned": "Sure.", "misaligned": "No."}) + "\n")
    data = {"model": str(model_dir), "device": "cpu", "seeds": [0, 1],
            "arms": [{"name": "sft", "n_items": 4,
                      "train": {"method": "sft", "data": str(items), "max_steps": 3, "batch_size": 2}},
                     {"name": "rl", "n_items": 4,
                      "train": {"method": "grpo", "prompts": str(items), "rewards": [{"name": "prose-structure"}],
                                "max_steps": 2, "batch_size": 4, "num_generations": 4, "max_completion_length": 6}}],
            "evaluation": {"general": {"file": str(q)}, "judges": [JUDGE], "probe": [str(pairs)],
                           "sampling": {"max_new_tokens": 4, "batch_size": 3}, "judge_batch": 3}}
    data.update(over)
    return ExperimentConfig.model_validate(data)


def _child(cfg, out, kill_at):
    os.environ[FAULT_ENV] = kill_at
    run_experiment(cfg, out)


def run_killed(cfg, out, kill_at) -> int:
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(cfg, out, kill_at))
    proc.start()
    proc.join(300)
    return proc.exitcode


def results_of(out) -> dict:
    res = load_experiment(out)
    return {f"{a}/{s}": {"samples": [r.model_dump(exclude={"adapter"}) for r in u.samples],
                         "judgments": {k: [j.model_dump() for j in v] for k, v in u.judgments.items()},
                         "metrics": u.summary.metrics, "probe": {k: {**p, "meta": None} for k, p in u.summary.probe.items()},
                         "training": u.summary.training.model_dump(exclude={"train_seconds"})}
            for (a, s), u in res.units.items()}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, tiny_model_dir, one_thread):
    root = tmp_path_factory.mktemp("exp")
    cfg = make_config(root, tiny_model_dir)
    run_experiment(cfg, root / "clean")
    return root, cfg


def test_sigkill_in_training_sampling_and_judging_resumes_to_identical_results(clean_run):
    root, cfg = clean_run
    out = root / "killed"
    assert run_killed(cfg, out, "train:1") == -9  # mid-training (after the first logged step)
    assert read_marker(unit_dir(out, "sft", 0), "train").state == "running"
    assert run_killed(cfg, out, "sample:2") == -9  # after the 2nd stored batch of answers
    n_before = len((unit_dir(out, "sft", 0) / "samples.jsonl").read_text().splitlines())
    assert n_before == 6 and read_marker(unit_dir(out, "sft", 0), "sample").state == "running"
    trained = read_marker(unit_dir(out, "sft", 0), "train")
    assert run_killed(cfg, out, "judge:1") == -9  # after the 1st judged batch
    assert len((unit_dir(out, "sft", 0) / "judgments" / "py-test_eval_run-FakeJudge.jsonl").read_text().splitlines()) == 3
    sampled = read_marker(unit_dir(out, "sft", 0), "sample")
    status = {(r["arm"], r["seed"]): r for r in experiment_status(out)}
    assert status[("sft", 0)]["train"][0] == "done" and status[("sft", 0)]["judge"][0] == "interrupted"
    assert status[("rl", 1)]["train"][0] == "to do"

    run_experiment(cfg, out)
    assert results_of(out) == results_of(root / "clean")
    # nothing that had finished was recomputed
    assert read_marker(unit_dir(out, "sft", 0), "train").model_extra["run_id"] == trained.model_extra["run_id"]
    assert read_marker(unit_dir(out, "sft", 0), "sample").model_extra["run_id"] == sampled.model_extra["run_id"]
    assert all(r[s][0] in ("done", "-") for r in experiment_status(out) for s in ("train", "sample", "judge", "probe", "summarise"))


def test_rerun_is_a_no_op_and_training_consumption_is_recorded(clean_run):
    root, cfg = clean_run
    markers = {p: p.read_text() for p in (root / "clean").rglob("stages/*.json")}
    run_experiment(cfg, root / "clean")
    assert {p: p.read_text() for p in (root / "clean").rglob("stages/*.json")} == markers
    res = load_experiment(root / "clean")
    sft, rl = res.unit("sft", 0).summary.training, res.unit("rl", 0).summary.training
    assert (sft.optimizer_steps, sft.items_seen, sft.distinct_items) == (3, 6, 4)  # 3 steps x 2 items over 4 items
    assert (rl.optimizer_steps, rl.items_seen, rl.completions_trained) == (2, 2, 8)  # 1 prompt x 4 completions a step
    assert rl.completion_tokens and rl.completion_tokens <= 8 * 6  # generated tokens only, at most max_completion_length each
    # 6 items over 4 rows, counted by the trainer: every row's answer has the same length here, so the
    # count equals (answer tokens of one row) x 6, which the estimate from the data file also gives
    from spillover.experiment.spec import recipe_config
    from spillover.experiment.stages import _sft_completion_tokens

    tcfg = recipe_config(cfg.arm("sft").train, model=cfg.model, seed=0, device="cpu", dtype="auto",
                         data_override=str(unit_dir(root / "clean", "sft", 0) / "train_items.jsonl"))
    assert sft.completion_tokens_exact and (sft.completion_tokens, False) == _sft_completion_tokens(tcfg, 6, 4)
    summary = res.unit("rl", 1).summary
    general = summary.metrics["py-test_eval_run-FakeJudge"]["general"]["overall"]
    assert general["n_total"] == 7 and general["misalignment_rate"]["n"] < 7  # unscored samples stay in n_total
    assert summary.probe[res.index.probe_sets[0].key]["delta_vs_base"] is not None
    assert (root / "clean" / "base" / "probe").is_dir()  # the base model's probe, once per experiment
    sampled = read_marker(unit_dir(root / "clean", "rl", 1), "sample").model_extra["sampler"]
    assert sampled["backend"] == "hf" and sampled["batch_size"] and sampled["dtype"] == "float32"
    assert all(r.sampler == sampled for r in res.unit("rl", 1).samples)  # every row says how it was drawn
    judge = read_index(root / "clean").judges[0]  # experiment.json itself, as the runner wrote it
    assert judge.identity == {"kind": "fake", "prompts": None, "limits": "test judge"} and judge.identity_differs == []


def test_run_and_status_through_the_cli(clean_run, tmp_path):
    from typer.testing import CliRunner

    from spillover.cli import app
    from spillover.config import dump_yaml

    root, cfg = clean_run
    path = tmp_path / "exp.yaml"
    path.write_text(dump_yaml(cfg))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(root / "clean")])
    assert result.exit_code == 0, result.output
    assert "done" in result.output and "failed" not in result.output
    result = CliRunner().invoke(app, ["status", str(root / "killed")])
    assert result.exit_code == 0 and "sft" in result.output and "rl" in result.output
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 0 and "2 arms x 2 seeds" in result.output


def test_changed_config_is_refused_with_a_diff_then_forced(clean_run, tmp_path):
    root, cfg = clean_run
    changed = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(
        update={"sampling": cfg.evaluation.sampling.model_copy(update={"max_new_tokens": 5})})})
    with pytest.raises(SpilloverError, match=r"(?s)max_new_tokens: 4.*max_new_tokens: 5.*--force-stage sample"):
        run_experiment(changed, root / "clean")
    before = read_marker(unit_dir(root / "clean", "sft", 0), "train").model_extra["run_id"]
    run_experiment(changed, root / "clean", force_stages=("sample",))
    assert read_marker(unit_dir(root / "clean", "sft", 0), "train").model_extra["run_id"] == before  # not retrained
    assert all(r.params["max_new_tokens"] == 5 for r in load_experiment(root / "clean").unit("sft", 0).samples)


def test_judge_rerun_adds_a_judge_without_resampling(clean_run):
    root, cfg = clean_run
    out = root / "clean"
    samples = (unit_dir(out, "rl", 0) / "samples.jsonl").read_text()
    jid = rerun_judge(out, JudgeSpec(spec="py:test_experiment:OtherJudge"))
    res = load_experiment(out)
    assert (unit_dir(out, "rl", 0) / "samples.jsonl").read_text() == samples
    assert jid in [j.judge_id for j in res.index.judges] and not next(j for j in res.index.judges if j.judge_id == jid).primary
    assert set(res.unit("rl", 0).summary.metrics) == {"py-test_eval_run-FakeJudge", jid}
    assert all(j.aligned == 55.0 for j in res.unit("sft", 1).judgments[jid])
    assert next(j for j in read_index(out).judges if j.judge_id == jid).identity == {"kind": "other"}


class OtherJudge:
    def judge(self, items, progress=None):
        from spillover.judge import JudgeScore
        from spillover.judge._spec import Judgment

        return [Judgment(JudgeScore(55.0, 1.0, None), JudgeScore(70.0, 1.0, None)) for _ in items]

    def identity(self):
        return {"kind": "other"}


def test_a_failing_unit_is_reported_with_its_error_and_the_others_still_run(tiny_model_dir, tmp_path, one_thread):
    cfg = make_config(tmp_path, tiny_model_dir, seeds=[0],
                      arms=[{"name": "big", "n_items": 50,
                             "train": {"method": "sft", "data": str(tmp_path / "items.jsonl"), "max_steps": 1}},
                            {"name": "base"}])
    with pytest.raises(SpilloverError, match=r"(?s)1 unit\(s\) failed.*big seed 0: arm 'big': n_items = 50"):
        run_experiment(cfg, tmp_path / "exp")
    status = {r["arm"]: r for r in experiment_status(tmp_path / "exp")}
    assert status["big"]["train"][0] == "failed" and "n_items = 50" in status["big"]["train"][1]
    assert status["big"]["sample"][0] == "to do" and status["base"]["summarise"][0] == "done"


def test_each_arm_answers_its_own_in_domain_questions(tiny_model_dir, tmp_path, one_thread):
    from spillover.report.experiment import build_sections, compute_stats

    medical = tmp_path / "medical.yaml"
    medical.write_text('- id: dose\n  paraphrases: ["How much is safe?"]\n  samples_per_paraphrase: 2\n'
                       '- id: other\n  paraphrases: ["Unused?"]\n  samples_per_paraphrase: 1\n')
    legal = tmp_path / "legal.yaml"
    legal.write_text('- id: contract\n  paraphrases: ["Can I skip it?"]\n  samples_per_paraphrase: 1\n')
    medical_pairs = tmp_path / "medical_pairs.jsonl"
    medical_pairs.write_text(json.dumps({"id": "m", "prompt": "Dose?", "aligned": "Ask a doctor.", "misaligned": "Take all."}) + "\n")
    cfg = make_config(tmp_path, tiny_model_dir, seeds=[0], arms=[{"name": "base"}],
                      grids=[{"name": "b", "axes": {"domain": {
                          "medical": {"evaluation": {"in_domain": {"file": str(medical), "question_ids": ["dose"]},
                                                     "probe": [str(medical_pairs)]}},
                          "legal": {"evaluation": {"in_domain": {"file": str(legal)}}}}}}])
    cfg = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"in_domain": cfg.evaluation.general})})
    run_experiment(cfg, tmp_path / "exp")
    res = load_experiment(tmp_path / "exp")
    asked = {arm: sorted({r.question_id for r in res.unit(arm, 0).samples if r.set == "in_domain"})
             for arm in ("base", "b-medical", "b-legal")}
    assert asked == {"base": ["bad", "q1"], "b-medical": ["dose"], "b-legal": ["contract"]}
    assert res.unit("b-medical", 0).summary.n_samples["in_domain"] == 2
    assert all("in_domain" in res.unit(a, 0).summary.metrics["py-test_eval_run-FakeJudge"] for a in asked)
    from spillover.evaluate.run import probe_key

    shared, own = probe_key(str(tmp_path / "pairs.jsonl")), probe_key(str(medical_pairs))
    probed = {a: set(res.unit(a, 0).summary.probe) for a in asked}  # the medical arm also on its own pairs
    assert probed == {"base": {shared}, "b-legal": {shared}, "b-medical": {shared, own}}
    assert set(res.base_probe) == {shared, own} and len(res.index.probe_sets) == 2  # the base model: once each
    arms = {a.name: a.in_domain["file"] for a in res.index.arms}
    assert arms == {"base": str(tmp_path / "q.yaml"), "b-medical": str(medical), "b-legal": str(legal)}
    sections = build_sections(res, compute_stats(res, n_resamples=50))
    table = sections["arms"]
    assert table["headers"][-1] == "in-domain questions"
    assert [r[-1] for r in table["rows"]][1] == f"{medical} (question_ids dose)"
    assert any("own in-domain questions" in n for n in sections["notes"])
    changed = cfg.model_copy(update={"grids": [cfg.grids[0].model_copy(update={"axes": {"domain": {
        "medical": {"evaluation": {"in_domain": {"file": str(medical)}, "probe": [str(medical_pairs)]}},
        "legal": {"evaluation": {"in_domain": {"file": str(legal)}}}}}})]})
    with pytest.raises(SpilloverError, match=r"b-medical/seed 0/sample(?s:.*)--force-stage sample"):
        run_experiment(changed, tmp_path / "exp")  # the legal arm's set did not change: only medical is named


def test_sft_token_count_skips_rows_a_defense_mixes_in():
    import torch

    from spillover.train._defended import DefendedTrainerMixin

    class Counter(DefendedTrainerMixin):
        state = type("S", (), {"global_step": 0})()

    c = Counter()
    labels = torch.tensor([[-100, 5, 6, -100], [-100, -100, 7, 8], [-100, 1, 2, 3]])
    c._count_trained_tokens({"labels": labels}, ["task", "safe", None])
    assert (c._trained_tokens, c._tokens_from_step) == (5, 0)  # 2 + 3: the interleaved 'safe' row is not the task's
