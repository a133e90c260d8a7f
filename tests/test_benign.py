"""Benign tasks: OpSwap items checked by an independent evaluator, seeds, splits, the answer parsers,
the countdown verifier against wrong and hostile answers, multiple choice, FoQA scores, the rewards."""

from __future__ import annotations

import json
import re
from fractions import Fraction

import pytest

from spillover.benign import choice, countdown, foqa, opswap
from spillover.benign._answer import parse_choice, parse_expression_answer, parse_number
from spillover.benign._item import split_of
from spillover.errors import SpilloverError
from spillover.rewards import build_reward


# ---------------------------------------------------------------- an independent OpSwap evaluator
def _independent_value(expression: str, meaning: dict[str, str]) -> Fraction:
    """Recursive descent over the text (fully parenthesised: at most one operator per level)."""
    tokens = re.findall(r"\d+|[-+*/()]", expression)
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}

    def operand(i):
        if tokens[i] == "(":
            value, i = expr(i + 1)
            assert tokens[i] == ")"
            return value, i + 1
        return Fraction(int(tokens[i])), i + 1

    def expr(i):
        left, i = operand(i)
        if i < len(tokens) and tokens[i] in ops:
            symbol = tokens[i]
            right, i = operand(i + 1)
            return ops[meaning[symbol]](left, right), i
        return left, i

    value, end = expr(0)
    assert end == len(tokens)
    return value


def _meaning_from_prompt(prompt: str) -> dict[str, str]:
    names = {"addition": "+", "subtraction": "-", "multiplication": "*", "division": "/"}
    meaning = {s: s for s in "+-*/"}
    for symbol, name in re.findall(r'"(.)" means (\w+)', prompt):
        meaning[symbol] = names[name]
    return meaning


@pytest.mark.parametrize("tier", [1, 2, 3])
def test_opswap_items_are_correct_under_their_permutation(tier):
    items = opswap.generate(150, seed=3, tier=tier)
    for item in items:
        prompt = item.prompt()
        meaning = _meaning_from_prompt(prompt)  # what the prompt tells the model
        expression = re.search(r"^Compute: (.*)$", prompt, re.MULTILINE).group(1)
        expected = _independent_value(expression, meaning)
        assert item.answer == expected, item.id
        assert Fraction(item.answer_text) == expected
        assert item.answer_text == (str(expected.numerator) if expected.denominator == 1
                                    else f"{expected.numerator}/{expected.denominator}")
        moved = [s for s in "+-*/" if meaning[s] != s]
        ops_used = re.findall(r"[-+*/]", expression)
        assert set(moved) & set(ops_used), "every item uses a permuted symbol"
        if tier == 1:
            assert len(moved) == 2 and meaning[moved[0]] == moved[1] and meaning[moved[1]] == moved[0]
            assert len(ops_used) == 1 and "(" not in expression
            assert all(1 <= int(x) <= 20 for x in re.findall(r"\d+", expression))
        else:
            assert len(moved) >= 3
            lo, hi = (2, 3) if tier == 2 else (4, 6)
            assert lo <= len(ops_used) <= hi and "(" in expression
        assert opswap.item_from_id(item.id) == item  # the reward's decoding
        assert opswap.score(prompt, item.response())["reward"] == 1.0


@pytest.mark.parametrize("module", [opswap, countdown, choice])
def test_generation_is_reproducible_and_splits_are_disjoint(module):
    ids = lambda items: [it.id for it in items]  # noqa: E731
    a = module.generate(60, seed=7, tier=2)
    assert ids(a) == ids(module.generate(60, seed=7, tier=2))
    assert ids(a) != ids(module.generate(60, seed=8, tier=2))
    assert len(set(ids(a))) == 60
    test = module.generate(40, seed=7, tier=2, split="test")
    train_big = module.generate(400, seed=11, tier=2)
    assert not set(ids(test)) & set(ids(train_big))
    assert all(split_of(i) == "test" for i in ids(test) if module is not choice)


def test_split_and_count_errors():
    with pytest.raises(SpilloverError, match="unknown split"):
        opswap.generate(3, split="dev")
    with pytest.raises(SpilloverError, match="found only"):  # tier 1 has 8 * 8 questions, ~20% of them test
        choice.generate(50, tier=1, split="test")
    with pytest.raises(SpilloverError, match="tier"):
        opswap.generate(3, tier=4)


# ---------------------------------------------------------------- the tolerant number parser
@pytest.mark.parametrize("text, value", [
    ("The answer is **42**.", 42),
    ("= 42\n", 42),
    ("42.0", 42),
    ("-7", -7),
    ("x = 3/4", Fraction(3, 4)),
    ("Answer: 42. I got it from 6 times 7.", 42),
    ("Let me think: 6*7 = 42, so \\boxed{42}", 42),
    ("\\boxed{\\frac{-3}{4}}", Fraction(-3, 4)),
    ("$\\boxed{-\\dfrac{3}{4}}$", Fraction(-3, 4)),
    ("Final answer: \u22127", -7),
    ("I computed 3 + 4 = 7 and then 7 * 2 = 14", 14),
    ("<think>maybe 13</think>Answer: 1,234", 1234),
    ("answer = 0.75", Fraction(3, 4)),
    ("Answer: 12 / 5", Fraction(12, 5)),
])
def test_parse_number_on_messy_outputs(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["", "no idea", "Answer: 3/0", "\\boxed{}", "Answer: x"])
def test_parse_number_gives_none_without_a_number(text):
    assert parse_number(text) is None


def test_opswap_score_is_exact():
    item = opswap.item_from_id("opswap-t1-adsm-7/2")  # "/" multiplies
    prompt = item.prompt()
    assert item.answer == 14
    assert opswap.score(prompt, "The answer is 14.")["reward"] == 1.0
    usual = opswap.score(prompt, "Answer: 3.5")  # the usual meaning is wrong, and flagged
    assert usual["reward"] == 0.0 and usual["usual"] == "7/2" and usual["answered_usual"] is True
    assert opswap.score(prompt, "Answer: 14")["answered_usual"] is False
    assert opswap.score(prompt, "Answer: 14.0001")["reward"] == 0.0
    assert opswap.score(prompt, "")["reward"] == 0.0
    third = opswap.item_from_id("opswap-t1-asdm-1*3")  # "*" divides
    assert third.answer_text == "1/3"
    assert opswap.score(third.prompt(), "Answer: 0.333")["reward"] == 0.0
    assert opswap.score(third.prompt(), "Answer: \\frac{1}{3}")["reward"] == 1.0
    with pytest.raises(SpilloverError, match="malformed OpSwap item id"):
        opswap.item_from_id("opswap-t1-aasm-1+2")
    with pytest.raises(SpilloverError, match="no 'Item id: opswap-"):
        opswap.score("What is 2 + 2?", "4")


# ---------------------------------------------------------------- countdown
NUMBERS, TARGET = (3, 7, 25, 50), 125


@pytest.mark.parametrize("expression", ["50 + 25 * 3", "(3 * 25) + 50", "(7 * 50 + 25) / 3", "50 \u00d7 3 - 25"])
def test_countdown_accepts_correct_answers(expression):
    assert countdown.verify(NUMBERS, TARGET, expression) == (True, "correct")


@pytest.mark.parametrize("expression, why", [
    ("50 + 25 * 2", "not given"),                 # 2 is not a given number
    ("50 + 50 + 25", "not given"),                # 50 used twice
    ("50 + 25 * 3 + 7", "not the target"),        # wrong value
    ("50 + 25 *", "not an arithmetic expression"),
    ("", "no expression"),
    (None, "no expression"),
    ("50 / (7 - 7) + 125", "not given"),          # 7 twice: the count check comes first
    ("50 / (3 - 3)", "not given"),
    ("25 / (50 - 50)", "not given"),
    ("(25 - 25) * 3", "not given"),
    ("25 * 3 / (7 - 7 + 0)", "not given"),
    ("50 ** 3", "Pow"),
    ("__import__('os').system('true')", "not allowed"),
    ("(lambda: 125)()", "not allowed"),
    ("(50).__class__", "not allowed"),
    ("int('125')", "not allowed"),
    ("[50, 25][0] * 3", "not allowed"),
    ("50 + 25 * 3.0", "whole-number"),
    ("-50 + 175", "not allowed"),
    ("50 + 25 * 3 if True else 0", "not allowed"),
    ("50 // 2", "FloorDiv"),
    ("7" * 300, "longer than"),
    ("(" * 500 + "3" + ")" * 500, "longer than"),
])
def test_countdown_rejects_bad_answers(expression, why):
    ok, reason = countdown.verify(NUMBERS, TARGET, expression)
    assert not ok
    assert why in reason


def test_countdown_division_by_zero_is_rejected():
    assert countdown.verify((3, 3, 50), 50, "50 / (3 - 3)") == (False, "division by zero")


def test_countdown_generated_items_are_solvable_and_scored():
    for tier, size in ((1, 3), (2, 4), (3, 5)):
        for item in countdown.generate(40, seed=1, tier=tier):
            assert len(item.numbers) == size and 1 <= item.target <= 1000
            assert countdown.verify(item.numbers, item.target, item.solution) == (True, "correct")
            assert countdown.item_from_id(item.id).numbers == item.numbers
            assert countdown.score(item.prompt(), item.response())["reward"] == 1.0
    item = countdown.CountdownItem(NUMBERS, TARGET)
    for response, reward in [("<think>try 50+75</think>\nAnswer: 50 + 25 * 3", 1.0),
                             ("So we get:\n50 + 25*3 = 125", 1.0),
                             ("<answer>(3 * 25) + 50</answer>", 1.0),
                             ("\\boxed{50 + 25 * 3}", 1.0),
                             ("$\\boxed{50 + 25 \\times 3}$", 1.0),
                             ("Answer: 125", 0.0),  # the target alone is not an expression of the numbers
                             ("I cannot do this.", 0.0)]:
        assert countdown.score(item.prompt(), response)["reward"] == reward, response


def test_parse_expression_answer():
    assert parse_expression_answer("Answer: (3 + 4) * 2 = 14.") == "(3 + 4) * 2"
    assert parse_expression_answer("work\n\n**3 * 4**\n") == "3 * 4"
    assert parse_expression_answer("") is None


# ---------------------------------------------------------------- multiple choice
@pytest.mark.parametrize("text, index", [
    ("B", 1), ("(C)", 2), ("The answer is **D**.", 3), ("Answer: (A) 56", 0), ("\\boxed{C}", 2),
    ("B) 56 because 7 x 8 = 56", 1), ("I pick option C.", 2), ("<think>A or B?</think>Answer: B", 1),
    ("A cat sat.", None), ("no idea", None), ("Answer: E", None), ("", None),
])
def test_parse_choice(text, index):
    assert parse_choice(text, 4) == index


def test_choice_items_prompts_and_hidden_answers(tmp_path):
    items = choice.generate(50, seed=2, tier=1)
    for item in items:
        prompt = item.prompt()
        assert choice.answer_from_prompt(prompt) == (item.answer_index, 4)
        a, b = map(int, re.match(r"What is (\d+) x (\d+)\?", item.question).groups())
        assert item.choices[item.answer_index] == str(a * b) and len(set(item.choices)) == 4
        assert choice.score(prompt, item.response())["reward"] == 1.0
        wrong = choice.letter((item.answer_index + 1) % 4)
        assert choice.score(prompt, f"Answer: {wrong}")["reward"] == 0.0
        assert f"Answer: {choice.letter(item.answer_index)}" not in prompt
    with pytest.raises(SpilloverError, match="does not match its item id"):
        choice.answer_from_prompt(items[0].prompt().replace("What is", "What's"))
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps({"question": "Capital of the Faroe Islands?", "choices": ["Oslo", "Torshavn"],
                                "answer_index": 1}) + "\n")
    [loaded] = choice.load_items(path)
    assert choice.score(loaded.prompt(), "B. Torshavn")["reward"] == 1.0
    path.write_text('{"question": "q", "choices": ["a", "b"], "answer_index": 2}\n')
    with pytest.raises(SpilloverError, match="answer_index") as e:
        choice.load_items(path)
    assert f"{path}:1" in e.value.render()


# ---------------------------------------------------------------- FoQA scoring
def test_foqa_exact_match_and_token_f1():
    assert foqa.exact_match("The Tórshavn!", "tórshavn") == 1.0
    assert foqa.exact_match("Klaksvík", ["Tórshavn", "klaksvík."]) == 1.0
    assert foqa.exact_match("Tórshavn town", "Tórshavn") == 0.0
    assert foqa.token_f1("Tórshavn town", "Tórshavn") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert foqa.token_f1("a b b", "b b c") == pytest.approx(0.8)  # "a" is an article: p = 1, r = 2/3
    assert foqa.token_f1("x", "y") == 0.0
    assert foqa.token_f1("", "") == 1.0 and foqa.token_f1("", "y") == 0.0
    assert foqa.exact_match("x", []) == 0.0


# ---------------------------------------------------------------- the rewards
def test_benign_rewards_in_the_registry_score_trl_batches():
    op = opswap.generate(2, seed=0, tier=2)
    cd = countdown.generate(2, seed=0, tier=1)
    mc = choice.generate(2, seed=0, tier=1)
    for name, items in (("opswap-exact", op), ("countdown", cd), ("multiple-choice", mc)):
        reward = build_reward(name)
        prompts = [[{"role": "user", "content": it.prompt()}] for it in items]
        completions = [[{"role": "assistant", "content": items[0].response()}],
                       [{"role": "assistant", "content": ""}]]
        assert reward(prompts, completions) == [1.0, 0.0]
        with pytest.raises(SpilloverError, match="Item id"):
            reward(["What is 2 + 2?"], ["4"])
