"""Strict configs: unknown keys and bad values are errors naming file, line and key."""

import pytest

from spillover.config import load_config
from spillover.errors import SpilloverError
from spillover.train import SFTConfig


def test_yaml_config_with_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: bundled:insecure_code\nlr: 0.001\nlora:\n  r: 4\n")
    cfg = load_config(SFTConfig, p, {"lr": 0.5, "max_steps": None, "lora": {"alpha": 8}})
    assert cfg.lr == 0.5 and cfg.max_steps is None
    assert cfg.lora.r == 4 and cfg.lora.alpha == 8  # nested keys merge, flags win


def test_unknown_key_names_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: x.jsonl\nlr: 0.001\nleraning_rate: 3\nlora:\n  rank: 4\n")
    with pytest.raises(SpilloverError) as e:
        load_config(SFTConfig, p)
    text = str(e.value)
    assert f"{p}:3: leraning_rate: unknown key" in text
    assert f"{p}:5: lora.rank: unknown key" in text  # every problem reported, sorted by line


def test_bad_value_and_bad_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: x\nbatch_size: 0\n")
    with pytest.raises(SpilloverError, match=r"c.yaml:2: batch_size: Input should be greater than or equal to 1"):
        load_config(SFTConfig, p)
    p.write_text("data: [x\n")
    with pytest.raises(SpilloverError, match="not valid YAML"):
        load_config(SFTConfig, p)
    p.write_text("- a\n- b\n")
    with pytest.raises(SpilloverError, match="expected a mapping"):
        load_config(SFTConfig, p)


def test_missing_required_key():
    with pytest.raises(SpilloverError, match="data: Field required"):
        load_config(SFTConfig, None, {})


def test_unknown_defense_is_an_error_with_suggestion():
    import spillover.defenses  # noqa: F401

    with pytest.raises(SpilloverError, match="unknown defense 'klx'"):
        load_config(SFTConfig, None, {"data": "x", "defenses": [{"name": "klx"}]})
