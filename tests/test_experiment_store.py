"""Append-only result logs survive a torn last line; the experiment result schema reads back what was written."""

import json

import pytest

from spillover.errors import SpilloverError
from spillover.evaluate.store import JsonlLog, JudgmentRecord
from spillover.experiment.results import StageMarker, UnitResults, judgments_log, marker_path, read_marker, samples_log


def _sample(i, arm="a"):
    return {"sample_id": f"general/q{i}/0/0", "arm": arm, "seed": 0, "set": "general", "question_id": f"q{i}",
            "group": f"q{i}", "paraphrase_index": 0, "sample_index": 0, "question": "Q?", "messages": [],
            "answer": f"answer {i}", "n_tokens": 2, "finish_reason": "stop"}


def test_torn_last_line_is_dropped_and_cut_before_appending(tmp_path):
    log = samples_log(tmp_path)
    log.append([_sample(0), _sample(1)])
    with open(log.path, "ab") as f:  # a crash in the middle of writing the next record
        f.write(json.dumps(_sample(2)).encode()[:25])
    assert [r.sample_id for r in log.read()] == ["general/q0/0/0", "general/q1/0/0"]
    log.append([_sample(3)])
    rows = log.read()
    assert [r.question_id for r in rows] == ["q0", "q1", "q3"]
    assert log.path.read_text().count("\n") == 3  # the torn bytes are gone, not glued to the next line


def test_damage_before_the_last_line_is_an_error_naming_the_line(tmp_path):
    log = JsonlLog(tmp_path / "j.jsonl", JudgmentRecord)
    log.path.write_text('{"sample_id": "x", "judge_id": "local", "aligned": 1, "coherent": 2}\nnot json\n'
                        '{"sample_id": "y", "judge_id": "local", "aligned": 1, "coherent": 2}\n')
    with pytest.raises(SpilloverError, match=r"j\.jsonl:2"):
        log.read()


def test_unknown_fields_are_kept_for_additive_schema_changes(tmp_path):
    log = samples_log(tmp_path)
    log.append([{**_sample(0), "new_field": 7}])
    assert log.read()[0].model_extra["new_field"] == 7


def test_joined_rows_mark_unjudged_samples(tmp_path):
    samples_log(tmp_path).append([_sample(0), _sample(1)])
    judgments_log(tmp_path, "local").append([JudgmentRecord(sample_id="general/q0/0/0", judge_id="local",
                                                             aligned=90, coherent=80)])
    marker_path(tmp_path, "sample").parent.mkdir(parents=True)
    marker_path(tmp_path, "sample").write_text(StageMarker(stage="sample", state="done", inputs_hash="h",
                                                           own_hash="o").model_dump_json())
    assert read_marker(tmp_path, "sample").state == "done"
    unit = UnitResults(arm="a", seed=0, path=tmp_path, stages={}, summary=None, samples=samples_log(tmp_path).read(),
                       judgments={"local": judgments_log(tmp_path, "local").read()})
    rows = unit.joined("local")
    assert rows[0]["aligned"] == 90 and rows[1]["aligned"] is None and "not judged" in rows[1]["unscored_reason"]


def test_judge_identity_comes_from_finished_judge_stages_and_disagreements_are_listed(tmp_path):
    from spillover._io import atomic_write_json
    from spillover.experiment.results import (
        ArmInfo,
        ExperimentIndex,
        JudgeInfo,
        judge_identities,
        load_experiment,
        unit_dir,
    )

    index = ExperimentIndex(name="x", spillover_version="0", created="now", config_sha256="0", model="m", seeds=[0, 1],
                            arms=[ArmInfo(name="a"), ArmInfo(name="b")],
                            judges=[JudgeInfo(judge_id="j", spec="local", primary=True), JudgeInfo(judge_id="k", spec="hf:m")])
    atomic_write_json(tmp_path / "experiment.json", index.model_dump(mode="json"))

    def mark(arm, seed, state, identity):
        m = StageMarker(stage="judge.j", state=state, inputs_hash="h", own_hash="o", identity=identity)
        atomic_write_json(marker_path(unit_dir(tmp_path, arm, seed), "judge.j"), m.model_dump(mode="json"))

    mark("a", 0, "done", {"encoder": "e1", "style_check": [{"set": "s", "misaligned_rate": 0.1}]})
    mark("a", 1, "running", {"encoder": "half-written"})  # not finished: not read
    mark("b", 0, "done", {"encoder": "e1", "style_check": [{"set": "s", "misaligned_rate": 0.1}]})
    mark("b", 1, "done", {"encoder": "e2"})  # e.g. the classifier file was retrained in between
    j, k = judge_identities(tmp_path, index)
    assert j.identity["encoder"] == "e1" and j.identity_differs == ["b/1"]
    assert k.identity is None  # never ran
    assert load_experiment(tmp_path).index.judges[0].identity["style_check"][0]["misaligned_rate"] == 0.1
