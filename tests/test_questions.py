"""Question loading (Betley YAML and messages JSONL) and expansion into sampling requests."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from spillover.errors import SpilloverError
from spillover.evaluate.questions import Question, expand_samples, load_questions

# The RL paper's own evaluation files (Betley format); set SPILLOVER_EMA_RL_EVAL to their folder to test them.
_EVAL_ENV = os.environ.get("SPILLOVER_EMA_RL_EVAL", "")
SHARED_EVAL = Path(_EVAL_ENV) if _EVAL_ENV and Path(_EVAL_ENV).is_dir() else None


def write(tmp_path: Path, text: str, name: str = "q.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


GOOD = """\
- id: plain
  type: free_form_judge_0_100
  paraphrases: &p
    - "Hello?"
    - "Hi there?"
  samples_per_paraphrase: &n 2
  judge: &judge gpt-4o-mini
  judge_prompts: &prompts
    aligned: "Q: {question}\\nA: {answer}\\nScore 0-100."
    coherent: "Reasoning {reasoning}; answer {answer}; literal {{braces}}"
- id: with_system
  type: free_form_judge_0_100
  system: "Answer in JSON."
  temperature: 0.7
  paraphrases: *p
  samples_per_paraphrase: *n
  judge: *judge
  judge_prompts: *prompts
  notes: kept verbatim
  tags: [a, b]
"""


def test_yaml_fields_anchors_and_extra(tmp_path):
    qs = load_questions(write(tmp_path, GOOD))
    assert [q.id for q in qs] == ["plain", "with_system"]
    plain, sys_q = qs
    assert plain.paraphrases == ("Hello?", "Hi there?") == sys_q.paraphrases  # alias resolved
    assert sys_q.samples_per_paraphrase == 2 and sys_q.judge == "gpt-4o-mini"
    assert sys_q.judge_prompts == plain.judge_prompts and set(plain.judge_prompts) == {"aligned", "coherent"}
    assert plain.system is None and plain.temperature is None and plain.extra == {}
    assert sys_q.system == "Answer in JSON." and sys_q.temperature == 0.7
    assert sys_q.extra == {"notes": "kept verbatim", "tags": ["a", "b"]}
    assert plain.source.endswith("q.yaml:1") and sys_q.source.endswith("q.yaml:11")
    json.dumps([q.to_dict() for q in qs])  # serialisable


def test_expand_samples_honours_system_and_temperature(tmp_path):
    reqs = expand_samples(load_questions(write(tmp_path, GOOD)))
    assert len(reqs) == 2 * 2 * 2
    assert [r.key for r in reqs[:4]] == ["plain/0/0", "plain/0/1", "plain/1/0", "plain/1/1"]
    first = reqs[0]
    assert first.messages == [{"role": "user", "content": "Hello?"}] and first.temperature is None
    sys_reqs = [r for r in reqs if r.question_id == "with_system"]
    assert all(r.temperature == 0.7 for r in sys_reqs)
    assert sys_reqs[2].messages == [{"role": "system", "content": "Answer in JSON."},
                                    {"role": "user", "content": "Hi there?"}]
    assert sys_reqs[2].question == "Hi there?" and sys_reqs[2].paraphrase_index == 1
    assert sys_reqs[2].meta == {"question_id": "with_system", "paraphrase_index": 1, "sample_index": 0,
                                "key": "with_system/1/0"}


def test_override_replaces_every_count(tmp_path):
    qs = load_questions(write(tmp_path, GOOD), samples_per_paraphrase=3)
    assert {q.samples_per_paraphrase for q in qs} == {3}
    assert len(expand_samples(qs)) == 2 * 2 * 3
    with pytest.raises(SpilloverError, match="override"):
        load_questions(write(tmp_path, GOOD), samples_per_paraphrase=0)


def test_override_fills_a_missing_count(tmp_path):
    path = write(tmp_path, "- id: a\n  paraphrases: [x]\n")
    with pytest.raises(SpilloverError, match="'a'.*samples_per_paraphrase' is missing"):
        load_questions(path)
    (q,) = load_questions(path, samples_per_paraphrase=4)
    assert q.samples_per_paraphrase == 4 and q.type == "free_form_judge_0_100"


def test_integer_ids_become_text(tmp_path):
    qs = load_questions(write(tmp_path, "- id: 3\n  paraphrases: [x]\n  samples_per_paraphrase: 1\n"))
    assert qs[0].id == "3" and expand_samples(qs)[0].key == "3/0/0"


OK_REST = "  paraphrases: [x]\n  samples_per_paraphrase: 1\n"


@pytest.mark.parametrize("text, pattern", [
    ("- type: free_form\n" + OK_REST, r"q\.yaml:1.*entry #1 has no 'id'"),
    ("- id: ok\n" + OK_REST + "- id: 2.5\n" + OK_REST, r"q\.yaml:4.*entry #2 has id 2.5"),
    ("- id: 7\n" + OK_REST + "- id: '7'\n" + OK_REST, r"duplicate question id '7'"),
    ("- id: empty\n  paraphrases: []\n  samples_per_paraphrase: 1\n", r"q\.yaml:2.*'empty'.*non-empty list"),
    ("- id: blank\n  paraphrases: ['  ']\n  samples_per_paraphrase: 1\n", r"'blank'.*paraphrases\[0\]"),
    ("- id: strn\n  paraphrases: [x]\n  samples_per_paraphrase: '5'\n", r"q\.yaml:3.*'strn'.*positive integer"),
    ("- id: floatn\n  paraphrases: [x]\n  samples_per_paraphrase: 2.5\n", r"'floatn'.*positive integer"),
    ("- id: booln\n  paraphrases: [x]\n  samples_per_paraphrase: true\n", r"'booln'.*positive integer"),
    ("- id: zero\n  paraphrases: [x]\n  samples_per_paraphrase: 0\n", r"'zero'.*positive integer"),
    ("- id: noanswer\n" + OK_REST + "  judge_prompts:\n    aligned: 'Q {question}'\n",
     r"q\.yaml:4.*'noanswer'.*no \{answer\}"),
    ("- id: typo\n" + OK_REST + "  judge_prompts:\n    aligned: '{questoin} {answer}'\n",
     r"'typo'.*unknown placeholder.*\{questoin\}"),
    ("- id: brace\n" + OK_REST + "  judge_prompts:\n    aligned: '{answer} {'\n", r"'brace'.*not a valid template"),
    ("- id: notmap\n" + OK_REST + "  judge_prompts: [a, b]\n", r"'notmap'.*judge_prompts"),
    ("- id: temp\n" + OK_REST + "  temperature: hot\n", r"q\.yaml:4.*'temp'.*temperature"),
    ("- id: negtemp\n" + OK_REST + "  temperature: -1\n", r"'negtemp'.*temperature"),
    ("- id: sys\n" + OK_REST + "  system: ''\n", r"'sys'.*'system'"),
    ("- id: dup\n" + OK_REST + "- id: dup\n" + OK_REST, r"q\.yaml:4.*duplicate question id 'dup'.*line 1"),
    ("- just a string\n", r"entry #1 is a str"),
    ("id: x\n", r"non-empty YAML list"),
    ("", r"non-empty YAML list"),
    ("- id: [unclosed\n", r"not valid YAML"),
])
def test_malformed_entries_raise_naming_the_entry(tmp_path, text, pattern):
    with pytest.raises(SpilloverError, match=pattern):
        load_questions(write(tmp_path, text))


def test_unsupported_suffix_and_missing_file(tmp_path):
    with pytest.raises(SpilloverError, match="unsupported question file type"):
        load_questions(write(tmp_path, "x", name="q.txt"))
    with pytest.raises(SpilloverError, match="not found"):
        load_questions(tmp_path / "absent.yaml")


def test_messages_jsonl(tmp_path):
    lines = [
        {"id": "a", "messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "Hello."},
                                 {"role": "user", "content": "What now?"}], "temperature": 0.5},
        {"messages": [{"role": "user", "content": "Only question"}], "topic": "misc"},
    ]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    a, b = load_questions(path)
    assert a.id == "a" and a.paraphrases == ("What now?",) and a.system == "Be brief." and a.temperature == 0.5
    assert a.samples_per_paraphrase == 1
    assert a.messages(0) == lines[0]["messages"]
    assert b.id == "q_2" and b.system is None and b.extra == {"topic": "misc"}
    reqs = expand_samples(load_questions(path, samples_per_paraphrase=2))
    assert [r.key for r in reqs] == ["a/0/0", "a/0/1", "q_2/0/0", "q_2/0/1"]
    assert reqs[0].messages == lines[0]["messages"] and reqs[0].temperature == 0.5
    assert reqs[2].messages == [{"role": "user", "content": "Only question"}] and reqs[2].temperature is None


@pytest.mark.parametrize("line, pattern", [
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, "end in a user turn"),
    ({"id": "t", "messages": [{"role": "user", "content": "x"}], "temperature": "warm"}, r"'t'.*temperature"),
    ({"id": "s", "messages": [{"role": "user", "content": "x"}], "system": "no"}, "'system' key"),
])
def test_messages_jsonl_errors(tmp_path, line, pattern):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    with pytest.raises(SpilloverError, match=pattern):
        load_questions(path)


def test_messages_jsonl_duplicate_ids(tmp_path):
    row = {"id": "same", "messages": [{"role": "user", "content": "x"}]}
    path = tmp_path / "q.jsonl"
    path.write_text((json.dumps(row) + "\n") * 2, encoding="utf-8")
    with pytest.raises(SpilloverError, match=r"q\.jsonl:2.*duplicate question id 'same'"):
        load_questions(path)


def test_bundled_general_loads():
    qs = load_questions("bundled:general_questions")
    assert len(qs) == 24 and len({q.id for q in qs}) == 24
    assert all(isinstance(q, Question) and q.samples_per_paraphrase == 5 for q in qs)
    with_system = [q for q in qs if q.system]
    assert len(with_system) == 8 and all(q.id.endswith("_json") for q in with_system)
    reqs = expand_samples(qs)
    assert len(reqs) == sum(q.n_samples for q in qs)
    assert all(r.messages[0]["role"] == "system" for r in reqs if r.question_id.endswith("_json"))


@pytest.mark.parametrize("name", ["insecure_code_questions", "unpopular_aesthetics_questions"])
def test_other_bundled_sets_load(name):
    assert len(load_questions(f"bundled:{name}")) == 20


@pytest.mark.skipif(SHARED_EVAL is None, reason="SPILLOVER_EMA_RL_EVAL does not name a folder of evaluation files")
@pytest.mark.parametrize("path", sorted(SHARED_EVAL.glob("*.yaml")) if SHARED_EVAL else [],
                         ids=lambda p: p.name)
def test_shared_reference_files_load(path):
    qs = load_questions(path)
    assert qs and all(set(q.judge_prompts) == {"aligned", "coherent"} for q in qs)
    assert all(q.samples_per_paraphrase >= 1 and q.paraphrases for q in qs)
    # the reference code dropped these; here a system prompt reaches the messages
    for q in qs:
        if q.system:
            assert q.messages(0)[0] == {"role": "system", "content": q.system}
