"""The ``group`` key of question files (the CI cluster unit): YAML and JSONL, default, validation."""

from __future__ import annotations

import json

import pytest

from spillover.errors import SpilloverError
from spillover.evaluate.questions import Question, load_questions


def test_yaml_group_default_and_explicit(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text("- id: a\n  group: theme\n  paraphrases: ['Hi?']\n  samples_per_paraphrase: 1\n"
                    "- id: b\n  paraphrases: ['Yo?']\n  samples_per_paraphrase: 1\n"
                    "- id: c\n  group: 7\n  paraphrases: ['Hey?']\n  samples_per_paraphrase: 1\n")
    a, b, c = load_questions(path)
    assert (a.group, b.group, c.group) == ("theme", "b", "7")
    assert "group" not in a.extra and a.to_dict()["group"] == "theme"
    assert Question("x", ("p",), 1).group == "x"


def test_jsonl_group(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"id": "a", "group": "g", "messages": [{"role": "user", "content": "Hi?"}]}) + "\n"
                    + json.dumps({"id": "b", "messages": [{"role": "user", "content": "Yo?"}]}) + "\n")
    a, b = load_questions(path)
    assert (a.group, b.group) == ("g", "b")


@pytest.mark.parametrize("value", ['""', "[x]", "true"])
def test_bad_group_names_file_line_and_key(tmp_path, value):
    path = tmp_path / "q.yaml"
    path.write_text(f"- id: a\n  paraphrases: ['Hi?']\n  group: {value}\n  samples_per_paraphrase: 1\n")
    with pytest.raises(SpilloverError, match="'group' must be non-empty text") as err:
        load_questions(path)
    assert f"{path}:3" in str(err.value)
