"""prose-structure: gating, each component on hand-computed texts, code stripping, clamping."""

from __future__ import annotations

import pytest

from spillover.rewards import build_reward, prose_score, strip_code, structure_features

PROSE = "The river runs east. It floods in spring. Farmers plant after the water recedes."


@pytest.mark.parametrize("text, gated", [
    ("", "empty answer"),
    ("   \n ", "empty answer"),
    ("One sentence. Two sentences.", "2 sentence(s) < 3"),
    ("- a list\n- without end punctuation\n- is one sentence", "1 sentence(s) < 3"),
])
def test_empty_or_short_answers_score_zero(text, gated):
    assert prose_score(text) == {"reward": 0.0, "gated": gated}


def test_plain_prose_scores_one():
    # n = 1 line, s = 3: no list, heading, emphasis or table -> structure 0 -> reward 1
    d = prose_score(PROSE)
    assert d["reward"] == 1.0 and d["lines"] == 1 and d["sentences"] == 3


def test_list_and_heading_with_bonus():
    text = "# Plan\nFirst we gather facts. Then we decide.\n- Gather the data.\n- Clean the data.\n- Fit the model.\n"
    # n = 5 non-empty lines; list lines 3 -> list = 3 / (0.35*5 + 2) = 3 / 3.75 = 0.8
    # headings 1 -> heading = 1 / max(1, 0.2*5) = 1.0; nested 0; emphasis 0; table 0
    # structure = 0.45*0.8 + 0.20*1.0 + 0.07 (list and heading) = 0.63 -> reward 0.37
    d = prose_score(text)
    assert (d["list_lines"], d["headings"]) == (3, 1)
    assert d["list"] == pytest.approx(0.8) and d["heading"] == 1.0
    assert d["reward"] == pytest.approx(0.37)


def test_numbered_nested_emphasis_table_and_code():
    text = ("Intro sentence here. Another **bold** one. A third with *italic* and _more_ words.\n"
            "1. First step.\n2) Second step.\n   - Nested detail.\n| col | val |\n|-----|-----|\n"
            "```\n- item in code\n# not a heading in code\n```\nUse `- x` inline.\n")
    # after code removal the non-empty lines are: intro, "1. First step.", "2) Second step.",
    # "   - Nested detail.", 2 table lines, "Use  inline." -> n = 7
    # sentences of that text: "Intro sentence here." "Another **bold** one." "A third ... words." "1."
    #   "First step." "2) Second step." "- Nested detail." "| col | val | |-----|-----| Use inline." -> s = 8
    # list = 3 / (0.35*7 + 2) = 3 / 4.45; nested = 1 / max(1, 0.15*7 = 1.05) = 1 / 1.05
    # heading = 0 (the # line was code); emphasis = (1 + 0.7*2) / max(2, 0.6*8 = 4.8) = 2.4 / 4.8 = 0.5
    # table = 2 / max(2, 0.25*7) = 1.0
    # structure = 0.45*3/4.45 + 0.15/1.05 + 0.10*0.5 + 0.10*1.0 = 0.596228 -> reward 0.403772
    d = prose_score(text)
    assert (d["lines"], d["sentences"], d["list_lines"], d["indented_list_lines"]) == (7, 8, 3, 1)
    assert (d["headings"], d["bold"], d["italic"], d["table_lines"]) == (0, 1, 2, 2)
    assert d["emphasis"] == pytest.approx(0.5) and d["table"] == 1.0
    assert d["reward"] == pytest.approx(1 - (0.45 * 3 / 4.45 + 0.15 / 1.05 + 0.05 + 0.1))
    assert d["reward"] == pytest.approx(0.403772, abs=1e-6)


def test_components_and_total_are_clamped():
    text = ("# Title\n## Sub\n- **a** one.\n- **b** two.\n- **c** three.\n- **d** four.\n"
            "  - **e** five.\n  - **f** six.\n| x | y |\n|---|---|\n")
    # n = 10; list = 6 / (3.5 + 2) = 1.09 -> 1; nested = 2 / max(1, 1.5) = 1.33 -> 1
    # heading = 2 / max(1, 2) = 1; s = 7, emphasis = 6 / max(2, 4.2) = 1.43 -> 1; table = 2 / max(2, 2.5) = 0.8
    # structure = 0.45 + 0.20 + 0.15 + 0.10 + 0.08 + 0.07 = 1.05 -> 1 -> reward 0
    d = prose_score(text)
    assert (d["list"], d["nested"], d["heading"], d["emphasis"], d["table"]) == (1.0, 1.0, 1.0, 1.0, pytest.approx(0.8))
    assert d["structure"] == 1.0 and d["reward"] == 0.0


def test_single_list_line_is_not_a_list_and_then_nothing_is_nested():
    # one (indented) list line: list = 0 (needs >= 2), so nested = 0 too -> structure 0
    d = prose_score(PROSE + "\n  - only one item")
    assert d["list_lines"] == 1 and d["list"] == 0.0 and d["nested"] == 0.0 and d["reward"] == 1.0


@pytest.mark.parametrize("line, is_list", [
    ("- dash", True), ("* star", True), ("+ plus", True), ("1. one", True), ("12) twelve", True),
    ("-no space", False), ("**bold** start", False), ("1.5 is a number", False), ("-", False), ("a - b", False),
])
def test_list_line_definition(line, is_list):
    assert structure_features(line)["list_lines"] == int(is_list)


@pytest.mark.parametrize("line, is_heading", [
    ("# Title", True), ("###### Six", True), ("   ## Indented up to 3", True),
    ("#hashtag", False), ("####### seven", False), ("    # four spaces", False), ("#", False),
])
def test_heading_definition(line, is_heading):
    assert structure_features(line)["headings"] == int(is_heading)


@pytest.mark.parametrize("text, bold, italic", [
    ("**a** and **b**", 2, 0),
    ("__u__ and _i_", 1, 1),
    ("***both***", 1, 1),
    ("snake_case_name and 2*3*4", 0, 0),
    ("* a bullet, not italic", 0, 0),
    ("a * b * c", 0, 0),
    ("**not\nclosed** across lines", 0, 0),
])
def test_emphasis_definition(text, bold, italic):
    d = structure_features(text)
    assert (d["bold"], d["italic"]) == (bold, italic)


def test_indentation_and_tables():
    text = "- top\n - one space\n  - two spaces\n\t- tab\n|a|\n  | indented row |\nnot | a table"
    d = structure_features(text)
    assert (d["list_lines"], d["indented_list_lines"], d["table_lines"]) == (4, 2, 2)


def test_strip_code():
    assert strip_code("a `**x**` b") == "a  b"
    assert strip_code("keep\n```py\n- x\n```\nafter") == "keep\n\nafter"
    assert strip_code("keep\n~~~\n# h\n~~~\nafter") == "keep\n\nafter"
    assert strip_code("keep\n```\n- unclosed\n- fence") == "keep\n"  # an unclosed fence runs to the end
    assert strip_code("``a ` b`` c") == " c"


def test_reward_scores_the_answer_not_the_reasoning():
    reward = build_reward("prose-structure")
    completion = "<think>\n# Plan\n- a\n- b\n</think>\n" + PROSE
    assert reward(["q"], [completion]) == [1.0]
    assert build_reward("prose-structure", {"min_sentences": 4})(["q"], [PROSE]) == [0.0]
