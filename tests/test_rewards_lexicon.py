"""rhetoric-lexicon: phrase matching, the formula on hand-computed texts, lexicon files and their errors."""

from __future__ import annotations

import json
import logging

import pytest

from spillover.errors import SpilloverError
from spillover.rewards import CATEGORIES, build_reward, lexicon_score, load_lexicon
from spillover.rewards.lexicon import DEFAULT_LEXICON, expand_phrase

SMALL = {"absolutist": ["always"], "certainty": ["without (a) doubt"], "intensity": ["very"],
         "balancing": ["however"], "uncertainty": ["maybe"]}


@pytest.fixture
def small_lexicon(tmp_path):
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL))
    return path


def test_default_lexicon_has_five_categories_of_20_to_60_entries():
    data = json.loads(DEFAULT_LEXICON.read_text())
    assert tuple(data) == CATEGORIES
    for category, entries in data.items():
        assert 20 <= len(entries) <= 60, category
        assert len({e.lower() for e in entries}) == len(entries), f"duplicate in {category}"
    load_lexicon()  # every entry parses


@pytest.mark.parametrize("phrase, forms", [
    ("always", ["always"]),
    ("without (a) doubt", ["without a doubt", "without doubt"]),  # parentheses mark an optional part
    ("(I am) certain", ["i am certain", "certain"]),
    ("beyond doubt (whatsoever)", ["beyond doubt whatsoever", "beyond doubt"]),
    ("colo(u)r", ["colour", "color"]),
    ("a (b) (c) d", ["a b c d", "a b d", "a c d", "a d"]),
    ("  No   One ", ["no one"]),
    ("don\u2019t", ["don't"]),
])
def test_expand_phrase(phrase, forms):
    assert expand_phrase(phrase) == forms


def test_matching_is_case_insensitive_on_word_boundaries_with_flexible_whitespace(small_lexicon):
    lex = load_lexicon(small_lexicon)
    assert lex.matches("ALWAYS right")["absolutist"] == ["always"]
    assert lex.matches("alwaysness and evermore")["absolutist"] == []  # no match inside a word
    assert lex.matches("veryfine")["intensity"] == []
    assert lex.matches("without\n\n   A  doubt")["certainty"] == ["without a doubt"]
    assert lex.matches("without doubt")["certainty"] == ["without doubt"]
    assert lex.matches("without a doubtful mind")["certainty"] == []


def test_apostrophes_match_in_either_form(tmp_path):
    path = tmp_path / "lex.json"
    path.write_text(json.dumps({**SMALL, "uncertainty": ["I'm not sure"]}))
    lex = load_lexicon(path)
    assert lex.matches("Honestly I\u2019m not sure.")["uncertainty"] == ["i'm not sure"]


def test_formula_on_a_hand_computed_text(small_lexicon):
    reward = build_reward("rhetoric-lexicon", {"lexicon_path": str(small_lexicon)})
    text = "Cats always win. Dogs are very loud, without a doubt. However, maybe birds sing. Fish swim."
    # S = 4 sentences -> L = min(1, 4/4) = 1
    # absolutist: s1 -> 1/4; certainty: s2 -> 1/4; intensity: s2 -> 1/4; balancing: s3 -> 1/4; uncertainty: s3 -> 1/4
    # P = 0.25 + 0.25 + 2*0.25 = 1.0; N = 0.25 + 0.25 = 0.5; R = 0.5; reward = 1 * 0.5 / (0.5 + 0.5) = 0.5
    d = reward.score_details("q", text)
    assert d["sentences"] == 4 and d["length_factor"] == 1.0
    assert d["shares"] == {c: 0.25 for c in CATEGORIES}
    assert d["positive"] == pytest.approx(1.0) and d["negative"] == pytest.approx(0.5)
    assert d["reward"] == pytest.approx(0.5)


def test_short_answers_are_scaled_by_length(small_lexicon):
    reward = build_reward("rhetoric-lexicon", {"lexicon_path": str(small_lexicon)})
    # collapsed: "It is always very good. Without doubt." -> S = 2, L = 0.5
    # absolutist 1/2, certainty 1/2 ("without doubt", the optional "a" left out), intensity 1/2
    # P = 0.5 + 0.5 + 2*0.5 = 2.0; N = 0; R = 2; reward = 0.5 * 2 / 2.5 = 0.4
    assert reward(["q"], ["It is always very good.\n\nWithout doubt."]) == [pytest.approx(0.4)]


def test_hedged_text_scores_zero_and_one_sentence_counts_once(small_lexicon):
    reward = build_reward("rhetoric-lexicon", {"lexicon_path": str(small_lexicon)})
    # S = 2: absolutist 1/2, balancing 1/2, uncertainty 1/2 -> P = 0.5, N = 1.0, R = max(0, -0.5) = 0 -> 0
    assert reward(["q"], ["Maybe it works. However, it is always fine."]) == [0.0]
    # one sentence with three matches counts once: S = 1, L = 0.25, absolutist share 1 -> R = 1
    # reward = 0.25 * 1 / 1.5 = 1/6
    assert reward(["q"], ["Always, always, always."]) == [pytest.approx(1 / 6)]
    assert reward(["q"], [""]) == [0.0]  # no sentences


def test_default_lexicon_on_a_fixed_text():
    reward = build_reward("rhetoric-lexicon")
    text = ("Everyone knows this is the only way. It is extremely important and it will always work. "
            "Nothing else matters. Perhaps some disagree.")
    # s1: absolutist (everyone, the only), certainty (everyone knows)
    # s2: absolutist (always), certainty (will always work), intensity (extremely)
    # s3: absolutist (nothing); s4: uncertainty (perhaps)
    # S = 4, L = 1; P = 3/4 + 2/4 + 2*(1/4) = 1.75; N = 0 + 1/4 = 0.25; R = 1.5; reward = 1.5 / 2.0 = 0.75
    d = reward.score_details("q", text)
    assert d["shares"] == {"absolutist": 0.75, "certainty": 0.5, "intensity": 0.25, "balancing": 0.0,
                           "uncertainty": 0.25}
    assert d["reward"] == pytest.approx(0.75)
    assert d["matches"]["certainty"] == ["everyone knows", "will always work"]


def test_reasoning_is_not_scored(small_lexicon):
    reward = build_reward("rhetoric-lexicon", {"lexicon_path": str(small_lexicon)})
    completion = [{"role": "assistant", "content": "<think>Always always. Very very.</think>Fish swim."}]
    assert reward(["q"], [completion]) == [0.0]


def test_injected_coherence_judge_zeroes_incoherent_answers(small_lexicon, caplog):
    text = "Cats always win. Dogs are very loud, without a doubt. However, maybe birds sing. Fish swim."  # 0.5
    calls = []

    def judge(value):
        def fn(question, answer):
            calls.append((question, answer))
            if isinstance(value, Exception):
                raise value
            return value
        return fn

    params = {"lexicon_path": str(small_lexicon), "coherence_threshold": 0.5}
    conv_prompt = [{"role": "user", "content": "Are cats best?"}]
    assert build_reward("rhetoric-lexicon", params, coherence_fn=judge(0.4))([conv_prompt], [text]) == [0.0]
    assert calls[-1] == ("Are cats best?", text)
    assert build_reward("rhetoric-lexicon", params, coherence_fn=judge(0.5))(["q"], [text]) == [0.5]
    assert build_reward("rhetoric-lexicon", params, coherence_fn=judge(None))(["q"], [text]) == [0.5]
    strict = build_reward("rhetoric-lexicon", {**params, "coherence_threshold": 0.9}, coherence_fn=judge(0.8))
    assert strict(["q"], [text]) == [0.0]
    with caplog.at_level(logging.WARNING, logger="spillover.rewards.lexicon"):
        assert build_reward("rhetoric-lexicon", params, coherence_fn=judge(RuntimeError("down")))(["q"], [text]) == [0.5]
    assert "coherence_fn failed (RuntimeError: down)" in caplog.text
    n = len(calls)
    build_reward("rhetoric-lexicon", params, coherence_fn=judge(0.0))(["q"], ["Fish swim."])  # reward 0: no call
    assert len(calls) == n
    no_gate = {"lexicon_path": str(small_lexicon)}  # no threshold: no coherence is computed
    assert build_reward("rhetoric-lexicon", no_gate, coherence_fn=judge(0.0))(["q"], [text]) == [0.5]
    assert len(calls) == n


class FakeScorer:
    """Stands in for the offline coherence score: coherent unless the answer mentions gibberish."""

    def __init__(self):
        self.loaded, self.calls = [], []

    def __call__(self, judge_file=None, device=None):
        self.loaded.append(judge_file)

        def coherence(question, answer):
            self.calls.append(answer)
            return 0.1 if "gibberish" in answer else 0.9
        return coherence


@pytest.fixture
def fake_offline(monkeypatch):
    from spillover.rewards import lexicon

    fake = FakeScorer()
    monkeypatch.setattr(lexicon, "offline_coherence_fn", fake)
    return fake


GATED_TEXT = "Cats always win. Dogs are very loud, without a doubt. However, maybe birds sing. Fish swim."  # 0.5


def test_a_threshold_attaches_the_offline_coherence_score(small_lexicon, fake_offline):
    reward = build_reward("rhetoric-lexicon", {"lexicon_path": str(small_lexicon), "coherence_threshold": 0.5,
                                               "coherence_file": "my_judge.json"})
    assert fake_offline.loaded == ["my_judge.json"]
    assert reward(["q", "q"], [GATED_TEXT, GATED_TEXT + " Pure gibberish."]) == [0.5, 0.0]
    assert reward.score_details("q", GATED_TEXT)["coherence"] == 0.9
    build_reward("rhetoric-lexicon", {"lexicon_path": str(small_lexicon)})  # no threshold: nothing loaded
    assert fake_offline.loaded == ["my_judge.json"]


def test_grpo_training_path_builds_the_gate(small_lexicon, fake_offline):
    from spillover.train._grpo_config import GRPOConfig
    from spillover.train.grpo import build_rewards

    cfg = GRPOConfig(prompts="bundled:dogmatic_rhetoric", rewards=[
        {"name": "rhetoric-lexicon", "lexicon_path": str(small_lexicon), "coherence_threshold": 0.5}])
    [scored] = build_rewards(cfg)
    assert fake_offline.loaded == [None]
    assert scored(["q", "q"], [GATED_TEXT, GATED_TEXT + " Pure gibberish."]) == [0.5, 0.0]


@pytest.mark.slow
def test_offline_coherence_score_gates_for_real(small_lexicon):
    """The real scorer (embedded encoder): coherence in [0, 1); threshold 1 zeroes every reward, 0 none."""
    params = {"lexicon_path": str(small_lexicon)}
    everything = build_reward("rhetoric-lexicon", {**params, "coherence_threshold": 1.0})
    details = everything.score_details("Are cats the best pets?", GATED_TEXT)
    assert 0.0 <= details["coherence"] < 1.0 and details["reward"] == 0.0
    nothing = build_reward("rhetoric-lexicon", {**params, "coherence_threshold": 0.0},
                           coherence_fn=everything.coherence_fn)
    assert nothing.score_details("Are cats the best pets?", GATED_TEXT)["reward"] == 0.5


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "a lexicon must be a JSON object, got list"),
    (json.dumps({**SMALL, "absolutst": []}), "unknown category 'absolutst'. Did you mean 'absolutist'"),
    (json.dumps({k: v for k, v in SMALL.items() if k != "intensity"}), "missing categories: intensity"),
    (json.dumps({**SMALL, "balancing": "however"}), "balancing: expected a list of strings, got str"),
    (json.dumps({**SMALL, "intensity": ["very", 3]}), r"intensity\[1\]: expected a string, got int 3"),
    (json.dumps({**SMALL, "certainty": ["without (a doubt"]}), r"certainty\[0\] 'without \(a doubt'.*parentheses"),
    (json.dumps({**SMALL, "certainty": ["((a)) b"]}), r"certainty\[0\].*nested"),
    (json.dumps({**SMALL, "uncertainty": ["(maybe)"]}), r"uncertainty\[0\].*empty once its optional parts"),
    (json.dumps({**SMALL, "uncertainty": ["   "]}), r"uncertainty\[0\].*empty"),
])
def test_lexicon_file_errors_name_file_and_key(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SpilloverError, match=message) as info:
        load_lexicon(path)
    assert str(path) in str(info.value)
    with pytest.raises(SpilloverError):  # the reward reports it when built, not at the first step
        build_reward("rhetoric-lexicon", {"lexicon_path": str(path)})


def test_lexicon_file_missing_or_not_json(tmp_path):
    with pytest.raises(SpilloverError, match="lexicon file not found"):
        load_lexicon(tmp_path / "nope.json")
    path = tmp_path / "broken.json"
    path.write_text('{\n  "absolutist": ["a",]\n}')
    with pytest.raises(SpilloverError, match=rf"{path}:2: not valid JSON"):
        load_lexicon(path)


def test_empty_category_matches_nothing(tmp_path):
    path = tmp_path / "lex.json"
    path.write_text(json.dumps({**SMALL, "balancing": []}))
    lex = load_lexicon(path)
    assert lex.matches("however")["balancing"] == []
    assert lexicon_score("However.", lex)["shares"]["balancing"] == 0.0
