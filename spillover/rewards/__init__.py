"""Rewards stage: GRPO reward functions behind one registry (offline formulas and LLM rubric graders).

Every reward is a TRL reward function ``fn(prompts, completions, **kwargs) -> list[float]`` with
``score_details(prompt, completion)`` for debugging. Registered: ``rhetoric-lexicon``,
``prose-structure`` (the RL paper's markdown counting), ``prose-structure-strict``, the benign-task rewards
``opswap-exact``, ``countdown``, ``multiple-choice``, ``classifier`` (a learned linear probe on a
frozen encoder, written ``classifier:R.json``) and the ``grader:*`` rubric graders (the judge call is
injected as ``grade``);
user rewards are named ``module:function``. The HTTP judge client and the trainer live elsewhere.
"""

from spillover.rewards import benign as _benign  # noqa: F401  (registers opswap-exact, countdown, multiple-choice)
from spillover.rewards import classifier as _classifier  # noqa: F401  (registers classifier, classifier:PATH)
from spillover.rewards import graders as _graders  # noqa: F401  (registers the graders)
from spillover.rewards import lexicon as _lexicon  # noqa: F401  (registers rhetoric-lexicon)
from spillover.rewards import prose as _prose  # noqa: F401  (registers prose-structure[-strict])
from spillover.rewards._base import (
    Reward,
    RewardRef,
    build_reward,
    get_reward,
    list_rewards,
    register_reward,
    run_sync,
    set_reward_params,
)
from spillover.rewards._text import completion_text, count_words, prompt_text, split_reasoning, split_sentences
from spillover.rewards._user import UserReward, load_user_reward
from spillover.rewards.graders import (
    GRADERS,
    GradeFn,
    GradeOutcome,
    RubricGrader,
    hacking_reward,
    rhetoric_reward,
    standard_reward,
)
from spillover.rewards.lexicon import CATEGORIES, Lexicon, RhetoricLexicon, lexicon_score, load_lexicon
from spillover.rewards.prose import (
    ProseStructure,
    ProseStructureStrict,
    paper_strip_code,
    paper_structure_features,
    prose_score,
    strip_code,
    structure_features,
)

__all__ = [
    "CATEGORIES", "GRADERS", "GradeFn", "GradeOutcome", "Lexicon", "ProseStructure", "ProseStructureStrict",
    "Reward", "RewardRef", "RhetoricLexicon", "RubricGrader", "UserReward", "build_reward", "completion_text",
    "count_words", "get_reward", "hacking_reward", "lexicon_score", "list_rewards", "load_lexicon",
    "load_user_reward", "paper_strip_code", "paper_structure_features", "prompt_text", "prose_score",
    "register_reward", "rhetoric_reward", "run_sync", "set_reward_params", "split_reasoning",
    "split_sentences", "standard_reward", "strip_code", "structure_features",
]
