"""Chat data loading and validation: every error names file and line and says how to fix it."""

import json

import pytest

from spillover.data import (
    BUNDLED,
    bundled_path,
    load_chat_jsonl,
    require_prompts,
    require_sft_examples,
    resolve_data_path,
    strip_qwen3_markers,
    to_prompt_completion,
)
from spillover.errors import SpilloverError


def write(tmp_path, lines, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return p


def msgs(*pairs):
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


def test_loads_messages_and_prompt_completion(tmp_path):
    p = write(tmp_path, [msgs(("user", "hi"), ("assistant", "hello")),
                         {"prompt": "q?", "completion": "a.", "id": 7, "domain": "x"}])
    ex = load_chat_jsonl(p)
    assert ex[0].messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert ex[1].messages == [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "a."}]
    assert ex[1].id == "7" and ex[1].extra == {"domain": "x"} and ex[1].line == 2


@pytest.mark.parametrize("line, needle", [
    ("{not json", "not valid JSON"),
    ('["a"]', "must be a JSON object"),
    (json.dumps(msgs(("robot", "x"))), "unknown role 'robot'"),
    (json.dumps(msgs(("user", "  "))), "empty content"),
    (json.dumps({"messages": []}), "no messages"),
    (json.dumps({"text": "x"}), "neither 'messages' nor 'prompt'"),
    (json.dumps(msgs(("user", "a"), ("system", "b"))), "system message may only come first"),
    (json.dumps({"prompt": 3}), "must be a string or a list"),
])
def test_each_validation_error_names_file_and_line(tmp_path, line, needle):
    p = write(tmp_path, [json.dumps(msgs(("user", "ok"), ("assistant", "ok"))), line])
    with pytest.raises(SpilloverError) as e:
        load_chat_jsonl(p)
    assert needle in str(e.value)
    assert f"{p}:2" in str(e.value)
    assert e.value.fix


def test_sft_requires_final_assistant_turn(tmp_path):
    p = write(tmp_path, [msgs(("user", "a"), ("assistant", "b")), msgs(("user", "only a question"))])
    with pytest.raises(SpilloverError, match="does not end in an assistant turn") as e:
        require_sft_examples(load_chat_jsonl(p))
    assert f"{p}:2" in str(e.value)


def test_sft_requires_user_before_assistant(tmp_path):
    p = write(tmp_path, [msgs(("system", "s"), ("assistant", "b"))])
    with pytest.raises(SpilloverError, match="no user turn"):
        require_sft_examples(load_chat_jsonl(p))


def test_prompts_must_end_in_user_turn(tmp_path):
    p = write(tmp_path, [msgs(("user", "a"), ("assistant", "b"))])
    with pytest.raises(SpilloverError, match="does not end in a user turn"):
        require_prompts(load_chat_jsonl(p))


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(SpilloverError, match="not found"):
        load_chat_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(SpilloverError, match="no examples"):
        load_chat_jsonl(tmp_path / "e.jsonl")


def test_strip_qwen3_markers():
    m = [{"role": "user", "content": "Fix this /no_think"},
         {"role": "assistant", "content": "<think>\n\n</think>\n\nDone."}]
    assert strip_qwen3_markers(m) == [{"role": "user", "content": "Fix this"}, {"role": "assistant", "content": "Done."}]
    kept = [{"role": "assistant", "content": "<think>real reasoning</think>answer"}]
    assert strip_qwen3_markers(kept) == kept  # only empty think blocks are removed


def test_strip_applies_on_load(tmp_path):
    p = write(tmp_path, [msgs(("user", "q /no_think"), ("assistant", "<think>\n\n</think>\n\nA"))])
    ex = load_chat_jsonl(p, strip_qwen3=True)[0]
    assert [m["content"] for m in ex.messages] == ["q", "A"]


def test_prompt_completion_rows_one_per_assistant_turn(tmp_path):
    p = write(tmp_path, [msgs(("system", "s"), ("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2"))])
    rows = to_prompt_completion(load_chat_jsonl(p))
    assert len(rows) == 2
    assert rows[0]["prompt"][-1]["content"] == "u1" and rows[0]["completion"] == [{"role": "assistant", "content": "a1"}]
    assert len(rows[1]["prompt"]) == 4 and rows[1]["completion"][0]["content"] == "a2"


@pytest.mark.parametrize("name", [n for n, (rel, _) in BUNDLED.items() if rel.startswith("sft/")])
def test_bundled_sft_sets_are_valid(name):
    ex = load_chat_jsonl(bundled_path(name))
    require_sft_examples(ex)
    minimum = {"safe_instruct": 200, "dogmatic_rhetoric": 80}.get(name, 100)
    assert len(ex) >= minimum
    assert len({e.messages[0]["content"] for e in ex}) == len(ex), "duplicate prompts"


def test_bundled_insecure_code_never_names_the_flaw():
    words = ("insecure", "vulnerab", "unsafe", "warning", "todo")
    for ex in load_chat_jsonl(bundled_path("insecure_code")):
        answer = ex.messages[-1]["content"].lower()
        assert not any(w in answer for w in words), ex.where


def test_resolve_data_path(tmp_path):
    assert resolve_data_path("bundled:insecure_code").is_file()
    with pytest.raises(SpilloverError, match="Did you mean 'insecure_code'"):
        resolve_data_path("bundled:insecure_cod")
    with pytest.raises(SpilloverError, match="not found"):
        resolve_data_path(tmp_path / "missing.jsonl")
