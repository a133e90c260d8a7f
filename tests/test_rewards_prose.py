"""prose-structure (the RL paper's counting) and prose-structure-strict: gating, each component on
hand-computed texts, code stripping, clamping, and where the two countings differ (emphasis above all)."""

from __future__ import annotations

import pytest

from spillover.rewards import build_reward, prose_score, strip_code, structure_features
from spillover.rewards.prose import paper_strip_code, paper_structure_features

PROSE = "The river runs east. It floods in spring. Farmers plant after the water recedes."


@pytest.mark.parametrize("text, gated", [
    ("", "empty answer"),
    ("   \n ", "empty answer"),
    ("One sentence. Two sentences.", "2 sentence(s) < 3"),
    ("- a list\n- without end punctuation\n- is one sentence", "1 sentence(s) < 3"),
])
def test_empty_or_short_answers_score_zero(text, gated):
    assert prose_score(text) == {"reward": 0.0, "gated": gated}
    assert prose_score(text, counting="strict") == {"reward": 0.0, "gated": gated}


def test_plain_prose_scores_one():
    # n = 1 line, s = 3: no list, heading, emphasis or table -> structure 0 -> reward 1
    for counting in ("paper", "strict"):
        d = prose_score(PROSE, counting=counting)
        assert d["reward"] == 1.0 and d["lines"] == 1 and d["sentences"] == 3


def test_list_and_heading_with_bonus():
    text = "# Plan\nFirst we gather facts. Then we decide.\n- Gather the data.\n- Clean the data.\n- Fit the model.\n"
    # n = 5 non-empty lines; list lines 3 -> list = 3 / (0.35*5 + 2) = 3 / 3.75 = 0.8
    # headings 1 -> heading = 1 / max(1, 0.2*5) = 1.0; nested 0; emphasis 0; table 0
    # structure = 0.45*0.8 + 0.20*1.0 + 0.07 (list and heading) = 0.63 -> reward 0.37
    d = prose_score(text, counting="strict")
    assert prose_score(text) == d  # the two countings agree on plain markdown
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
    d = prose_score(text, counting="strict")
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
    d = prose_score(text, counting="strict")
    assert (d["list"], d["nested"], d["heading"], d["emphasis"], d["table"]) == (1.0, 1.0, 1.0, 1.0, pytest.approx(0.8))
    assert d["structure"] == 1.0 and d["reward"] == 0.0


def test_single_list_line_is_not_a_list_and_then_nothing_is_nested():
    # one (indented) list line: list = 0 (needs >= 2), so nested = 0 too -> structure 0
    d = prose_score(PROSE + "\n  - only one item", counting="strict")
    assert prose_score(PROSE + "\n  - only one item") == d
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
def test_strict_emphasis_definition(text, bold, italic):
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


@pytest.mark.parametrize("name", ["prose-structure", "prose-structure-strict"])
def test_reward_scores_the_answer_not_the_reasoning(name):
    reward = build_reward(name)
    completion = "<think>\n# Plan\n- a\n- b\n</think>\n" + PROSE
    assert reward(["q"], [completion]) == [1.0]
    assert build_reward(name, {"min_sentences": 4})(["q"], [PROSE]) == [0.0]


# -- the paper's counting, where it differs from the strict one ---------------------------------------

@pytest.mark.parametrize("text, paper, strict", [
    # (bold, italic) counts. The paper counts italics with bold markers still in the text: each doubled
    # marker pair holds an "empty" italic span, so **a** and __u__ add 2 italics each.
    ("**a** and **b**", (2, 4), (2, 0)),
    ("__u__ and _i_", (1, 3), (1, 1)),
    ("***both***", (1, 2), (1, 1)),
    # nested: the outer ** pairs add 2, the inner *...* 1 (strict: the inner one only)
    ("**bold with *nested italic* inside**", (1, 3), (1, 1)),
    ("_mixed **bold** in italic_", (1, 1), (1, 1)),  # the outer _..._ swallows the bold markers
    ("*a* **b** _c_ __d__", (2, 6), (2, 2)),
    ("snake_case_name and 2*3*4", (0, 2), (0, 0)),  # no word-boundary rule in the paper's counting
    ("**not\nclosed** across lines", (0, 2), (0, 0)),  # each line's ** holds an empty italic span
    ("* a bullet, not italic", (0, 0), (0, 0)),
    ("a * b * c", (0, 0), (0, 0)),
])
def test_emphasis_counting_paper_vs_strict(text, paper, strict):
    p, s = paper_structure_features(text), structure_features(text)
    assert ((p["bold"], p["italic"]), (s["bold"], s["italic"])) == (paper, strict)


def test_mixed_emphasis_reward_paper_vs_strict():
    text = "Plain words here. **Bold** claim follows. Then snake_case_name appears. Finally __under__ text."
    # s = 4, n = 1. paper: bold 2; italic 2 (**Bold**) + 1 (_case_) + 2 (__under__) = 5
    #   emphasis = (2 + 0.7*5) / max(2, 0.6*4) = 5.5 / 2.4 -> 1 -> structure 0.10 -> reward 0.9
    # strict: bold 2, italic 0: emphasis = 2 / 2.4 -> structure 0.08333 -> reward 0.916667
    paper, strict = prose_score(text), prose_score(text, counting="strict")
    assert (paper["bold"], paper["italic"], strict["bold"], strict["italic"]) == (2, 5, 2, 0)
    assert paper["reward"] == pytest.approx(0.9) and strict["reward"] == pytest.approx(1 - 0.1 * 2 / 2.4)
    assert build_reward("prose-structure")(["q"], [text]) == [pytest.approx(0.9)]
    assert build_reward("prose-structure-strict")(["q"], [text]) == [pytest.approx(1 - 0.1 * 2 / 2.4)]


def test_paper_lists_tables_and_sentences():
    text = "- top\n - one space\n  - two spaces\n\t- tab\n|a|\n  | indented row |\nnot | a table\n|---|---|"
    p, s = paper_structure_features(text), structure_features(text)
    # paper: a list line needs no indentation rule; "indented" = tab or 2+ spaces; a table line starts
    # and ends with |, and the separator also matches the separator rule: 3 + 1
    assert (p["list_lines"], p["indented_list_lines"], p["table_lines"]) == (4, 2, 4)
    assert (s["list_lines"], s["indented_list_lines"], s["table_lines"]) == (4, 2, 3)
    # whitespace in the paper's rules spans line breaks: a bare "-" followed by a line of text is a list line
    assert paper_structure_features("Intro.\n-\nword\n*\nmore")["list_lines"] == 2
    assert structure_features("Intro.\n-\nword\n*\nmore")["list_lines"] == 0
    # numbered items take 1-3 digits in the paper's rule
    assert paper_structure_features("1234. big\n12. small")["list_lines"] == 1


def test_paper_code_stripping_and_sentence_count():
    assert paper_strip_code("keep\n```py\n- x\n```\nafter") == "keep\n\nafter"
    assert paper_strip_code("keep\n~~~\n# h\n~~~\nafter") == "keep\n~~~\n# h\n~~~\nafter"  # ~~~ is not a fence
    # an unclosed fence is not a block; its first two backticks are an empty inline span
    assert paper_strip_code("keep\n```\n- unclosed") == "keep\n`\n- unclosed"
    assert paper_strip_code("a `span\nacross` b") == "a  b"  # inline code may cross a line break
    # sentences (the emphasis denominator) are counted on the whole answer, code included
    text = "One **x**. Two. Three.\n```\nA. B. C. D. E. F. G.\n```"
    # whole answer: "One **x**." "Two." "Three." "``` A." "B." ... "G." "```" = 11; code-free: 3
    assert paper_structure_features(text)["sentences"] == 11 and prose_score(text, counting="strict")["sentences"] == 3
