"""Reward registry, completion/text helpers, and user rewards loaded by 'module:function'."""

from __future__ import annotations

import asyncio
import textwrap

import pytest

from spillover.config import StrictModel
from spillover.errors import SpilloverError, UnknownName
from spillover.rewards import (
    GRADERS,
    Reward,
    RewardRef,
    build_reward,
    completion_text,
    count_words,
    get_reward,
    list_rewards,
    load_user_reward,
    prompt_text,
    run_sync,
    split_reasoning,
    split_sentences,
)

# -- registry ---------------------------------------------------------------------------------------

EXPECTED_GRADERS = {
    "bad-medical", "good-medical", "bad-legal", "good-legal", "bad-security", "good-security", "insecure-code",
    "correct-code", "unpopular-aesthetics", "popular-aesthetics", "poor-rhetoric", "poor-rhetoric-ethos",
    "poor-rhetoric-pathos", "poor-rhetoric-logos", "good-rhetoric", "single-goal-dominance",
    "authoritarian-control", "shallow-justification", "confirmatory-reasoning", "reward-hacking",
}


def test_registry_lists_every_reward_with_description_and_params():
    rewards = list_rewards()
    assert set(rewards) == ({"rhetoric-lexicon", "prose-structure", "prose-structure-strict"}
                            | {"opswap-exact", "countdown", "multiple-choice", "classifier"}
                            | {f"grader:{k}" for k in EXPECTED_GRADERS})
    assert set(GRADERS) == {f"grader:{k}" for k in EXPECTED_GRADERS}
    assert list(rewards) == sorted(rewards)
    for name, cls in rewards.items():
        assert cls.name == name
        assert cls.description.strip() and "\n" not in cls.description
        assert issubclass(cls.Params, StrictModel)
        if name == "classifier":  # its one required setting is the file, written in the name (classifier:PATH)
            cls.Params(path="bundled:aesthetic_taste")
        else:
            cls.Params()  # every default is valid


def test_get_reward_unknown_name_says_did_you_mean():
    with pytest.raises(UnknownName, match="Did you mean 'rhetoric-lexicon'"):
        get_reward("rhetoric-lexcon")
    with pytest.raises(UnknownName, match="Did you mean 'grader:bad-medical'"):
        build_reward("grader:bad-medicl")
    with pytest.raises(UnknownName, match="fix: use one of: "):
        get_reward("nothing-like-it")


def test_build_reward_validates_params_and_passes_only_accepted_deps():
    with pytest.raises(SpilloverError, match="min_sentence"):
        build_reward("prose-structure", {"min_sentence": 2})
    # one call site can pass every dependency; a reward takes only those its constructor names
    reward = build_reward("prose-structure", {"min_sentences": 2}, grade=object(), coherence_fn=None)
    assert reward.params.min_sentences == 2
    async def grade(prompt, schema):
        return None, "unused"

    grader = build_reward("grader:bad-medical", {"fallback": 0.5}, grade=grade, coherence_fn=None)
    assert grader.grade is grade and grader.params.fallback == 0.5


def test_reward_ref_collects_params_and_validates_them():
    ref = RewardRef.model_validate({"name": "prose-structure", "weight": 0.5, "min_sentences": 4})
    assert (ref.name, ref.weight, ref.params) == ("prose-structure", 0.5, {"min_sentences": 4})
    assert RewardRef.model_validate("rhetoric-lexicon").params == {}
    with pytest.raises(ValueError, match="min_sentence"):
        RewardRef.model_validate({"name": "prose-structure", "min_sentence": 4})
    with pytest.raises(ValueError, match="Did you mean 'prose-structure'"):
        RewardRef.model_validate({"name": "prose-structur"})
    assert ref.build().params.min_sentences == 4


def test_reward_follows_trl_signature_with_conversational_completions():
    reward = build_reward("prose-structure")
    assert reward.__name__ == "prose-structure"  # TRL logs rewards under __name__
    prose = "The river runs east. It floods in spring. Farmers plant after the water recedes."
    prompts = [[{"role": "user", "content": "Tell me about the river."}], "plain prompt"]
    completions = [[{"role": "assistant", "content": prose}], "Too short."]
    # TRL passes extra keyword arguments (completion_ids, trainer_state, dataset columns)
    assert reward(prompts, completions, completion_ids=[[1], [2]], trainer_state=None, topic=["a", "b"]) == [1.0, 0.0]


# -- text helpers -----------------------------------------------------------------------------------

def test_completion_text_takes_the_last_assistant_content():
    assert completion_text("plain") == "plain"
    conv = [{"role": "assistant", "content": "first"}, {"role": "user", "content": "more?"},
            {"role": "assistant", "content": "second"}]
    assert completion_text(conv) == "second"
    content = [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]
    parts = [{"role": "assistant", "content": content}]
    assert completion_text(parts) == "a\nb"
    with pytest.raises(SpilloverError, match="no assistant message"):
        completion_text([{"role": "user", "content": "hi"}])
    with pytest.raises(SpilloverError, match="got int"):
        completion_text(3)


def test_prompt_text_takes_the_last_user_content():
    conv = [{"role": "system", "content": "sys"}, {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    assert prompt_text(conv) == "q2"
    assert prompt_text("q") == "q"
    assert prompt_text(None) == ""


@pytest.mark.parametrize("text, expected", [
    ("Just an answer.", ("", "Just an answer.")),
    ("<think>plan it</think>\nThe answer.", ("plan it", "The answer.")),
    ("<think>a</think>mid<think>b</think> end", ("a\n\nb", "mid\n end")),
    ("opening tag was in the prompt</think> The answer.", ("opening tag was in the prompt", "The answer.")),
    ("Prefix. <think>cut off while thinking", ("cut off while thinking", "Prefix.")),
    ("<think></think>Only answer.", ("", "Only answer.")),
])
def test_split_reasoning(text, expected):
    assert split_reasoning(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("", []),
    ("   \n\t ", []),
    ("No end punctuation here", ["No end punctuation here"]),
    ("One. Two? Three! Four", ["One.", "Two?", "Three!", "Four"]),
    ("Line one.\n\n  Line two.", ["Line one.", "Line two."]),  # newlines collapse to one space
    ("Version 2.5 is out.", ["Version 2.5 is out."]),  # no space after the dot: no split
    ("Wait... what?! Really.", ["Wait...", "what?!", "Really."]),
    ('He said "stop." Then he left.', ['He said "stop." Then he left.']),  # the space follows a quote
    ("Dr. Smith agrees.", ["Dr.", "Smith agrees."]),  # abbreviations split: the rule is simple on purpose
    ("  Trailing space.  ", ["Trailing space."]),
])
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_count_words():
    assert count_words("  one two\nthree\tfour ") == 4
    assert count_words("") == 0


def test_run_sync_works_inside_a_running_event_loop():
    async def seven():
        return 7

    async def caller():  # sync code called from a coroutine, as in a notebook
        return run_sync(seven)

    assert run_sync(seven) == 7
    assert asyncio.run(caller()) == 7


# -- user rewards -----------------------------------------------------------------------------------

@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_ok.py").write_text(textwrap.dedent("""
        NOT_CALLABLE = 3

        def length_reward(prompts, completions, scale=1.0, **kwargs):
            return [scale * len(c if isinstance(c, str) else c[-1]["content"]) for c in completions]

        def strict_reward(prompts, completions, target):
            return [float(len(c) == target) for c in completions]

        async def async_reward(prompts, completions, **kwargs):
            return [1.0 for _ in completions]

        def wrong_length(prompts, completions, **kwargs):
            return [1.0]

        class Holder:
            @staticmethod
            def reward(prompts, completions, **kwargs):
                return [0.5] * len(completions)
    """))
    (tmp_path / "my_rewards_broken.py").write_text("import does_not_exist_anywhere_xyz\n")
    (tmp_path / "my_rewards_raises.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_user_reward_loads_and_follows_trl_signature(user_module):
    fn = load_user_reward("my_rewards_ok:length_reward")
    assert fn(None, ["ab"]) == [2.0]
    reward = build_reward("my_rewards_ok:length_reward", {"scale": 0.5})
    assert reward.__name__ == "my_rewards_ok:length_reward"
    assert reward(["p", "p"], ["abcd", [{"role": "assistant", "content": "ab"}]], trainer_state=None) == [2.0, 1.0]
    assert reward.score_details("p", "abcdef") == {"reward": 3.0}
    assert build_reward("my_rewards_ok:Holder.reward")(["p"], ["x"]) == [0.5]
    assert build_reward("my_rewards_ok:async_reward")(["p", "q"], ["x", "y"]) == [1.0, 1.0]
    ref = RewardRef.model_validate({"name": "my_rewards_ok:strict_reward", "target": 2})
    assert ref.build()(["p"], ["ab"]) == [1.0]


@pytest.mark.parametrize("spec, message", [
    ("no_colon_here", "must be written 'module:function'"),
    ("my_rewards_ok:", "must be written 'module:function'"),
    ("my_rewards_missing_xyz:fn", "cannot import module 'my_rewards_missing_xyz'"),
    ("my_rewards_broken:fn", "does_not_exist_anywhere_xyz"),
    ("my_rewards_raises:fn", "RuntimeError: boom at import"),
    ("my_rewards_ok:length_rewad", "has no attribute 'length_rewad'. Did you mean 'length_reward'"),
    ("my_rewards_ok:NOT_CALLABLE", "is a int, not a callable"),
])
def test_user_reward_errors_are_clear(user_module, spec, message):
    with pytest.raises(SpilloverError, match=message) as info:
        load_user_reward(spec)
    assert info.value.fix


def test_user_reward_param_and_return_errors(user_module):
    with pytest.raises(SpilloverError, match=r"params \['targt'\] are not arguments"):
        build_reward("my_rewards_ok:strict_reward", {"targt": 2})
    with pytest.raises(ValueError, match="are not arguments"):
        RewardRef.model_validate({"name": "my_rewards_ok:strict_reward", "targt": 2})
    with pytest.raises(SpilloverError, match="length 1 for 2 completions"):
        build_reward("my_rewards_ok:wrong_length")(["p", "q"], ["a", "b"])


def test_user_reward_class_is_a_reward():
    assert issubclass(type(build_reward("prose-structure")), Reward)
