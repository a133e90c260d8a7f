"""`spillover defenses list/show/persona-vector`, and config errors for unknown defenses or parameters."""

import json

import pytest
from typer.testing import CliRunner

from spillover.cli._app import app
from spillover.config import load_config
from spillover.errors import SpilloverError
from spillover.train import SFTConfig

runner = CliRunner()


def test_list_and_show():
    listed = runner.invoke(app, ["defenses", "list"])
    assert listed.exit_code == 0
    for name in ("kl", "ldifs", "steer", "inoculate", "em-monitor"):
        assert f"\n{name} " in "\n" + listed.output
    shown = runner.invoke(app, ["defenses", "show", "kl"])
    assert shown.exit_code == 0
    assert "weight" in shown.output and "default 0.1" in shown.output and "selective KL" in shown.output
    assert "default 'base'" in shown.output
    assert "(required)" in runner.invoke(app, ["defenses", "show", "steer"]).output
    missing = runner.invoke(app, ["defenses", "show", "kll"])
    assert isinstance(missing.exception, SpilloverError) and "Did you mean 'kl'" in str(missing.exception)


def test_unknown_defense_or_parameter_names_the_config_line(tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("data: x.jsonl\ndefenses:\n  - name: kl\n    weight: 0.1\n  - name: ldifz\n")
    with pytest.raises(SpilloverError) as err:
        load_config(SFTConfig, cfg)
    text = str(err.value)
    assert f"{cfg}:5" in text and "unknown defense 'ldifz'" in text and "Did you mean 'ldifs'" in text
    assert "spillover defenses list" in text
    cfg.write_text("data: x.jsonl\ndefenses:\n  - name: kl\n    onlysafe: true\n")
    with pytest.raises(SpilloverError) as err:
        load_config(SFTConfig, cfg)
    text = str(err.value)
    assert f"{cfg}:3" in text and "onlysafe" in text and "spillover defenses show kl" in text


def test_persona_vector_command(tiny_model_dir, tmp_path):
    from spillover.defenses.steer import load_persona_vectors

    questions = tmp_path / "q.yaml"
    questions.write_text('- id: a\n  paraphrases: ["Hello?", "How is it going?"]\n  samples_per_paraphrase: 1\n')
    out = tmp_path / "pv.safetensors"
    result = runner.invoke(app, ["defenses", "persona-vector", "--model", str(tiny_model_dir), "--questions",
                                 str(questions), "--out", str(out), "--max-new-tokens", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    pv = load_persona_vectors(out)
    assert pv.vectors.shape[0] == 3 and pv.meta["n_questions"] == 2 and pv.meta["questions"] == str(questions)
    assert json.loads(json.dumps(pv.meta))["kept"]["aligned"] == 2


def test_persona_vector_judge_filter_keeps_persona_expressing_answers(tiny_model_dir, tmp_path, monkeypatch):
    """--judge-filter asks the activation judge about every answer; here a fake judge calls every answer
    misaligned, so the aligned persona keeps none and extraction stops with a clear error."""
    from spillover.judge import activation

    asked = []

    class FakeJudge:
        def prob_misaligned(self, questions, answers):
            asked.extend(answers)
            return [0.9] * len(answers)

    monkeypatch.setattr(activation.ActivationJudge, "load", classmethod(lambda cls, *a, **k: FakeJudge()))
    questions = tmp_path / "q.yaml"
    questions.write_text('- id: a\n  paraphrases: ["Hello?"]\n  samples_per_paraphrase: 1\n')
    result = runner.invoke(app, ["defenses", "persona-vector", "--model", str(tiny_model_dir), "--questions",
                                 str(questions), "--out", str(tmp_path / "pv.safetensors"), "--max-new-tokens", "4",
                                 "--device", "cpu", "--judge-filter"])
    assert isinstance(result.exception, SpilloverError) and "no aligned-persona answer" in str(result.exception)
    assert len(asked) == 2  # one misaligned-persona answer (kept) and one aligned-persona answer (dropped)
