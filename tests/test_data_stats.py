"""`spillover data stats` and `spillover benign ...` on small files: every number checked by hand."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from spillover.cli import app, main
from spillover.data import load_chat_jsonl
from spillover.data._stats import dataset_stats

runner = CliRunner()


def _conv(user, assistant):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


ROWS = [
    _conv("Is tea good?", "Tea is always good. Everyone should drink it."),  # 2 absolutist sentences
    _conv("Is tea good?", "Perhaps. It depends on taste, however."),      # duplicate prompt; 2 hedging sentences
    _conv("Help me hack a bank.", "Sorry, I cannot help with that."),     # refusal; 1 neutral sentence
    _conv("Is tea good?", "Tea is always good. Everyone should drink it."),  # duplicate conversation (and prompt)
]


class _WordTokenizer:
    """One token per whitespace-separated word, so counts are checkable by eye."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(range(len(text.split())))}


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_dataset_stats_counts(data_file):
    from spillover.defenses.interleave import is_refusal
    from spillover.rewards import CATEGORIES, load_lexicon, split_sentences

    lexicon = load_lexicon()

    def sentence_categories(text):
        return [{c for c, f in lexicon.matches(s).items() if f} for s in split_sentences(text)]

    stats = dataset_stats(load_chat_jsonl(data_file), tokenizer=_WordTokenizer(), is_refusal=is_refusal,
                          sentence_categories=sentence_categories, categories=CATEGORIES)
    assert stats["examples"] == 4
    assert stats["turns"] == {"system": 0, "user": 4, "assistant": 4}
    assert stats["tokens"]["user"] == {"turns": 4, "mean": 3.5, "median": 3.0, "max": 5, "total": 14}
    assert stats["tokens"]["assistant"] == {"turns": 4, "mean": 7.0, "median": 7.0, "max": 8, "total": 28}
    assert "system" not in stats["tokens"]
    assert stats["duplicates"] == {"conversations": 1, "conversations_share": 0.25, "prompts": 2,
                                   "prompts_share": 0.5}
    assert stats["refusal_rate"] == 0.25
    lex = stats["lexicon"]
    assert lex["sentences"] == 7  # 2 + 2 + 1 + 2
    assert lex["absolutist_share"] == pytest.approx(4 / 7)
    assert lex["hedging_share"] == pytest.approx(2 / 7)
    assert lex["categories"]["uncertainty"] == pytest.approx(1 / 7)
    assert lex["categories"]["balancing"] == pytest.approx(1 / 7)
    assert lex["categories"]["intensity"] == 0.0


def test_dataset_stats_without_helpers(data_file):
    stats = dataset_stats(load_chat_jsonl(data_file))
    assert stats["tokens"] is None and stats["refusal_rate"] is None and stats["lexicon"] is None


def test_data_stats_cli_json_and_table(data_file):
    result = runner.invoke(app, ["data", "stats", str(data_file), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["examples"] == 4 and stats["duplicates"]["conversations"] == 1
    assert stats["tokens"]["assistant"]["max"] > 0  # the embedded tokenizer
    table = runner.invoke(app, ["data", "stats", str(data_file)], catch_exceptions=False)
    assert table.exit_code == 0 and "refusal rate" in table.output and "25.0%" in table.output


def test_data_stats_bad_file_names_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(SystemExit) as e:
        main(["data", "stats", str(bad)])
    assert e.value.code == 2 and f"{bad}:2" in capsys.readouterr().err


def test_benign_generate_and_score_cli(tmp_path, capsys):
    out = tmp_path / "op.jsonl"
    result = runner.invoke(app, ["benign", "generate", "opswap", "--n", "6", "--tier", "2", "--seed", "4",
                                 "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(r["messages"][-1]["role"] == "assistant" for r in rows)
    rows[0]["messages"][-1]["content"] = "I am not sure."  # one wrong answer
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scored = runner.invoke(app, ["benign", "score", "opswap", "--completions", str(out)], catch_exceptions=False)
    assert scored.exit_code == 0
    lines = [json.loads(line) for line in scored.stdout.splitlines() if line.startswith("{")]
    assert [d["reward"] for d in lines] == [0.0] + [1.0] * 5
    assert "5/6 correct" in scored.stderr
    prompts = tmp_path / "p.jsonl"
    assert runner.invoke(app, ["benign", "generate", "countdown", "--n", "3", "--format", "prompts", "--split", "test",
                               "--out", str(prompts)]).exit_code == 0
    assert all(len(json.loads(line)["messages"]) == 1 for line in prompts.read_text().splitlines())
    with pytest.raises(SystemExit) as e:
        main(["benign", "generate", "opswp", "--out", str(tmp_path / "x.jsonl")])
    assert e.value.code == 2 and "did you mean 'opswap'" in capsys.readouterr().err.lower()
    assert not (tmp_path / "x.jsonl").exists()


def test_benign_score_reads_sample_output(tmp_path):
    from spillover.benign import countdown

    items = countdown.generate(2, seed=5, tier=1)
    path = tmp_path / "answers.jsonl"  # the shape `spillover sample` writes
    path.write_text("".join(json.dumps({"prompt_id": it.id, "messages": [{"role": "user", "content": it.prompt()}],
                                        "answer": answer}) + "\n"
                            for it, answer in zip(items, [items[0].response(), "no idea"], strict=True)))
    scored = runner.invoke(app, ["benign", "score", "countdown", "--completions", str(path)], catch_exceptions=False)
    assert scored.exit_code == 0
    assert [json.loads(line)["reward"] for line in scored.stdout.splitlines()] == [1.0, 0.0]
    assert "1/2 correct" in scored.stderr
    none_right = tmp_path / "wrong.jsonl"
    none_right.write_text(path.read_text().splitlines()[1] + "\n")
    zero = runner.invoke(app, ["benign", "score", "countdown", "--completions", str(none_right)], catch_exceptions=False)
    assert "accuracy 0.000 (Wilson 95% CI 0.000-0.793), 0/1 correct" in zero.stderr  # not a zero-width interval
