"""Every shipped experiment file validates against its schema (found recursively)."""

from pathlib import Path

import pytest

from spillover.config import load_config
from spillover.experiment.compare import CompareConfig

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").rglob("*.yaml"))


def test_examples_exist():
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path):
    cfg = load_config(CompareConfig, path)
    assert cfg.grpo["rewards"]


def test_compare_config_rejects_typos_in_arm_settings(tmp_path):
    from spillover.errors import SpilloverError

    p = tmp_path / "c.yaml"
    p.write_text("data: bundled:dogmatic_rhetoric\nsft: {lr: 1.0e-4, epocs: 1}\ngrpo: {rewards: [{name: rhetoric-lexicon}]}\n")
    with pytest.raises(SpilloverError, match="epocs"):
        load_config(CompareConfig, p)
    p.write_text("data: x\ngrpo: {rewards: [{name: rhetoric-lexicon}], prompts: y}\n")
    with pytest.raises(SpilloverError, match="set by the comparison itself"):
        load_config(CompareConfig, p)
